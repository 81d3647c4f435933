"""Site training data: question-answer examples read from the prepared manifest.

An example is (exam inputs, a question, the answer) for one task: one per exam and task
the site labels, plus at most one auxiliary ``clinical_number`` example per exam whose
clinical record holds a number the question asks for (it needs no label, so a site
without labels still contributes). Questions are drawn from the task's paraphrases at
every fetch, so the model learns to read the question.

Examples are batched by ``client.site_batch.collate_parts`` (one part per crop size).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from m3fm_model.config import ModelConfig, preset_config
from m3fm_model.tasks import (
    CLINICAL_NUMBER_QUESTIONS,
    TASKS,
    AnswerKind,
    encode_number3,
)
from m3fm_model.tokenizer import TextTokenizer, load_tokenizer

from .cache import CacheKey, ExamCache
from .prepare import MANIFEST_VERSION, manifest_path, source_digests
from .preprocess import preprocessing_fingerprint
from .site_batch import Example, M3FMBatch, collate_examples, collate_parts
from .site_config import SiteConfig
from .site_index import crop_specs

__all__ = [
    "AUX_TASK",
    "Example",
    "M3FMBatch",
    "ManifestError",
    "SiteDataset",
    "build_site_dataset",
    "collate_examples",
    "collate_parts",
    "default_tokenizer",
    "load_manifest",
]

logger = logging.getLogger(__name__)

AUX_TASK = "clinical_number"
SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """The site's prepared manifest is missing, unreadable or stale."""


def load_manifest(cfg: SiteConfig, preset: str) -> list[dict[str, Any]]:
    """The exams of the site's prepared manifest for a preset.

    Args:
        cfg: The site config.
        preset: Model preset whose crops were prepared.

    Returns:
        One dict per exam (see ``client.prepare``).

    Raises:
        ManifestError: When the manifest is missing, unreadable, or was prepared for
            another preset, preprocessing, site or task list, or from tables or
            table mappings that have changed since (each changed input named).
    """
    path = manifest_path(cfg, preset)
    fix = f"run `m3fm-site prepare --site-config {cfg.path} --preset {preset}`"
    if not path.is_file():
        raise ManifestError(f"no prepared manifest at {path}; {fix}")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        exams = payload["exams"]
        if not isinstance(exams, list):
            raise TypeError("exams is not a list")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ManifestError(f"manifest {path} is unreadable ({err}); {fix}") from err
    expected = {
        "version": MANIFEST_VERSION,
        "preset": preset,
        "site": cfg.name,
        "tasks": list(cfg.tasks),
        "fingerprint": preprocessing_fingerprint(crop_specs(preset_config(preset))),
    }
    stale = [k for k, v in expected.items() if payload.get(k) != v]
    stale += _changed_sources(payload.get("sources"), cfg, fix)
    if stale:
        raise ManifestError(f"manifest {path} is stale ({', '.join(stale)}); {fix}")
    return exams


def _changed_sources(recorded: Any, cfg: SiteConfig, fix: str) -> list[str]:
    """What changed since prepare, one line per changed input.

    A manifest that recorded no digests (an older version's) gives one line saying so.
    """
    try:
        now = source_digests(cfg)
    except OSError as err:
        raise ManifestError(
            f"cannot read a table of site config {cfg.path} ({err.strerror}: "
            f"{err.filename}); restore it, then {fix}"
        ) from err
    if not isinstance(recorded, Mapping):
        return ["prepared before table digests were recorded"]
    where = {
        "clinical table": f"the clinical table {cfg.clinical.path}",
        "labels table": f"the labels table {cfg.labels.path}",
        "table mappings": f"the table mappings, split or tasks of {cfg.path}",
    }
    return [
        f"{where[k]} changed since prepare"
        for k, v in now.items()
        if recorded.get(k) != v
    ]


