"""``report.html`` of ``m3fm-site evaluate``: metric tables, ROC and calibration plots.

One self-contained file: the plots are PNGs embedded as base64 data URIs, so the report
opens in any browser without other files and can be archived as it is.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
img{max-width:480px;margin-right:12px;border:1px solid #eee}
.note{color:#666;font-size:13px}
"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _cell(est: Mapping[str, float | None]) -> str:
    v, lo, hi = est.get("value"), est.get("low"), est.get("high")
    if v is None:
        return "n/a"
    if lo is None or hi is None:
        return f"{v:.3f}"
    return f"{v:.3f} <small>[{lo:.3f}, {hi:.3f}]</small>"


def _roc_plot(task: str, res: Mapping[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="#bbb", lw=1, ls=":")
    classes = res.get("classes", [])
    drawn = 0
    for m_i, (name, entry) in enumerate(res["models"].items()):
        for key, curve in entry["curves"]["roc"].items():
            if curve is None:
                continue
            label = (
                classes[int(key)] if key.isdigit() and int(key) < len(classes) else key
            )
            ls = ("-", "--", "-.", ":")[m_i % 4]
            ax.plot(curve["fpr"], curve["tpr"], ls=ls, lw=1.4, label=f"{name}: {label}")
            drawn += 1
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{task}: ROC")
    if drawn:
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "one class only: no ROC", ha="center")
    return _png(fig)


def _calibration_plot(task: str, res: Mapping[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="#bbb", lw=1, ls=":")
    for name, entry in res["models"].items():
        rel = entry["curves"]["reliability"]
        ax.plot(
            rel["mean_predicted"],
            rel["fraction_positive"],
            marker="o",
            ms=4,
            label=name,
        )
    what = {"hazard6": "observed patient-years", "multiclass": "top-class confidence"}
    ax.set(
        xlabel="predicted probability",
        ylabel="observed fraction",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"{task}: calibration ({what.get(res['kind'], 'positive class')})",
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def _metric_table(res: Mapping[str, Any]) -> str:
    names = list(res["models"])
    rows = [
        "<tr><th>metric</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names)
    ]
    for metric in res["models"][names[0]]["overall"]:
        cells = "".join(
            f"<td>{_cell(res['models'][n]['overall'][metric])}</td>" for n in names
        )
        rows.append(f"<tr><td>{metric}</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _subgroup_table(res: Mapping[str, Any]) -> str:
    names = list(res["models"])
    first = res["models"][names[0]]["subgroups"]
    if not first:
        return ""
    head = "cindex" if res["kind"] == "hazard6" else "auc"
    rows = [
        "<tr><th>subgroup</th><th>n</th>"
        + "".join(f"<th>{head}: {html.escape(n)}</th>" for n in names)
        + "<th>balanced accuracy / brier (first model)</th></tr>"
    ]
    for field, levels in first.items():
        for level, got in levels.items():
            cells = "".join(
                f"<td>{_cell(res['models'][n]['subgroups'][field][level][head])}</td>"
                for n in names
            )
            extra = got.get("balanced-accuracy") or got.get("brier-y6") or {}
            rows.append(
                f"<tr><td>{html.escape(field)} = {html.escape(level)}</td>"
                f"<td>{got['n']}</td>{cells}<td>{_cell(extra)}</td></tr>"
            )
    return "<table>" + "".join(rows) + "</table>"


def render_report(payload: Mapping[str, Any]) -> str:
    """The report's HTML text."""
    opts = payload["options"]
    models = "".join(
        f"<li>{html.escape(m['name'])}: {html.escape(m['file'])}, preset {m['preset']}, "
        f"sha256 {m['sha256'][:16]}…</li>"
        for m in payload["models"]
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>M3FM evaluation: {html.escape(payload['site'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>M3FM evaluation at {html.escape(payload['site'])}</h1>",
        f"<p>Split <b>{payload['split']}</b>, {payload['exams']} exams. Intervals: "
        f"{100 * (1 - opts['alpha']):.0f}% percentile bootstrap over patients, "
        f"{opts['n_boot']} resamples, the same for every model. Sensitivity at "
        f"specificity {opts['specificity']}. Censored years are left out of the "
        "per-year 6-year-risk metrics.</p>",
        f"<ul>{models}</ul>",
    ]
    for task, res in payload["tasks"].items():
        counts = res.get("class_counts")
        detail = (
            ", ".join(f"{c}: {k}" for c, k in zip(res["classes"], counts, strict=False))
            if counts
            else f"{res.get('events', 0)} events"
        )
        parts += [
            f"<h2>{html.escape(task)}</h2>",
            f"<p class='note'>{res['kind']}, {res['n']} exams of {res['patients']} "
            f"patients ({html.escape(detail)})</p>",
            _metric_table(res),
            _roc_plot(task, res),
            _calibration_plot(task, res),
            _subgroup_table(res),
        ]
    if payload["unlabelled_tasks"]:
        parts.append(
            f"<p class='note'>No labelled rows in this split: "
            f"{', '.join(payload['unlabelled_tasks'])}</p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(payload: Mapping[str, Any], path: Path) -> Path:
    """Write the report; returns its path."""
    path.write_text(render_report(payload), encoding="utf-8")
    return path
