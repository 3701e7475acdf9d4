"""The table and plot of `lth compare-at-init`: test accuracy at early stopping vs density, per
method, with the mean and the min/max over trials (Frankle et al. ICLR 2021, Figures 2-3 style).

Each run's numbers are the report's (`early_stopping.early_stopping` on its metrics.csv: the test
accuracy at the iteration of minimum validation loss; `table.mask_density` for its density).
Only complete runs are counted; `trials` says how many.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lottery_ticket import layout
from lottery_ticket.analysis.early_stopping import early_stopping, read_metrics
from lottery_ticket.analysis.table import mask_density

# line styles of the sanity checks (one color per strategy; IMP solid black)
CHECK_STYLES = {"": "--", "shuffle": ":", "reinit": "-.", "invert": (0, (1, 3))}

COLUMNS = ["method", "target_density", "level", "trials", "density", "test_accuracy_mean", "test_accuracy_min",
           "test_accuracy_max", "early_stop_iteration_mean"]


def split_method(method: str) -> tuple[str, str]:
    """(strategy, sanity check or "") of a method name such as `snip_invert`."""
    for check in CHECK_STYLES:
        if check and method.endswith(f"_{check}"):
            return method[: -len(check) - 1], check
    return method, ""


def run_numbers(run: Path) -> dict | None:
    """Density and early-stopping numbers of a complete run; None if it is not complete."""
    from lottery_ticket.layout.files import verify_run

    if not layout.is_complete(run):
        return None
    verify_run(run, [layout.METRICS, layout.MASKS])
    stop = early_stopping(read_metrics(run / layout.METRICS))
    return {"density": mask_density(run / layout.MASKS)["pm"] / 100,
            "test_accuracy": stop["early_stop_test_accuracy"], "early_stop_iteration": stop["early_stop_iteration"]}


def comparison(runs: list[tuple[str, float, int | None, Path]]) -> pd.DataFrame:
    """The aggregated table of (method, target density, IMP level or None, run directory) rows."""
    rows = []
    for method, target, level, run in runs:
        numbers = run_numbers(run)
        if numbers is not None:
            rows.append({"method": method, "target_density": target, "level": level, **numbers})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.DataFrame(rows)
    df["level"] = df["level"].astype("Int64")
    out = df.groupby(["method", "target_density"], sort=False, dropna=False).agg(
        level=("level", "first"), trials=("test_accuracy", "size"), density=("density", "mean"),
        test_accuracy_mean=("test_accuracy", "mean"), test_accuracy_min=("test_accuracy", "min"),
        test_accuracy_max=("test_accuracy", "max"), early_stop_iteration_mean=("early_stop_iteration", "mean"),
    ).reset_index()
    return out[COLUMNS]


def markdown(table: pd.DataFrame, collapsed: list[str] = ()) -> str:
    """Methods as rows, target densities as columns: test accuracy mean [min, max] in percent;
    then the runs not trained because their masks collapsed a layer."""
    notes = "".join(f"\n- not trained, layer collapse: {message}" for message in collapsed)
    if table.empty:
        return "(no complete runs yet)\n" + notes
    targets = list(dict.fromkeys(table["target_density"]))
    header = "| method | " + " | ".join(f"{100 * d:g}%" for d in targets) + " |"
    lines = [header, "|" + "---|" * (len(targets) + 1)]
    for method in dict.fromkeys(table["method"]):
        cells = []
        for d in targets:
            row = table[(table["method"] == method) & (table["target_density"] == d)]
            if row.empty:
                cells.append("")
                continue
            r = row.iloc[0]
            cell = (f"{100 * r.test_accuracy_mean:.2f} [{100 * r.test_accuracy_min:.2f}, "
                    f"{100 * r.test_accuracy_max:.2f}] (n={r.trials})")
            if not pd.isna(r.level):
                cell += f" level {r.level}, {100 * r.density:.2f}%"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return ("Test accuracy (%) at early stopping: mean [min, max] over trials (n). IMP: the lottery level "
            "nearest each density, at its own density.\n\n" + "\n".join(lines) + "\n" + notes)


def plot(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Test accuracy at early stopping vs density (log scale, sparser to the right), min/max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 4.8))
    methods = list(dict.fromkeys(table["method"]))
    strategies = list(dict.fromkeys(split_method(m)[0] for m in methods if m != "imp"))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for method in methods:
        rows = table[table["method"] == method].sort_values("density", ascending=False)
        x = 100 * rows["density"].to_numpy(float)
        y = 100 * rows["test_accuracy_mean"].to_numpy(float)
        low = y - 100 * rows["test_accuracy_min"].to_numpy(float)
        high = 100 * rows["test_accuracy_max"].to_numpy(float) - y
        strategy, check = split_method(method)
        style = ({"color": "black", "linestyle": "-"} if method == "imp" else
                 {"color": palette[strategies.index(strategy) % len(palette)], "linestyle": CHECK_STYLES.get(check, "--")})
        ax.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, label=method, **style)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy at early stopping (%)")
    if len(table):
        targets = sorted(set(100 * table["target_density"]), reverse=True)
        ax.set_xticks(targets, [f"{d:.3g}" for d in targets])
        ax.minorticks_off()
    ax.set_title(title or "pruning at initialization vs IMP (bars: min/max over trials)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_comparison(out: str | Path, runs: list[tuple[str, float, int | None, Path]], title: str = "",
                     collapsed: list[str] = ()) -> pd.DataFrame:
    """compare.csv, compare.md and compare.png in `out`; the table."""
    from lottery_ticket.store import write_text_atomic

    table = comparison(runs)
    out = Path(out)
    write_text_atomic(out / layout.COMPARE_CSV, table.to_csv(index=False))
    write_text_atomic(out / layout.COMPARE_MD, markdown(table, collapsed))
    plot(table, out / layout.COMPARE_PLOT, title)
    return table
