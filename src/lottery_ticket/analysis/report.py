"""A readable report of an experiment directory: HTML (self-contained) and Markdown.

:func:`write_report` writes, into ``out_dir`` (default: the experiment directory itself)::

    report.html     self-contained: CSS inline, figures embedded as base64 PNG data URIs
    report.md       the same content; figures linked as relative files in plots/
    results.csv     the per-run table of load_results (all runs, with a `complete` column)
    aggregate.csv   mean/std/min/max/count over trials per (level, control)
    plots/*.png, plots/*.svg

Every file is written atomically (``store.write_bytes_atomic``: a crash leaves the old file or
the new one, never a truncated one) with the mode every other file gets (0644 under umask 022).

It works on a running experiment: tables and figures use complete runs only (unless
``include_incomplete=True``) and a note says how many runs are complete, incomplete or
without metrics yet.  Every string put into the HTML is escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
from pathlib import Path

import pandas as pd

from lottery_ticket import layout
from lottery_ticket.analysis.analytics import report_sections, with_range
from lottery_ticket.analysis.plots import Plot, make_plots
from lottery_ticket.analysis.table import (
    aggregate,
    control_label,
    format_pm,
    load_metrics,
    load_results,
    summary_rows,
    trials_text,
    write_csv,
)
from lottery_ticket.errors import LotteryError
from lottery_ticket.store import write_text_atomic

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1d1d1f; background: #fff; margin: 0; line-height: 1.5; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.8em; margin-bottom: 0.1em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.3em; }
.subtitle { color: #555; margin-top: 0; }
.note { background: #fff8e1; border-left: 4px solid #f5b400; padding: 8px 14px; margin: 16px 0; }
.muted { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e3e3; text-align: right;
         white-space: nowrap; }
th { background: #f4f6f8; border-bottom: 2px solid #c9ced4; }
th.l, td.l { text-align: left; }
tr.group td { border-top: 2px solid #c9ced4; }
tbody tr:nth-child(even) { background: #fafbfc; }
table.kv td, table.kv th { white-space: normal; }
table.kv td:first-child { font-family: ui-monospace, Menlo, Consolas, monospace; color: #333; }
.scroll { overflow-x: auto; }
.columns { display: flex; flex-wrap: wrap; gap: 0 32px; align-items: flex-start; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; font-size: 0.85em; }
figure { margin: 16px 0 32px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #333; font-size: 0.92em; max-width: 900px; }
"""


# ----------------------------------------------------------------------------- inputs


def _read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def experiment_info(experiment_dir: str | Path, results: pd.DataFrame | None = None) -> dict:
    """``{"kind", "hparams", "versions", "source"}`` of an experiment.

    From ``experiment.json``; if it is missing or unreadable, from the first run's
    ``run.json`` (its ``hparams`` and ``versions``); otherwise empty.  ``source`` names the
    file used (relative to the experiment directory) or is ``""``.
    """
    root = Path(experiment_dir)
    data = _read_json(root / layout.EXPERIMENT_FILE)
    if data is not None:
        return {"kind": str(data.get("kind", "")), "hparams": data.get("hparams") or {},
                "versions": data.get("versions") or {}, "source": layout.EXPERIMENT_FILE}
    if results is None:
        results = load_results(root)
    for path in results["path"] if len(results) else []:
        run = _read_json(Path(path) / layout.RUN_FILE)
        if run is not None:
            return {"kind": "", "hparams": run.get("hparams") or {},
                    "versions": run.get("versions") or {},
                    "source": str((Path(path) / layout.RUN_FILE).relative_to(root))}
    return {"kind": "", "hparams": {}, "versions": {}, "source": ""}


def analysis_versions() -> dict[str, str]:
    """Versions of the software that produced the report: those a run records
    (`layout.files.versions`) and the plotting libraries."""
    import matplotlib

    from lottery_ticket.layout.files import versions

    return {**versions(), "pandas": pd.__version__, "matplotlib": matplotlib.__version__}


