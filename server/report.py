"""Run reports: per-round metrics history, metrics.json, plots and a summary table.

The history keeps, per server round, each site's train-reply and evaluate-reply
metrics, the evaluate metrics aggregated over sites (weighted by ``<task>.n``), what
the aggregation did, and how long the round took. Non-finite floats (an infinite
epsilon, say) are written to JSON as the strings "NaN", "Infinity", "-Infinity" so
the file stays standard JSON and reads back to the same values.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from client.metrics import aggregate_site_metrics
from m3fm_model.tasks import TASKS, AnswerKind

__all__ = [
    "SCHEMA_VERSION",
    "PLOT_METRICS",
    "RoundRecord",
    "MetricsHistory",
    "write_plots",
    "summary_table",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PLOT_METRICS = ("auc", "cindex")
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass
class RoundRecord:
    """Everything recorded for one server round.

    Attributes:
        round: Server round number (1-based).
        train: Site name -> train-reply metrics (train-loss, epsilon, ...).
        evaluate: Site name -> evaluate-reply metrics (``<task>.<metric>``, ...).
        aggregate: Evaluate metrics averaged over sites, weighted by ``<task>.n``.
        aggregation: {"applied": bool, "reason": str, "sites-per-group": {group: n}}.
        seconds: Wall-clock seconds of the round (NaN until recorded).
    """

    round: int
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    aggregate: dict[str, float] = field(default_factory=dict)
    aggregation: dict[str, Any] = field(default_factory=dict)
    seconds: float = math.nan


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return (
            "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        )
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A metric dict with every value as a float (JSON strings decoded)."""
    return {
        str(k): _NONFINITE[v] if isinstance(v, str) else float(v)
        for k, v in metrics.items()
    }


