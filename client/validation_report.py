"""The site validation report: what was found, what is usable, what was skipped and why."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from m3fm_model.tasks import TASKS, AnswerKind

from .labels_table import HazardTarget
from .site_config import SiteConfig
from .site_index import SPLITS, SiteIndex


def _label_counts(
    index: SiteIndex, tasks: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        spec = TASKS[task]
        per: dict[str, Any] = {}
        for split in SPLITS:
            values = [
                e.labels[task]
                for e in index.entries
                if e.split == split and task in e.labels
            ]
            if spec.answer_kind == AnswerKind.HAZARD6:
                hz = [v for v in values if isinstance(v, HazardTarget)]
                per[split] = {
                    "labelled": len(hz),
                    "events": sum(int(v.targets[5] == 1 and v.observed[5]) for v in hz),
                }
            else:
                counts = Counter(
                    spec.classes[int(v)] for v in values if isinstance(v, int)
                )
                per[split] = {"labelled": len(values), **dict(sorted(counts.items()))}
        out[task] = per
    return out


def _completeness(cfg: SiteConfig, index: SiteIndex) -> dict[str, float]:
    rows = [e.clinical for e in index.entries if e.clinical is not None]
    if not rows:
        return {f: 0.0 for f in cfg.clinical.columns}
    return {
        f: round(sum(f in r.record for r in rows) / len(rows), 3)
        for f in cfg.clinical.columns
    }


def build_report(cfg: SiteConfig, index: SiteIndex) -> dict[str, Any]:
    """The report as a JSON-ready dict (pseudonymous IDs and file paths only)."""
    usable = [e for e in index.entries if e.has_ct or e.clinical is not None]
    skipped = [i for i in index.dicom_issues if i["severity"] == "error"]
    return {
        "site": cfg.name,
        "site_config": str(cfg.path),
        "dicom": {
            "files": index.files_found,
            "studies": index.studies_found,
            "series": index.series_found,
            "exams_with_usable_ct": sum(e.has_ct for e in index.entries),
        },
        "exams": {
            "total": len(index.entries),
            "usable": len(usable),
            "ct_and_clinical": sum(
                e.has_ct and e.clinical is not None for e in index.entries
            ),
            "ct_only": sum(e.has_ct and e.clinical is None for e in index.entries),
            "clinical_only": sum(
                not e.has_ct and e.clinical is not None for e in index.entries
            ),
            "by_split": {s: sum(e.split == s for e in usable) for s in SPLITS},
        },
        "skipped": skipped,
        "warnings": [i for i in index.dicom_issues if i["severity"] != "error"],
        "table_issues": [vars(i) for i in index.table_issues],
        "labels": _label_counts(index, cfg.tasks),
        "clinical_completeness": _completeness(cfg, index),
    }


def write_report(report: dict[str, Any], path: Path) -> Path:
    """Write the report JSON (creating the folder) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return path


def _grouped_dicom_problems(
    issues: list[dict[str, Any]],
) -> list[tuple[str, str, str, str]]:
    """One line per issue, but files of one folder with the same problem share a line."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for i in issues:
        folder = str(Path(str(i["path"])).parent)
        groups.setdefault((i["code"], str(i.get("exam_id") or "-"), folder), []).append(
            i
        )
    rows = []
    for (code, exam, folder), items in groups.items():
        if len(items) == 1:
            rows.append(
                (code, exam, Path(str(items[0]["path"])).name, str(items[0]["message"]))
            )
        else:
            rows.append(
                (
                    code,
                    exam,
                    f"{len(items)} files in {Path(folder).name}/",
                    str(items[0]["message"]),
                )
            )
    return rows


def format_report(report: dict[str, Any]) -> str:
    """A terminal rendering of the report."""
    d, e = report["dicom"], report["exams"]
    lines = [
        f"site {report['site']}",
        f"  DICOM: {d['files']} files, {d['studies']} studies, {d['series']} series, {d['exams_with_usable_ct']} exams with a usable CT",
        f"  exams: {e['usable']} usable of {e['total']} (CT+clinical {e['ct_and_clinical']}, CT only {e['ct_only']}, clinical only {e['clinical_only']})",
        "  split: " + ", ".join(f"{k} {v}" for k, v in e["by_split"].items()),
        "",
        f"  {'skipped / problem':<24} {'exam or row':<22} {'where':<40} reason",
    ]
    problems = _grouped_dicom_problems(report["skipped"] + report["warnings"])
    problems += [
        (
            i["code"],
            i["row_id"] or "-",
            Path(i["path"]).name
            + (f" row {i['row']}" if i["row"] else "")
            + (f" [{i['field']}]" if i["field"] else ""),
            i["message"],
        )
        for i in report["table_issues"]
    ]
    for code, who, where, why in problems:
        lines.append(f"  {code:<24} {str(who):<22} {where[:40]:<40} {why[:110]}")
    lines += ["", f"  {'task':<22} " + " ".join(f"{s:>18}" for s in SPLITS)]
    for task, per in report["labels"].items():
        cells = [
            ", ".join(f"{k}={v}" for k, v in per[s].items() if k != "labelled") or "-"
            for s in SPLITS
        ]
        lines.append(
            f"  {task:<22} "
            + " ".join(
                f"{per[s]['labelled']:>4} ({c[:11]:>11})"
                for s, c in zip(SPLITS, cells, strict=True)
            )
        )
    comp = report["clinical_completeness"]
    if comp:
        lines += [
            "",
            "  clinical completeness: "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in comp.items()),
        ]
    return "\n".join(lines)
