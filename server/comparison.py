"""Federated vs centralised vs single-site training on the demo hospitals' test splits.

Every arm trains the same model preset and scope with the same local trainer
(``client.train.train_one_round``) and the same optimizer steps per site: single-site
arms train ``rounds x local-steps`` steps on their own data, the centralised arm trains
``rounds x local-steps x sites`` steps on the pooled data, and the in-process federated
arm runs the server's aggregator over the sites' rounds without Flower (the Flower run
itself is the ``federated-flower`` arm). DP arms use each site's own budget on a
scratch ledger, so the sites' real ledgers are untouched. Every arm is evaluated on every
site's test split; per task the metric is averaged over sites weighted by ``n``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.cache import CachedCrop, CacheKey, ExamCache
from client.metrics import (
    IGNORE_LABEL,
    aggregate_site_metrics,
    flatten_for_reply,
    task_metrics,
)
from client.privacy_ledger import PrivacyLedger
from client.runtime import seeded_model
from client.scope import param_group, prepare_scope
from client.site_config import SiteConfig, load_site_config
from client.site_dataset import (
    SiteDataset,
    build_site_dataset,
    default_tokenizer,
    load_manifest,
)
from client.train import (
    TaskPredictions,
    TrainConfig,
    predict_split,
    train_one_round,
)
from m3fm_model import M3FM
from m3fm_model.config import preset_config

from .aggregation import TaskAwareAggregator
from .validation import ValidatedReply

logger = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 200
FEW_RARER = 5  # rarer-outcome test examples below which a site's metric is flagged
DRAWS = "_draws"  # in-memory bootstrap draws of an evaluated arm
RARER = "rarer_class"  # site -> task -> rarer-outcome test examples (``rarer_class``)


class PooledCache:
    """Crop lookup across several sites' caches (content-addressed keys do not clash)."""

    def __init__(self, caches: Sequence[ExamCache]) -> None:
        self.caches = list(caches)

    def get(self, key: CacheKey) -> CachedCrop | None:
        """The crop from whichever cache holds it."""
        for cache in self.caches:
            found = cache.get(key)
            if found is not None:
                return found
        return None


@dataclass(frozen=True)
class ArmPlan:
    """Shared settings of every arm."""

    preset: str
    scope: str
    rounds: int
    local_steps: int
    batch_size: int
    lr: float
    seed: int
    modality_dropout: float
    init_weights: str = "none"


def _fresh_model(plan: ArmPlan) -> M3FM:
    # LoRA scopes need their adapters before the first state snapshot
    return prepare_scope(
        seeded_model(plan.preset, plan.seed, plan.init_weights),
        plan.scope,
        seed=plan.seed,
    )


def _train_cfg(
    site: SiteConfig, plan: ArmPlan, steps: int, dp: bool, rounds_left: int
) -> TrainConfig:
    cfg = TrainConfig.for_site(
        site, scope=plan.scope, lr=plan.lr, local_steps=steps, batch_size=plan.batch_size,
        seed=plan.seed, modality_dropout=plan.modality_dropout, rounds_left=rounds_left,
    )  # fmt: skip
    return replace(cfg, dp=dp)


def _ledger(site: SiteConfig, scratch: Path) -> PrivacyLedger:
    path = scratch / f"{site.name}-{time.monotonic_ns()}.json"
    return PrivacyLedger(
        path, epsilon_budget=site.privacy.epsilon, delta=site.privacy.delta
    )


def _train_set(site: SiteConfig, plan: ArmPlan, dp: bool) -> SiteDataset:
    return build_site_dataset(
        site,
        plan.preset,
        "train",
        modality_dropout=plan.modality_dropout,
        seed=plan.seed,
        per_patient=dp,
    )


def train_alone(site: SiteConfig, plan: ArmPlan, dp: bool, scratch: Path) -> M3FM:
    """One site trains alone for rounds x local-steps steps (one release per round)."""
    model, data, ledger = (
        _fresh_model(plan),
        _train_set(site, plan, dp),
        _ledger(site, scratch),
    )
    for rnd in range(1, plan.rounds + 1):
        cfg = _train_cfg(site, plan, plan.local_steps, dp, plan.rounds - rnd + 1)
        train_one_round(model, data, cfg, ledger, run_id="alone", server_round=rnd)
    return model


