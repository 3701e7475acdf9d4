"""A run's metrics.csv: `iteration,split,loss,accuracy`, one row per split per evaluation,
floats written exactly (repr). Standard library only, so the analysis can read metrics without
importing torch.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lottery_ticket.errors import LotteryError

METRIC_COLUMNS = ("iteration", "split", "loss", "accuracy")


def metrics_csv(rows: list[tuple[int, str, float, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for iteration, split, loss, accuracy in rows:
        writer.writerow([iteration, split, repr(float(loss)), repr(float(accuracy))])
    return buffer.getvalue()


def read_metrics(path: str | Path) -> list[tuple[int, str, float, float]]:
    """The rows of a metrics file (a run's `metrics.csv`), exactly; anything unexpected is a
    LotteryError naming the file."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            if tuple(header) != METRIC_COLUMNS:
                raise LotteryError(f"corrupted metrics file {path}: unexpected header {header}")
            return [(int(r[0]), r[1], float(r[2]), float(r[3])) for r in reader]
    except (OSError, StopIteration, ValueError, IndexError) as e:
        raise LotteryError(f"corrupted metrics file {path}: {e}") from None


def read_metrics_lines(path: str | Path) -> str:
    """The complete lines of a metrics file that may be being written (a running experiment):
    a last line without its newline (a row being written) is dropped; a missing or unreadable
    file gives "". `analysis.read_metrics` parses this leniently into a table."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return text
