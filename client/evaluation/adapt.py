"""``m3fm-site adapt``: add a new task head and fit it on a small labelled set.

The new task gets a fresh head on the loaded model; the trunk stays frozen, so the
head trains on the fused task-token features of the labelled exams (weighted
cross-entropy, AdamW, full batch). With ``train_fusion`` the fusion layers
(``task_attention``) train together with the head on the frozen encoders' outputs
(``adapt_fusion``); both model arms then get that treatment. The task's metric (AUC;
macro one-vs-rest AUC for multi-class) is cross-validated by patient against (a) the
same head on a randomly initialised trunk and (b) a logistic regression on the clinical
variables. The final head, trained on every labelled exam, is saved with the model and
on its own for sharing with the consortium (no patient data in it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from m3fm_model import M3FM, build_model

from ..metrics import multiclass_auc, roc_auc
from .adapt_data import LabelledExams, clinical_matrix, encode_exams, task_features
from .adapt_fusion import class_weight, fit_fusion, predict_fusion
from .model_io import LoadedModel
from .task_spec import NewTask, registry_with


@dataclass(frozen=True)
class AdaptOptions:
    """Training and validation options.

    Attributes:
        steps: Full-batch optimizer steps of the head.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        folds: Cross-validation folds (grouped by patient, stratified).
        seed: Seed of the head's initialisation, the folds, the random trunk and the
            fusion fine-tuning's mini-batches.
        train_fusion: Train the fusion layers (``task_attention``) with the head.
        fusion_lr: AdamW learning rate of the fusion layers.
        fusion_steps: Mini-batch steps when the fusion layers train (replaces
            ``steps``).
        fusion_batch: Exams per mini-batch when the fusion layers train.
    """

    steps: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-2
    folds: int = 5
    seed: int = 0
    train_fusion: bool = False
    fusion_lr: float = 3e-4
    fusion_steps: int = 150
    fusion_batch: int = 16


Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def with_new_head(loaded: LoadedModel, task: NewTask, seed: int) -> M3FM:
    """The loaded model plus a freshly initialised head for the new task."""
    reg = registry_with([*_extra(loaded), task.spec])
    torch.manual_seed(seed)
    model = build_model(loaded.preset, (*loaded.tasks, task.spec.name), registry=reg)
    missing, unexpected = model.load_state_dict(loaded.model.state_dict(), strict=False)
    if unexpected or any(not k.startswith(f"heads.{task.spec.name}.") for k in missing):
        raise ValueError("the new head clashes with the loaded model's parameters")
    return model.eval()


def random_trunk(loaded: LoadedModel, task: NewTask, seed: int) -> M3FM:
    """The same architecture with a randomly initialised trunk (baseline a)."""
    torch.manual_seed(seed + 10_000)
    reg = registry_with([*_extra(loaded), task.spec])
    return build_model(loaded.preset, (task.spec.name,), registry=reg).eval()


def _extra(loaded: LoadedModel) -> list[Any]:
    return [
        s
        for n, s in loaded.registry.items()
        if n in loaded.tasks and n not in _builtin()
    ]


def _builtin() -> set[str]:
    from m3fm_model import TASKS

    return set(TASKS)


def _score(labels: np.ndarray, probs: np.ndarray) -> float:
    if probs.shape[1] == 2:
        return roc_auc(probs[:, 1], labels)
    return multiclass_auc(probs, labels)


def fit_head(
    head: torch.nn.Module, feats: torch.Tensor, labels: np.ndarray, opts: AdaptOptions
) -> torch.nn.Module:
    """Train a copy of ``head`` on fixed features; returns the trained copy."""
    head = copy.deepcopy(head).train()
    y = torch.as_tensor(labels, dtype=torch.long)
    weight = class_weight(y, head.num_outputs)
    opt = torch.optim.AdamW(
        head.parameters(), lr=opts.lr, weight_decay=opts.weight_decay
    )
    for _ in range(opts.steps):
        opt.zero_grad()
        F.cross_entropy(head(feats), y, weight=weight).backward()
        opt.step()
    return head.eval()


def _folds(
    data: LabelledExams, opts: AdaptOptions
) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    k = min(opts.folds, int(np.bincount(data.labels).min()), len(set(data.patients)))
    if k < 2:
        raise ValueError(
            "cross-validation needs at least 2 labelled patients per class; "
            f"class counts: {np.bincount(data.labels).tolist()}"
        )
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=opts.seed)
    return list(cv.split(np.zeros(len(data.labels)), data.labels, data.patients))


def _cv(
    predict: Predictor,
    data: LabelledExams,
    folds: list[tuple[np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """Out-of-fold probabilities -> pooled metric and per-fold metrics."""
    oof = np.zeros((len(data.labels), int(data.labels.max()) + 1))
    per_fold = []
    for train, test in folds:
        probs = predict(train, test)
        oof[test, : probs.shape[1]] = probs
        per_fold.append(_score(data.labels[test], probs))
    finite = [v for v in per_fold if math.isfinite(v)]
    return {
        "pooled": _score(data.labels, oof),
        "folds": per_fold,
        "mean": float(np.mean(finite)) if finite else math.nan,
        "sd": float(np.std(finite)) if finite else math.nan,
    }


def head_arm(
    model: M3FM, task: NewTask, data: LabelledExams, cache: Any, opts: AdaptOptions
) -> Predictor:
    """Prediction function of a frozen trunk + trained head (cross-validation arm)."""
    feats = task_features(model, task.spec, data.exams, cache)
    head = model.heads[task.spec.name]

    def predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        fitted = fit_head(head, feats[train], data.labels[train], opts)
        with torch.no_grad():
            return fitted(feats[test]).softmax(-1).numpy()

    return predict


def fusion_arm(
    model: M3FM, task: NewTask, data: LabelledExams, cache: Any, opts: AdaptOptions
) -> Predictor:
    """Prediction function of frozen encoders + fine-tuned fusion layers and head."""
    encoded = encode_exams(model, task.spec, data.exams, cache)

    def predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        fusion, head = fit_fusion(
            model,
            task.spec.name,
            [encoded[i] for i in train],
            data.labels[train],
            opts,
        )
        return predict_fusion(fusion, head, [encoded[i] for i in test])

    return predict


def model_arm(
    model: M3FM, task: NewTask, data: LabelledExams, cache: Any, opts: AdaptOptions
) -> Predictor:
    """``fusion_arm`` when ``opts.train_fusion``, else ``head_arm``."""
    arm = fusion_arm if opts.train_fusion else head_arm
    return arm(model, task, data, cache, opts)


def arm_names(opts: AdaptOptions) -> tuple[str, str]:
    """Names of the pretrained-trunk and random-trunk arms (they say what trained)."""
    if opts.train_fusion:
        return (
            "adapted (pretrained trunk, fusion + head)",
            "same fusion + head, random trunk",
        )
    return "adapted (pretrained trunk, frozen)", "same head, random trunk"


def clinical_arm(data: LabelledExams, opts: AdaptOptions) -> Predictor:
    """Prediction function of a logistic regression on the clinical variables."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = clinical_matrix(data.exams)
    x = x[:, ~np.all(np.isnan(x), axis=0)]

    def predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        lr = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000),
        )
        lr.fit(x[train], data.labels[train])
        probs = np.zeros((len(test), int(data.labels.max()) + 1))
        probs[:, lr.classes_] = lr.predict_proba(x[test])
        return probs

    return predict