def _value_text(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _hparam_sections(hparams: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(section, [(key, value text), ...]), ...]``; flat keys go to a "general" section."""
    general = [(str(k), _value_text(v)) for k, v in hparams.items() if not isinstance(v, dict)]
    sections = [("general", general)] if general else []
    for name, section in hparams.items():
        if isinstance(section, dict):
            sections.append((str(name), [(str(k), _value_text(v)) for k, v in section.items()]))
    return sections


# ----------------------------------------------------------------------------- content


def _early_stop_split_text(results: pd.DataFrame) -> str:
    """Where early stopping was measured: the validation loss, or the test loss for runs without
    a validation split (--validation-size 0, the original code's protocol), said plainly."""
    splits = set(results["early_stop_split"]) - {""} if len(results) else set()
    if splits == {"test"}:
        return ("minimum test loss: these runs have no validation split (--validation-size 0), "
                "so early stopping is measured on the test set, as the original code does")
    if "test" in splits:
        return ("minimum validation loss; runs without a validation split use the minimum test "
                "loss (see early_stop_split in results.csv)")
    return "minimum validation loss"


def _status(results: pd.DataFrame) -> dict:
    total = len(results)
    complete = int(results["complete"].sum()) if total else 0
    no_metrics = int((~results["has_metrics"]).sum()) if total else 0
    incomplete_runs = results.loc[~results["complete"], "path"].tolist() if total else []
    return {"total": total, "complete": complete, "incomplete": total - complete,
            "no_metrics": no_metrics, "incomplete_runs": incomplete_runs}


def _status_note(status: dict, include_incomplete: bool, experiment_dir: Path) -> str:
    """Plain-text note about a partial experiment, or "" when every run is complete."""
    if status["total"] == 0:
        return "No runs found yet: the experiment has not started training."
    if status["incomplete"] == 0:
        return ""
    text = (f"Partial experiment: {status['complete']} of {status['total']} runs complete, "
            f"{status['incomplete']} incomplete")
    if status["no_metrics"]:
        text += f" ({status['no_metrics']} without metrics yet)"
    text += (". Incomplete runs are included in the tables and figures."
             if include_incomplete else
             ". Tables and figures use complete runs only.")
    names = [str(Path(p).relative_to(experiment_dir)) for p in status["incomplete_runs"][:6]]
    if names:
        more = status["incomplete"] - len(names)
        text += " Incomplete: " + ", ".join(names) + (f", and {more} more." if more else ".")
    return text


def aggregate_rows(agg: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the aggregated table: mean [min, max] over the runs of each point."""
    header = ["level", "run kind", "Pm %", "trials", "runs", "ES iteration", "val loss @ES",
              "test acc @ES %", "final test acc %", "best test acc %", "final train acc %"]
    columns = (("early_stop_iteration", 0, 1.0), ("early_stop_val_loss", 4, 1.0),
               ("early_stop_test_accuracy", 2, 100.0), ("final_test_accuracy", 2, 100.0),
               ("best_test_accuracy", 2, 100.0), ("final_train_accuracy", 2, 100.0))
    rows = []
    for r in agg.to_dict("records"):
        rows.append([str(r["level"]), control_label(r["control"]), format_pm(r["pm"]), str(r["trials"]),
                     str(r["runs"])]
                    + [with_range(r[f"{m}_mean"], r[f"{m}_min"], r[f"{m}_max"], digits, scale)
                       for m, digits, scale in columns])
    return header, rows


# ----------------------------------------------------------------------------- HTML


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _html_table(
    header: list[str],
    rows: list[list[str]],
    css_class: str = "",
    *,
    left: tuple[int, ...] = (0,),
    group_by: int | None = None,
) -> str:
    """A table; columns in ``left`` are left-aligned (text), the rest right-aligned
    (numbers); a change of value in column ``group_by`` starts a visually separated group."""
    cls = f' class="{_e(css_class)}"' if css_class else ""

    def cell(tag: str, i: int, value) -> str:
        align = ' class="l"' if i in left else ""
        return f"<{tag}{align}>{_e(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = []
    previous = None
    for n, row in enumerate(rows):
        key = row[group_by] if group_by is not None else None
        start = group_by is not None and n > 0 and key != previous
        previous = key
        tr = '<tr class="group">' if start else "<tr>"
        body.append(tr + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>")
    body = "".join(body)
    return f'<div class="scroll"><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


_CSS_PX_PER_PNG_PX = 100 / 150
"""Figures are saved at 150 dpi and shown at 100 CSS px per inch, so text is the same size in
narrow and wide figures (and sharp on high-density screens)."""


def _img_width(path: Path) -> str:
    """`` width="N"`` from the PNG header, or "" if it cannot be read."""
    head = path.read_bytes()[:24]
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return ""
    pixels = int.from_bytes(head[16:20], "big")
    return f' width="{round(pixels * _CSS_PX_PER_PNG_PX)}"'


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_figure(plot: Plot, rel) -> str:
    return (f'<figure><h3>{_e(plot.title)}</h3>'
            f'<img src="{_png_data_uri(plot.png)}" alt="{_e(plot.title)}"{_img_width(plot.png)}>'
            f"<figcaption>{_e(plot.caption)} "
            f'<span class="muted">(files: {_e(rel(plot.png))}, {_e(rel(plot.svg))})</span></figcaption></figure>')


def _render_html(ctx: dict) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(ctx['title'])}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(ctx['title'])}</h1>",
        f'<p class="subtitle">{_e(ctx["subtitle"])}</p>',
    ]
    if ctx["note"]:
        parts.append(f'<div class="note">{_e(ctx["note"])}</div>')
    parts.append("<h2>Summary</h2>")
    parts.append(f'<p class="muted">{_e(ctx["summary_note"])}</p>')
    if ctx["summary_rows"]:
        parts.append(_html_table(ctx["summary_header"], ctx["summary_rows"]))
    else:
        parts.append("<p>No results yet.</p>")

    parts.append("<h2>Figures</h2>")
    if not ctx["plots"]:
        parts.append("<p>No figures yet: no run has finished with metrics.</p>")
    for plot in ctx["plots"]:
        parts.append(_html_figure(plot, ctx["rel"]))

    parts.append("<h2>Aggregated results</h2>")
    parts.append(f'<p class="muted">{_e(ctx["aggregate_note"])}</p>')
    if ctx["aggregate_rows"]:
        parts.append(_html_table(ctx["aggregate_header"], ctx["aggregate_rows"], left=(0, 1),
                                 group_by=0))
    else:
        parts.append("<p>No results yet.</p>")

    for section in ctx["sections"]:
        parts.append(f"<h2>{_e(section.title)}</h2>")
        parts.append(f'<p class="muted">{_e(section.note)}</p>')
        if section.rows:
            parts.append(_html_table(section.header, section.rows, left=(0, 1) if "run kind" in section.header
                                     else (0,), group_by=0))
        for plot in section.plots:
            parts.append(_html_figure(plot, ctx["rel"]))

    parts.append("<h2>Hyperparameters</h2>")
    if ctx["hparam_source"]:
        parts.append(f'<p class="muted">From {_e(ctx["hparam_source"])}.</p>')
    if not ctx["hparams"]:
        parts.append("<p>No hyperparameters recorded.</p>")
    parts.append('<div class="columns">')
    for section, items in ctx["hparams"]:
        parts.append(f"<div><h3>{_e(section)}</h3>")
        parts.append(_html_table(["name", "value"], [list(i) for i in items], "kv", left=(0, 1)))
        parts.append("</div>")
    parts.append("</div>")

    parts.append("<h2>Software</h2>")
    parts.append('<div class="columns">')
    if ctx["versions"]:
        parts.append("<div><h3>experiment</h3>")
        parts.append(_html_table(["package", "version"],
                                 [[k, _value_text(v)] for k, v in ctx["versions"].items()], "kv",
                                 left=(0, 1)))
        parts.append("</div>")
    parts.append("<div><h3>this report</h3>")
    parts.append(_html_table(["package", "version"],
                             [[k, v] for k, v in ctx["report_versions"].items()], "kv",
                             left=(0, 1)))
    parts.append("</div></div>")
    parts.append(f'<p class="muted">Files: {_e(ctx["files_note"])}</p>')
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- Markdown


def _md_cell(value) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_figure(plot: Plot, rel) -> list[str]:
    return [f"### {plot.title}", "", f"![{plot.title}]({rel(plot.png)})", "",
            f"{plot.caption} (vector version: [{rel(plot.svg)}]({rel(plot.svg)}))", ""]


def _render_markdown(ctx: dict) -> str:
    out = [f"# {ctx['title']}", "", ctx["subtitle"], ""]
    if ctx["note"]:
        out += [f"> **Note:** {ctx['note']}", ""]
    out += ["## Summary", "", ctx["summary_note"], ""]
    out += [_md_table(ctx["summary_header"], ctx["summary_rows"])
            if ctx["summary_rows"] else "No results yet.", ""]
    out += ["## Figures", ""]
    if not ctx["plots"]:
        out += ["No figures yet: no run has finished with metrics.", ""]
    for plot in ctx["plots"]:
        out += _md_figure(plot, ctx["rel"])
    out += ["## Aggregated results", "", ctx["aggregate_note"], ""]
    out += [_md_table(ctx["aggregate_header"], ctx["aggregate_rows"])
            if ctx["aggregate_rows"] else "No results yet.", ""]
    for section in ctx["sections"]:
        out += [f"## {section.title}", "", section.note, ""]
        if section.rows:
            out += [_md_table(section.header, section.rows), ""]
        for plot in section.plots:
            out += _md_figure(plot, ctx["rel"])
    out += ["## Hyperparameters", ""]
    if ctx["hparam_source"]:
        out += [f"From `{ctx['hparam_source']}`.", ""]
    if not ctx["hparams"]:
        out += ["No hyperparameters recorded.", ""]
    for section, items in ctx["hparams"]:
        out += [f"### {section}", "", _md_table(["name", "value"], [list(i) for i in items]), ""]
    out += ["## Software", ""]
    if ctx["versions"]:
        out += ["### experiment", "",
                _md_table(["package", "version"],
                          [[k, _value_text(v)] for k, v in ctx["versions"].items()]), ""]
    out += ["### this report", "",
            _md_table(["package", "version"], [[k, v] for k, v in ctx["report_versions"].items()]),
            "", f"Files: {ctx['files_note']}", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- entry point


def _verify_initial_weights(root: Path, used) -> None:
    """The analytics read each trial's level-0 initial weights (surviving initial weights): check
    them against their digests before anything is written, so a damaged one writes nothing."""
    from lottery_ticket.layout.files import verify_run

    for trial in sorted({int(t) for t in used["trial"]}) if len(used) else []:
        run = layout.run_dir(root, trial, 0)
        if (run / layout.INITIAL).is_file():
            verify_run(run, [layout.INITIAL])


def write_report(
    experiment_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    include_incomplete: bool = False,
    levels: list[int] | None = None,
    errorbars: str = "minmax",
) -> dict[str, Path]:
    """Write ``report.html``, ``report.md``, ``results.csv``, ``aggregate.csv`` and
    ``plots/`` into ``out_dir`` (default: ``experiment_dir``).

    ``include_incomplete`` also counts runs without ``COMPLETE`` in tables and figures;
    ``levels`` picks the levels of the training-curve figure; ``errorbars`` is ``"minmax"``
    (default: the range over trials, as the paper's figures) or ``"std"``.  Returns ``{"html", "markdown", "results_csv",
    "aggregate_csv", "plots_dir"}`` plus ``"<figure name>.png"`` / ``".svg"`` for each
    figure drawn.  Raises :class:`LotteryError` if ``experiment_dir`` is not a directory.
    """
    root = Path(experiment_dir)
    if not root.is_dir():
        raise LotteryError(f"experiment directory not found: {root}")
    out = Path(out_dir) if out_dir is not None else root
    plots_dir = out / layout.PLOTS

    results = load_results(root)
    used = results if include_incomplete else results[results["complete"]]
    used = used[used["has_metrics"]]
    agg = aggregate(used)
    _verify_initial_weights(root, used)
    metrics = load_metrics(root, controls=(layout.TICKET,), complete_only=not include_incomplete)
    plots: list[Plot] = make_plots(agg, metrics, plots_dir, levels=levels, errorbars=errorbars)

    from lottery_ticket.branches import report_sections as branch_sections

    portable = results.assign(path=[os.path.relpath(p, root) for p in results["path"]])
    results_csv = write_csv(portable, out / layout.RESULTS_CSV)
    aggregate_csv = write_csv(agg, out / layout.AGGREGATE_CSV)
    sections, analytics_files = report_sections(root, used, agg, out)
    sections += branch_sections(root, plots_dir)  # the branches' own (instability, retraining, ...)

    info = experiment_info(root, results)
    status = _status(results)
    levels_n = int(results["level"].nunique()) if len(results) else 0
    kind = info["kind"] or "lottery"
    summary_header, summary_body = summary_rows(agg)
    aggregate_header, aggregate_body = aggregate_rows(agg)
    bars = "one standard deviation" if errorbars == "std" else "the minimum and maximum"
    stop_on = _early_stop_split_text(used)

    def rel(path: Path) -> str:
        return os.path.relpath(path, out).replace(os.sep, "/")

    ctx = {
        "title": f"Lottery ticket experiment: {root.resolve().name}",
        "subtitle": (f"{kind} experiment in {root.resolve()}; {status['total']} runs over "
                     f"{levels_n} levels; generated "
                     f"{_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}."),
        "note": _status_note(status, include_incomplete, root),
        "summary_note": (f"Test accuracy (%) at the early-stopping iteration ({stop_on}) "
                         f"and that iteration, mean ± std over "
                         f"{trials_text(agg)}, for the winning ticket and each control; Pm is the percent of prunable weights remaining."),
        "summary_header": summary_header,
        "summary_rows": summary_body,
        "aggregate_note": (f"Mean [minimum, maximum] over the runs of each level and run kind "
                           f"('trials' counts the trials, 'runs' the runs each point averages: control runs of "
                           f"all trials pooled; the range is left out where all runs agree; 95% intervals "
                           f"below) (ES = early stopping, {stop_on}; best test accuracy is an oracle "
                           f"shown for comparison only). Error bars in the figures show "
                           f"{bars}. Per-run values are in {rel(results_csv)}; standard deviations and "
                           f"intervals in {rel(aggregate_csv)}."),
        "aggregate_header": aggregate_header,
        "aggregate_rows": aggregate_body,
        "plots": plots,
        "sections": sections,
        "hparams": _hparam_sections(info["hparams"]) if isinstance(info["hparams"], dict)
        else [],
        "hparam_source": info["source"],
        "versions": info["versions"] if isinstance(info["versions"], dict) else {},
        "report_versions": analysis_versions(),
        "files_note": (f"{rel(results_csv)} (one row per run), {rel(aggregate_csv)} "
                       f"(aggregated), {rel(plots_dir)}/ (PNG and SVG figures)."),
        "rel": rel,
    }

    html_path = out / layout.REPORT_HTML
    md_path = out / layout.REPORT_MD
    write_text_atomic(html_path, _render_html(ctx))
    write_text_atomic(md_path, _render_markdown(ctx))

    paths: dict[str, Path] = {
        "html": html_path,
        "markdown": md_path,
        "results_csv": results_csv,
        "aggregate_csv": aggregate_csv,
        "plots_dir": plots_dir,
    }
    paths.update(analytics_files)
    for plot in [*plots, *(p for section in sections for p in section.plots)]:
        paths[f"{plot.name}.png"] = plot.png
        paths[f"{plot.name}.svg"] = plot.svg
    return paths