def pooled_splits(
    sites: Sequence[SiteConfig], preset: str, splits: set[str], **options: Any
) -> SiteDataset:
    """The sites' exams of ``splits`` as one dataset over every task they label.

    ``options`` go to ``SiteDataset`` (augmentation, modality dropout, seed, ...).
    """
    exams = [e for s in sites for e in load_manifest(s, preset) if e["split"] in splits]
    tasks = sorted({t for s in sites for t in s.tasks})
    cache = PooledCache([ExamCache(s.cache_dir / "crops") for s in sites])
    return SiteDataset(
        exams, cache=cache, model_config=preset_config(preset), tasks=tasks,  # type: ignore[arg-type]
        tokenizer=default_tokenizer(), **options,
    )  # fmt: skip


def pooled_dataset(sites: Sequence[SiteConfig], plan: ArmPlan, dp: bool) -> SiteDataset:
    """All sites' training exams in one dataset (the centralised arm)."""
    return pooled_splits(
        sites, plan.preset, {"train"},
        modality_dropout=plan.modality_dropout, seed=plan.seed, per_patient=dp,
    )  # fmt: skip


def train_centralised(
    sites: Sequence[SiteConfig], plan: ArmPlan, dp: bool, scratch: Path
) -> M3FM:
    """Pooled data, the sites' total number of steps; DP with the smallest site budget."""
    model, data = _fresh_model(plan), pooled_dataset(sites, plan, dp)
    strict = min(sites, key=lambda s: s.privacy.epsilon)
    ledger = _ledger(strict, scratch)
    for rnd in range(1, plan.rounds + 1):
        cfg = _train_cfg(
            strict, plan, plan.local_steps * len(sites), dp, plan.rounds - rnd + 1
        )
        train_one_round(model, data, cfg, ledger, run_id="central", server_round=rnd)
    return model


def train_federated(
    sites: Sequence[SiteConfig], plan: ArmPlan, dp: bool, scratch: Path
) -> M3FM:
    """In-process federated rounds with the server's task-aware FedAvg (no Flower)."""
    model = _fresh_model(plan)
    sets = {s.name: _train_set(s, plan, dp) for s in sites}
    ledgers = {s.name: _ledger(s, scratch) for s in sites}
    aggregator = TaskAwareAggregator("fedavg", min_sites=1)
    for rnd in range(1, plan.rounds + 1):
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        replies = []
        for site in sites:
            model.load_state_dict(start)
            cfg = _train_cfg(site, plan, plan.local_steps, dp, plan.rounds - rnd + 1)
            res = train_one_round(
                model,
                sets[site.name],
                cfg,
                ledgers[site.name],
                run_id="fed",
                server_round=rnd,
            )
            if res.status == 0:
                groups: dict[str, dict[str, torch.Tensor]] = {}
                for name, value in res.arrays.items():
                    groups.setdefault(param_group(name), {})[name] = value
                replies.append(ValidatedReply(site.name, groups, res.counts))
        result = aggregator.aggregate(start, replies)
        start.update(result.state if result.applied else {})
        model.load_state_dict(start)
    return model