def cross_validate(
    loaded: LoadedModel,
    task: NewTask,
    data: LabelledExams,
    cache: Any,
    opts: AdaptOptions,
) -> dict[str, Any]:
    """The task's metric, cross-validated by patient, for the three arms."""
    folds = _folds(data, opts)
    adapted = with_new_head(loaded, task, opts.seed)
    pretrained_name, random_name = arm_names(opts)
    arms = {
        pretrained_name: model_arm(adapted, task, data, cache, opts),
        random_name: model_arm(
            random_trunk(loaded, task, opts.seed), task, data, cache, opts
        ),
        "logistic regression, clinical": clinical_arm(data, opts),
    }
    return {
        "metric": "auc",
        "exams": len(data.labels),
        "patients": len(set(data.patients)),
        "class_counts": np.bincount(data.labels).tolist(),
        "folds": len(folds),
        "arms": {name: _cv(fn, data, folds) for name, fn in arms.items()},
    }


def fit_final(
    loaded: LoadedModel,
    task: NewTask,
    data: LabelledExams,
    cache: Any,
    opts: AdaptOptions,
) -> M3FM:
    """The loaded model with the new head trained on every labelled exam.

    With ``opts.train_fusion`` the returned model's ``task_attention`` is the fusion
    layers fine-tuned with the head (every task's answers then go through them).
    """
    model = with_new_head(loaded, task, opts.seed)
    if opts.train_fusion:
        encoded = encode_exams(model, task.spec, data.exams, cache)
        fusion, head = fit_fusion(model, task.spec.name, encoded, data.labels, opts)
        model.task_attention.load_state_dict(fusion.state_dict())
        model.heads[task.spec.name].load_state_dict(head.state_dict())
        return model.eval()
    feats = task_features(model, task.spec, data.exams, cache)
    fitted = fit_head(model.heads[task.spec.name], feats, data.labels, opts)
    model.heads[task.spec.name].load_state_dict(fitted.state_dict())
    return model.eval()


def subsample(data: LabelledExams, n: int, seed: int) -> LabelledExams:
    """``n`` labelled exams drawn at random, stratified by label."""
    from sklearn.model_selection import train_test_split

    if n >= len(data.labels):
        return data
    idx, _ = train_test_split(
        np.arange(len(data.labels)),
        train_size=n,
        stratify=data.labels,
        random_state=seed,
    )
    return data.subset(sorted(idx))