def _check_metrics(where: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: metric {key!r} must be a number, got {value!r}")
        out[str(key)] = float(value)
    return out


class MetricsHistory:
    """Per-round metrics of a federated run, in round order."""

    def __init__(self, meta: Mapping[str, Any] | None = None) -> None:
        """Start an empty history.

        Args:
            meta: JSON-ready run facts (run name, preset, ...), stored as given.
        """
        self.meta: dict[str, Any] = dict(meta or {})
        self._rounds: dict[int, RoundRecord] = {}

    @property
    def rounds(self) -> list[RoundRecord]:
        """The recorded rounds, ascending."""
        return [self._rounds[r] for r in sorted(self._rounds)]

    def round(self, server_round: int) -> RoundRecord:
        """The record of a round, created empty on first use."""
        if isinstance(server_round, bool) or not isinstance(server_round, int):
            raise ValueError(f"round must be an int, got {server_round!r}")
        if server_round < 1:
            raise ValueError(f"round must be >= 1, got {server_round}")
        return self._rounds.setdefault(server_round, RoundRecord(server_round))

    def record_train(
        self, server_round: int, site: str, metrics: Mapping[str, float]
    ) -> None:
        """Store one site's train-reply metrics for a round (replacing earlier ones)."""
        where = f"round {server_round} train metrics of {site!r}"
        self.round(server_round).train[site] = _check_metrics(where, metrics)

    def record_evaluate(
        self, server_round: int, site: str, metrics: Mapping[str, float]
    ) -> None:
        """Store one site's evaluate metrics and refresh the round's aggregate."""
        record = self.round(server_round)
        where = f"round {server_round} evaluate metrics of {site!r}"
        record.evaluate[site] = _check_metrics(where, metrics)
        record.aggregate = aggregate_site_metrics(record.evaluate)

    def record_aggregation(
        self,
        server_round: int,
        applied: bool,
        reason: str = "",
        sites_per_group: Mapping[str, int] | None = None,
    ) -> None:
        """Store what the aggregation did in a round.

        Args:
            server_round: The round.
            applied: Whether the global model was updated.
            reason: Why not (or a note), empty when there is nothing to say.
            sites_per_group: Parameter group -> number of sites that contributed.
        """
        self.round(server_round).aggregation = {
            "applied": bool(applied),
            "reason": str(reason),
            "sites-per-group": {
                str(k): int(v) for k, v in (sites_per_group or {}).items()
            },
        }

    def record_seconds(self, server_round: int, seconds: float) -> None:
        """Store the wall-clock duration of a round."""
        self.round(server_round).seconds = float(seconds)

    def sites(self) -> list[str]:
        """Every site seen in any round, sorted."""
        names = {s for r in self._rounds.values() for s in (*r.train, *r.evaluate)}
        return sorted(names)

    def to_json(self) -> str:
        """The history as standard JSON text (see the module note on non-finite)."""
        data = {
            "schema-version": SCHEMA_VERSION,
            "meta": self.meta,
            "rounds": [asdict(r) for r in self.rounds],
        }
        return json.dumps(_encode(data), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> MetricsHistory:
        """Rebuild a history written by ``to_json``."""
        data = json.loads(text)
        version = data.get("schema-version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"metrics history schema-version {version!r} is not {SCHEMA_VERSION}"
            )
        history = cls(data.get("meta"))
        for raw in data["rounds"]:
            seconds = raw["seconds"]
            history._rounds[int(raw["round"])] = RoundRecord(
                round=int(raw["round"]),
                train={s: _floats(m) for s, m in raw["train"].items()},
                evaluate={s: _floats(m) for s, m in raw["evaluate"].items()},
                aggregate=_floats(raw["aggregate"]),
                aggregation=raw["aggregation"],
                seconds=_NONFINITE[seconds] if isinstance(seconds, str) else seconds,
            )
        return history

    def write(self, run_dir: str | os.PathLike[str]) -> Path:
        """Write ``run_dir/metrics.json`` atomically (temporary file, then replace).

        Returns:
            The path written.
        """
        directory = Path(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / "metrics.json"
        fd, tmp = tempfile.mkstemp(prefix=".metrics-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target


_Line = tuple[str, list[float], dict[str, Any]]
_AGGREGATE_STYLE = {"color": "black", "linewidth": 2.5, "linestyle": "--"}


def _site_lines(
    rounds: list[RoundRecord], sites: list[str], section: str, key: str
) -> list[_Line]:
    """One (site, values per round, style) line per site that has ``key`` somewhere."""
    lines = []
    for site in sites:
        values = [getattr(r, section).get(site, {}).get(key, math.nan) for r in rounds]
        values = [v if math.isfinite(v) else math.nan for v in values]
        if not all(math.isnan(v) for v in values):
            lines.append((site, values, {}))
    return lines


def _line_plot(
    path: Path,
    title: str,
    ylabel: str,
    xs: list[int],
    lines: Iterable[_Line],
) -> Path:
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, ys, style in lines:
        ax.plot(xs, ys, marker="o", label=label, **style)
    ax.set_title(title)
    ax.set_xlabel("server round")
    ax.set_ylabel(ylabel)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _metric_keys(rounds: list[RoundRecord]) -> list[str]:
    keys = {
        k
        for r in rounds
        for m in (r.aggregate, *r.evaluate.values())
        for k in m
        if k.partition(".")[2] in PLOT_METRICS
    }
    return sorted(keys, key=_task_order)


def write_plots(history: MetricsHistory, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write PNG plots of a run.

    One plot per ``<task>.<metric>`` for the metrics in ``PLOT_METRICS`` (a line per
    site plus the aggregate), ``epsilon.png`` and ``train_loss.png`` (a line per
    site); non-finite values (an infinite epsilon) are left out and a plot without
    any data is skipped.

    Args:
        history: The run's history.
        out_dir: Folder for the PNGs (created if missing).

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rounds = history.rounds
    xs = [r.round for r in rounds]
    sites = history.sites()
    written: list[Path] = []
    for key in _metric_keys(rounds):
        lines = _site_lines(rounds, sites, "evaluate", key)
        agg = [r.aggregate.get(key, math.nan) for r in rounds]
        lines.append(("aggregate (n-weighted)", agg, _AGGREGATE_STYLE))
        task, _, metric = key.partition(".")
        label = "C-index" if metric == "cindex" else metric.upper()
        title = f"{task}: {label} per round"
        written.append(_line_plot(out / f"{key}.png", title, label, xs, lines))
    for name, metric, ylabel in (
        ("epsilon.png", "epsilon", "epsilon (DP budget spent)"),
        ("train_loss.png", "train-loss", "training loss"),
    ):
        lines = _site_lines(rounds, sites, "train", metric)
        if lines:
            title = f"{ylabel[0].upper()}{ylabel[1:]} per site"
            written.append(_line_plot(out / name, title, ylabel, xs, lines))
    logger.info("wrote %d plots to %s", len(written), out)
    return written


def _task_order(key: str) -> tuple[int, str]:
    task = key.partition(".")[0]
    order = list(TASKS)
    return (order.index(task) if task in order else len(order), key)


def _primary_metric(task: str, available: set[str]) -> str | None:
    spec = TASKS.get(task)
    if spec is not None:
        kind = spec.answer_kind
        preferred = {AnswerKind.HAZARD6: "cindex", AnswerKind.NUMBER3: "accuracy"}
        choices = [preferred.get(kind, "auc"), "accuracy", "loss"]
    else:
        choices = ["cindex", "auc", "accuracy", "loss"]
    return next((m for m in choices if f"{task}.{m}" in available), None)


def _cell(metrics: Mapping[str, float], task: str, metric: str) -> str:
    value = metrics.get(f"{task}.{metric}")
    if value is None or not math.isfinite(value):
        return "-"
    n = metrics.get(f"{task}.n")
    return f"{value:.3f}" + (f" (n={int(n)})" if n is not None else "")


def _format_rows(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def summary_table(history: MetricsHistory) -> str:
    """A fixed-width text table of the last round with evaluate metrics.

    Rows are tasks (C-index for the 6-year risk, AUC for the classification
    tasks, accuracy for number answers); columns are the n-weighted aggregate and
    each site, as ``value (n=...)``. Below: each site's latest epsilon and the
    number of rounds completed.

    Returns:
        The table text (no trailing newline).
    """
    rounds = history.rounds
    sites = history.sites()
    evaluated = [r for r in rounds if r.evaluate]
    lines = [f"Rounds completed: {len(rounds)}"]
    if evaluated:
        last = evaluated[-1]
        available = set(last.aggregate).union(*last.evaluate.values())
        tasks = sorted(
            {k.partition(".")[0] for k in available if "." in k}, key=_task_order
        )
        rows = [["task", "metric", "aggregate", *sites]]
        for task in tasks:
            metric = _primary_metric(task, available)
            if metric is None:
                continue
            cells = [_cell(last.evaluate.get(s, {}), task, metric) for s in sites]
            rows.append([task, metric, _cell(last.aggregate, task, metric), *cells])
        lines += [f"Evaluation, round {last.round}:", *_format_rows(rows)]
    else:
        lines.append("No evaluation metrics recorded.")
    lines += ["", *_format_rows([["site", "epsilon"], *_epsilon_rows(rounds, sites)])]
    return "\n".join(lines)


def _epsilon_rows(rounds: list[RoundRecord], sites: list[str]) -> list[list[str]]:
    rows = []
    for site in sites:
        values = [
            r.train[site]["epsilon"]
            for r in rounds
            if "epsilon" in r.train.get(site, {})
        ]
        rows.append([site, f"{values[-1]:.3f}" if values else "-"])
    return rows