def manifest_is_current(cfg: SiteConfig, preset: str) -> bool:
    """Whether ``load_manifest`` would accept the site's manifest for ``preset``.

    False when it is missing, unreadable or stale (another preprocessing, e.g. a
    change of the preset's ROIs, crop sizes or windows, site or task list, or an
    edited clinical or labels table or mapping), so
    callers that skip prepared sites prepare it again; crops that did not change
    come from the cache.
    """
    try:
        load_manifest(cfg, preset)
    except ManifestError:
        return False
    return True


@functools.cache
def default_tokenizer() -> TextTokenizer:
    """The shipped clinical tokenizer, loaded once per process on first use."""
    return load_tokenizer()


def _usable_label(task: str, value: Any) -> bool:
    """Whether a manifest label can train the task's head."""
    spec = TASKS[task]
    if spec.answer_kind is AnswerKind.HAZARD6:
        ok = isinstance(value, Mapping) and {"targets", "observed"} <= set(value)
        return ok and len(value["targets"]) == 6 and any(value["observed"])
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return spec.answer_kind is not AnswerKind.NUMBER3 and 0 <= value < len(spec.classes)


def _number_fields(exam: Mapping[str, Any]) -> tuple[str, ...]:
    """Clinical fields with a numeric value the auxiliary questions can ask for."""
    record = exam.get("clinical_record") or {}
    if not exam.get("clinical_text"):
        return ()
    return tuple(
        f
        for f in CLINICAL_NUMBER_QUESTIONS
        if isinstance(record.get(f), int | float)
        and not isinstance(record.get(f), bool)
        and math.isfinite(record[f])
    )