def evaluate_arm(
    model: M3FM,
    sites: Sequence[SiteConfig],
    plan: ArmPlan,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """Per-site and site-weighted test metrics of one model, with bootstrap CIs.

    ``aggregate`` averages each metric over the sites weighted by ``<task>.n``;
    ``ci`` holds a 95 % percentile interval of each task's headline metric from
    ``resamples`` stratified bootstrap draws (each site's test examples resampled
    with replacement, then the same weighted average); ``RARER`` holds, per site and
    task, the test examples of the rarer outcome (``rarer_class``), and the draws are
    kept under ``DRAWS`` for paired comparisons; ``run_comparison`` takes both out of
    the arm.
    """
    per_site, preds = {}, {}
    for site in sites:
        data = build_site_dataset(
            site, plan.preset, "test", augment=False, auxiliary=False
        )
        preds[site.name] = predict_split(model, data, "cpu")
        per_task = {
            t: task_metrics(t, p.outputs, p.targets)
            for t, p in preds[site.name].items()
        }
        per_site[site.name] = flatten_for_reply(per_task)
    support = {
        site: {t: n for t, p in site_preds.items() if (n := rarer_class(p)) is not None}
        for site, site_preds in preds.items()
    }
    draws = bootstrap_draws(preds, resamples=resamples, seed=plan.seed)
    intervals = {t: percentile_interval(v) for t, v in draws.items()}
    return {
        "aggregate": aggregate_site_metrics(per_site),
        "ci": {t: ci for t, ci in intervals.items() if ci is not None},
        "sites": per_site,
        RARER: support,
        DRAWS: draws,
    }


def rarer_class(pred: TaskPredictions) -> int | None:
    """Test examples of the task's rarer outcome (None for numeric answers).

    Binary: the smaller class (0 when one class is absent); multi-class: the smallest
    class among those present (absent classes get no one-vs-rest AUC); 6-year risk:
    the fewer of patients with and without a diagnosis in follow-up. An AUC or C-index
    over a handful of such examples ranks those few exams, not the model.
    """
    if "target" in pred.targets:
        labels = pred.targets["target"]
        width = pred.outputs.shape[1]
        counts = np.bincount(labels[labels != IGNORE_LABEL], minlength=width)
        if width == 2:  # a binary split with one class present has no AUC at all
            return int(counts.min())
        present = counts[counts > 0]
        return int(present.min()) if len(present) else 0
    if "observed" in pred.targets:
        events = (pred.targets["targets"] * pred.targets["observed"]).max(axis=1) > 0
        return int(min(events.sum(), (~events).sum()))
    return None


def _take(pred: TaskPredictions, rows: np.ndarray) -> TaskPredictions:
    return TaskPredictions(
        pred.outputs[rows], {k: v[rows] for k, v in pred.targets.items()}
    )


def bootstrap_draws(
    preds: Mapping[str, Mapping[str, TaskPredictions]],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Each task's site-weighted headline metric on stratified bootstrap resamples.

    Sites and tasks are visited in sorted order and every site's test examples are
    resampled with replacement; with the same seed and test splits, every model gets
    the same resampled rows, so two models' draws are paired.

    Args:
        preds: Site -> task -> test predictions (``predict_split``).
        resamples: Bootstrap draws.
        seed: Seed of the draws.

    Returns:
        Task -> (resamples,) values, NaN where a draw had no defined metric.
    """
    rng = np.random.default_rng(seed)
    tasks = sorted({t for by_task in preds.values() for t in by_task})
    draws = {t: np.full(resamples, np.nan) for t in tasks}
    for i in range(resamples):
        per_site = {}
        for site in sorted(preds):
            per_task = {}
            for task in sorted(preds[site]):
                pred = preds[site][task]
                rows = rng.integers(0, len(pred.outputs), len(pred.outputs))
                per_task[task] = task_metrics(task, *_take(pred, rows))
            per_site[site] = flatten_for_reply(per_task)
        agg = aggregate_site_metrics(per_site)
        for task in tasks:
            got = primary_metric(task, agg)
            if got is not None:
                draws[task][i] = got[1]
    return draws


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    """[low, high] percentile interval of the finite values (None when there are none)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return None
    tail = (1.0 - level) / 2 * 100
    return [
        float(np.percentile(finite, tail)),
        float(np.percentile(finite, 100 - tail)),
    ]


def bootstrap_ci(
    preds: Mapping[str, Mapping[str, TaskPredictions]],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap interval of each task's site-weighted headline metric.

    Args:
        preds: Site -> task -> test predictions (``predict_split``).
        resamples: Bootstrap draws (``bootstrap_draws``).
        seed: Seed of the draws.
        level: Coverage of the interval.

    Returns:
        Task -> [low, high]; a task whose draws give no finite value is left out.
    """
    draws = bootstrap_draws(preds, resamples=resamples, seed=seed)
    out = {t: percentile_interval(v, level) for t, v in draws.items()}
    return {t: ci for t, ci in out.items() if ci is not None}


def paired_differences(
    arms: Mapping[str, Mapping[str, Any]],
    draws: Mapping[str, Mapping[str, np.ndarray]],
    sites: Sequence[SiteConfig],
) -> dict[str, dict[str, Any]]:
    """Federated minus each site alone, per task the site labels, with paired CIs.

    For each DP setting (``federated`` vs ``site:<name>``, ``federated-dp`` vs
    ``site:<name>-dp``) and each task both arms have a headline metric for:
    ``diff`` (point estimates), ``ci`` (95 % interval of the paired bootstrap
    differences) and ``share_better`` (share of draws where federated is higher).

    Returns:
        ``"<federated arm> vs <site arm>"`` -> task -> the figures.
    """
    out: dict[str, dict[str, Any]] = {}
    for tag in ("", "-dp"):
        fed = f"federated{tag}"
        if fed not in arms:
            continue
        for site in sites:
            alone = f"site:{site.name}{tag}"
            if alone not in arms:
                continue
            rows = {}
            for task in site.tasks:
                a = primary_metric(task, arms[fed]["aggregate"])
                b = primary_metric(task, arms[alone]["aggregate"])
                if a is None or b is None:
                    continue
                delta = draws[fed][task] - draws[alone][task]
                finite = delta[np.isfinite(delta)]
                rows[task] = {
                    "diff": a[1] - b[1],
                    "ci": percentile_interval(delta),
                    "share_better": float((finite > 0).mean()) if finite.size else None,
                }
            out[f"{fed} vs {alone}"] = rows
    return out


def arm_names(sites: Sequence[SiteConfig]) -> list[str]:
    """The trained arms in table order: federated, centralised, each site; then DP."""
    names = []
    for tag in ("", "-dp"):
        names += [f"federated{tag}", f"centralised{tag}"]
        names += [f"site:{s.name}{tag}" for s in sites]
    return names


def train_arm(name: str, sites: Sequence[SiteConfig], plan: ArmPlan) -> M3FM:
    """Train one arm named as in ``arm_names`` (scratch ledgers in a temp folder)."""
    dp = name.endswith("-dp")
    base = name.removesuffix("-dp")
    with tempfile.TemporaryDirectory(prefix="m3fm-compare-") as tmp:
        scratch = Path(tmp)
        if base == "federated":
            return train_federated(sites, plan, dp, scratch)
        if base == "centralised":
            return train_centralised(sites, plan, dp, scratch)
        site = next(s for s in sites if f"site:{s.name}" == base)
        return train_alone(site, plan, dp, scratch)


def _arm_job(
    name: str, sites: Sequence[SiteConfig | Path], plan: ArmPlan
) -> tuple[str, dict[str, Any], float]:
    """Train and evaluate one arm (a worker process gets the site config paths)."""
    torch.set_num_threads(1)
    sites = [load_site_config(s) if isinstance(s, Path) else s for s in sites]
    start = time.monotonic()
    evaluated = evaluate_arm(train_arm(name, sites, plan), sites, plan)
    return name, evaluated, time.monotonic() - start


def run_comparison(
    sites: Sequence[SiteConfig],
    plan: ArmPlan,
    *,
    flower_model: Path | None = None,
    progress: Callable[[str], None] = print,
    workers: int = 1,
) -> dict[str, Any]:
    """Train and evaluate every arm; returns the comparison as a JSON-ready dict.

    The ``initial`` arm is the starting model every arm trains from, untrained: what
    the sites' training added shows against it.

    Args:
        sites: The prepared sites.
        plan: Settings shared by every arm.
        flower_model: The Flower run's final state dict (the ``federated-flower-dp``
            arm), evaluated when the file exists.
        progress: Called with one line per finished arm.
        workers: Arms trained at the same time, each in its own process with one
            torch thread (1 = in this process). The arms do not depend on each
            other, so the result does not depend on ``workers``.

    Returns:
        ``plan``, ``split``, ``bootstrap``, ``rarer_class`` (site -> task -> test
        examples of the rarer outcome, the same for every arm), ``arms`` (name ->
        aggregate, ci, sites, seconds), ``tasks`` (task -> sites that label it) and
        ``federated_vs_site`` (``paired_differences``).
    """
    arms: dict[str, dict[str, Any]] = {
        "initial": evaluate_arm(_fresh_model(plan), sites, plan)
    }
    if flower_model is not None and flower_model.exists():
        model = _fresh_model(plan)
        model.load_state_dict(
            torch.load(flower_model, map_location="cpu", weights_only=True)
        )
        arms["federated-flower-dp"] = evaluate_arm(model, sites, plan)
    names = arm_names(sites)
    done: dict[str, dict[str, Any]] = {}

    def finished(name: str, evaluated: dict[str, Any], seconds: float) -> None:
        done[name] = {**evaluated, "seconds": round(seconds, 1)}
        progress(f"  {name:<28} trained and evaluated in {seconds:5.1f} s")

    if workers <= 1:
        for name in names:
            finished(*_arm_job(name, sites, plan))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            paths = [Path(s.path) for s in sites]  # configs hold unpicklable views
            jobs = [pool.submit(_arm_job, name, paths, plan) for name in names]
            for job in as_completed(jobs):
                finished(*job.result())
    arms.update({name: done[name] for name in names})
    draws = {name: arm.pop(DRAWS) for name, arm in arms.items()}
    # every arm is scored on the same test exams: keep their label counts once
    support = [arm.pop(RARER) for arm in arms.values()][0]
    return {
        "plan": plan.__dict__,
        "split": "test",
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "level": 0.95},
        RARER: support,
        "arms": arms,
        "tasks": _shared_tasks(sites),
        "federated_vs_site": paired_differences(arms, draws, sites),
    }


def _shared_tasks(sites: Sequence[SiteConfig]) -> dict[str, list[str]]:
    return {
        t: sorted(s.name for s in sites if t in s.tasks)
        for t in sorted({t for s in sites for t in s.tasks})
    }


def primary_metric(task: str, metrics: Mapping[str, float]) -> tuple[str, float] | None:
    """The headline metric of a task in a flattened metric dict."""
    for name in ("cindex", "auc", "accuracy"):
        key = f"{task}.{name}"
        if key in metrics:
            return name, metrics[key]
    return None


def comparison_table(result: Mapping[str, Any]) -> str:
    """Text table: tasks x arms, headline metric on the test splits, 95 % CI below.

    ``n`` is the number of test examples of the task over all sites; ``rare`` the
    fewest examples of the rarer outcome at any site that labels it, marked ``*``
    below ``FEW_RARER`` (that site's metric rests on a handful of exams).
    """
    arms = list(result["arms"])
    width = max(13, *(len(a) for a in arms))
    lines = [
        f"{'task':<18} {'metric':<7} {'n':>4} {'rare':>5} "
        + " ".join(f"{a:>{width}}" for a in arms)
    ]
    rare = rarest(result)
    for task in result["tasks"]:
        cells, spans, metric, n = [], [], "-", 0.0
        for arm in arms:
            got = primary_metric(task, result["arms"][arm]["aggregate"])
            n = max(n, result["arms"][arm]["aggregate"].get(f"{task}.n", 0.0))
            ci = result["arms"][arm].get("ci", {}).get(task)
            if got:
                metric = got[0]
            cells.append(f"{got[1]:{width}.3f}" if got else f"{'-':>{width}}")
            span = f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "-"
            spans.append(f"{span:>{width}}")
        few = rare.get(task)
        shown = "-" if few is None else f"{few}{'*' if few < FEW_RARER else ''}"
        lines.append(f"{task:<18} {metric:<7} {n:4.0f} {shown:>5} " + " ".join(cells))
        lines.append(f"{'':<18} {'95% CI':<7} {'':>4} {'':>5} " + " ".join(spans))
    if any(v < FEW_RARER for v in rare.values()):
        lines.append(
            f"* fewer than {FEW_RARER} test examples of the rarer outcome at a site"
        )
    pairs = result.get("federated_vs_site") or {}
    if pairs:
        lines.append(
            "\nfederated minus site alone (paired bootstrap, same test examples):"
        )
    for pair, rows in pairs.items():
        for task, row in rows.items():
            ci = row["ci"]
            span = f"{ci[0]:+.2f}..{ci[1]:+.2f}" if ci else "-"
            better = row["share_better"]
            share = f"{better:.0%}" if better is not None else "-"
            lines.append(
                f"  {pair:<40} {task:<18} {row['diff']:+.3f}  95% CI {span:<13}"
                f" federated higher in {share} of draws"
            )
    return "\n".join(lines)


def rarest(result: Mapping[str, Any]) -> dict[str, int]:
    """Per task, the fewest rarer-outcome test examples at any site."""
    out: dict[str, int] = {}
    for site_counts in result.get(RARER, {}).values():
        for task, count in site_counts.items():
            out[task] = min(out.get(task, count), count)
    return out


def write_comparison(result: Mapping[str, Any], path: Path) -> Path:
    """Write comparison.json."""
    path.write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
    return path