class SiteDataset(Dataset[Example]):
    """Question-answer examples of one split of a site (see the module docstring)."""

    def __init__(
        self,
        exams: Sequence[Mapping[str, Any]],
        *,
        cache: ExamCache,
        model_config: ModelConfig,
        tasks: Sequence[str],
        tokenizer: TextTokenizer,
        augment: bool = True,
        modality_dropout: float = 0.0,
        auxiliary: bool = True,
        seed: int = 0,
        per_patient: bool = False,
    ) -> None:
        """Index the examples.

        Args:
            exams: Manifest exams (``load_manifest``), usually of one split.
            cache: The site's crop cache.
            model_config: Architecture (ROI crop sizes, question and text lengths).
            tasks: Tasks the site labels; other labels are ignored.
            tokenizer: Text tokenizer.
            augment: Random paraphrases and modality dropout; False = canonical
                question, no dropout, deterministic auxiliary field (evaluation).
            modality_dropout: Probability of hiding the CT, and (separately) of
                hiding the clinical text, never both; 0..0.5.
            auxiliary: Add the ``clinical_number`` examples.
            seed: Seed of the per-epoch, per-worker random generator.
            per_patient: One item per patient: each fetch draws one of the patient's
                examples (exam and task) at random. Training under DP uses this, so a
                Poisson draw includes a patient at most once and the (epsilon, delta)
                guarantee protects a whole patient, not one example.
        """
        if not 0.0 <= modality_dropout <= 0.5:
            raise ValueError(
                f"modality_dropout must be in [0, 0.5], got {modality_dropout}"
            )
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}")
        self.tokenizer, self.config, self._cache = tokenizer, model_config, cache
        self.augment, self.modality_dropout, self.seed = augment, modality_dropout, seed
        self._exams = list(exams)
        texts = [e.get("clinical_text") or None for e in self._exams]
        self._text_ids, self._text_mask = tokenizer.encode(
            texts, model_config.text.clinical_len
        )
        self._fields = [_number_fields(e) for e in self._exams]
        self._refs = self._index(tasks, auxiliary)
        self._units = self._group_units(per_patient)
        self._per_patient = per_patient
        self._questions: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._epoch, self._rng_key = 0, None
        self._rng: np.random.Generator | None = None

    def _index(self, tasks: Sequence[str], auxiliary: bool) -> list[tuple[int, str]]:
        refs, skipped = [], Counter()
        for i, exam in enumerate(self._exams):
            labels = exam.get("labels") or {}
            for task in (t for t in TASKS if t in tasks and t in labels):
                if _usable_label(task, labels[task]):
                    refs.append((i, task))
                else:
                    skipped[task] += 1
            if auxiliary and self._fields[i]:
                refs.append((i, AUX_TASK))
        if skipped:
            logger.warning("labels skipped as unusable, per task: %s", dict(skipped))
        return refs

    def _group_units(self, per_patient: bool) -> list[list[int]]:
        """Items of the dataset as lists of example indices (one each, or per patient)."""
        if not per_patient:
            return [[i] for i in range(len(self._refs))]
        by_patient: dict[str, list[int]] = {}
        for i, (exam_i, _) in enumerate(self._refs):
            pid = str(self._exams[exam_i].get("patient_id", exam_i))
            by_patient.setdefault(pid, []).append(i)
        return list(by_patient.values())

    @property
    def per_patient(self) -> bool:
        """Whether an item is a patient (one random example of theirs per fetch)."""
        return any(len(u) > 1 for u in self._units) or len(self._units) < len(
            self._refs
        )

    def __len__(self) -> int:
        return len(self._units)

    @property
    def task_counts(self) -> dict[str, int]:
        """Items (examples, or patients when per patient) that hold each task."""
        counts: Counter[str] = Counter()
        for unit in self._units:
            counts.update({self._refs[i][1] for i in unit})
        return {t: counts[t] for t in TASKS if counts[t]}

    @property
    def entries(self) -> tuple[tuple[int, str], ...]:
        """(position of the exam in ``exams``, task) of every example."""
        return tuple(self._refs)

    @property
    def exams(self) -> tuple[Mapping[str, Any], ...]:
        """The manifest exams this dataset was built from."""
        return tuple(self._exams)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Tasks with at least one example."""
        return tuple(self.task_counts)

    @property
    def crop_sizes(self) -> set[tuple[int, int, int]]:
        """Crop sizes the dataset's tasks use (from the config, not from the data)."""
        rois = {TASKS[t].roi for t in self.tasks if TASKS[t].uses_ct}
        return {self.config.crop_for_roi(r) for r in rois}

    def with_options(self, **options: Any) -> SiteDataset:
        """A view sharing the indexed exams, with options replaced.

        Args:
            **options: ``augment``, ``modality_dropout`` and/or ``seed``.

        Returns:
            The view (its own random generator state).
        """
        bad = set(options) - {"augment", "modality_dropout", "seed"}
        if bad or not 0.0 <= options.get("modality_dropout", 0.0) <= 0.5:
            raise ValueError(f"bad options {sorted(bad) or options}")
        view = copy.copy(self)
        view.__dict__.update(options)
        view._rng, view._rng_key = None, None
        return view

    def set_epoch(self, epoch: int) -> None:
        """Reseed the augmentation generator for a new pass over the data."""
        self._epoch = int(epoch)

    def _generator(self, index: int) -> np.random.Generator:
        if not self.augment:
            return np.random.default_rng([self.seed, index])
        info = get_worker_info()
        key = (self._epoch, info.id if info is not None else 0)
        if self._rng is None or self._rng_key != key:
            self._rng, self._rng_key = np.random.default_rng([self.seed, *key]), key
        return self._rng

    def _question(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        if text not in self._questions:
            ids, mask = self.tokenizer.encode([text], self.config.text.question_len)
            self._questions[text] = (ids[0], mask[0])
        return self._questions[text]

    def _load_ct(
        self, exam: Mapping[str, Any], roi: str
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        entry = (exam.get("crops") or {}).get(roi)
        cached = self._cache.get(CacheKey(**entry["key"])) if entry else None
        expected = self.config.crop_for_roi(roi)
        if cached is None or tuple(cached.crop.shape[1:]) != expected:
            logger.warning(
                "crop %s of exam %s missing or wrong size in the cache; shown without "
                "CT (rerun m3fm-site prepare)",
                roi,
                exam.get("exam_id"),
            )
            return None
        crop = torch.from_numpy(np.array(cached.crop, dtype=np.float32))
        return crop, torch.tensor(entry["spacing_mm"], dtype=torch.float32)

    def _drops(
        self, rng: np.random.Generator, has_ct: bool, has_text: bool
    ) -> tuple[bool, bool]:
        """(drop CT, drop text): each with probability p, never both.

        Only an exam that shows both modalities loses one.
        """
        if not (self.augment and has_ct and has_text and self.modality_dropout > 0):
            return False, False
        u = rng.random()
        return u < self.modality_dropout, self.modality_dropout <= u < (
            2 * self.modality_dropout
        )

    def _question_and_answer(
        self, exam_i: int, task: str, rng: np.random.Generator
    ) -> tuple[str, Any]:
        """A question wording (random paraphrase when augmenting) and the answer."""
        exam = self._exams[exam_i]
        if task == AUX_TASK:
            name = self._fields[exam_i][int(rng.integers(len(self._fields[exam_i])))]
            questions = CLINICAL_NUMBER_QUESTIONS[name]
            target: Any = encode_number3(exam["clinical_record"][name])
        else:
            questions, target = TASKS[task].questions, exam["labels"][task]
        pick = int(rng.integers(len(questions))) if self.augment else 0
        return questions[pick], target

    def __getitem__(self, index: int) -> Example:
        unit, rng = self._units[index], self._generator(index)
        if len(unit) > 1:
            index = unit[int(rng.integers(len(unit)))] if self.augment else unit[0]
        else:
            index = unit[0]
        exam_i, task = self._refs[index]
        exam = self._exams[exam_i]
        spec = TASKS[task]
        question, target = self._question_and_answer(exam_i, task, rng)
        has_text = bool(self._text_mask[exam_i].any())
        has_ct = spec.uses_ct and bool((exam.get("crops") or {}).get(spec.roi))
        drop_ct, drop_text = self._drops(rng, has_ct, has_text)
        loaded = self._load_ct(exam, spec.roi) if has_ct and not drop_ct else None
        text_mask = self._text_mask[exam_i].clone()
        if drop_text:
            text_mask[:] = False
        text_ids = torch.where(text_mask, self._text_ids[exam_i], self.tokenizer.pad_id)
        q_ids, q_mask = self._question(question)
        return Example(
            index=index,
            task=task,
            question_ids=q_ids,
            question_mask=q_mask,
            text_ids=text_ids,
            text_mask=text_mask,
            ct=None if loaded is None else loaded[0],
            spacing_mm=None if loaded is None else loaded[1],
            target=target,
        )


def build_site_dataset(
    cfg: SiteConfig,
    preset: str,
    split: str,
    *,
    augment: bool = True,
    modality_dropout: float = 0.0,
    auxiliary: bool = True,
    seed: int = 0,
    tokenizer: TextTokenizer | None = None,
    per_patient: bool = False,
) -> SiteDataset:
    """The examples of one split of a prepared site.

    Args:
        cfg: The site config.
        preset: Model preset whose crops were prepared.
        split: "train", "val" or "test".
        augment: See ``SiteDataset``.
        modality_dropout: See ``SiteDataset``.
        auxiliary: See ``SiteDataset``.
        seed: See ``SiteDataset``.
        tokenizer: Text tokenizer (default: the shipped one, loaded once).
        per_patient: See ``SiteDataset`` (the DP unit is then the patient).

    Returns:
        The dataset.

    Raises:
        ManifestError: When the site is not prepared (or stale) for the preset.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    exams = [e for e in load_manifest(cfg, preset) if e.get("split") == split]
    return SiteDataset(
        exams,
        cache=ExamCache(cfg.cache_dir / "crops"),
        model_config=preset_config(preset),
        tasks=cfg.tasks,
        tokenizer=tokenizer or default_tokenizer(),
        augment=augment,
        modality_dropout=modality_dropout,
        auxiliary=auxiliary,
        seed=seed,
        per_patient=per_patient,
    )
