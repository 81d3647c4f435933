"""Join a site's CT exams, clinical rows and labels into one index, with a patient split.

Nothing stops on one bad exam or row: each problem becomes an issue in the report. Exams
are joined on pseudonymous (patient ID, exam ID); a clinical or labels table without an
exam-ID column applies to every exam of the patient. A labelled exam without a usable CT
still takes part (the model answers from the clinical text alone).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from m3fm_model.config import ModelConfig
from m3fm_model.tasks import HU_WINDOWS

from .clinical_table import ClinicalRow, load_clinical_table
from .dicom_ingest import ExamIngest, ingest_site
from .dicom_types import CTVolume
from .labels_table import Label, load_labels_table
from .preprocess import CropSpec
from .site_config import SiteConfig, SplitConfig
from .tables import RowIssue

SPLITS = ("train", "val", "test")


@dataclass
class ExamEntry:
    """One exam as the site will train and evaluate on it (pseudonymous IDs only)."""

    patient_id: str
    exam_id: str
    split: str
    content_hash: str | None = None
    clinical: ClinicalRow | None = None
    labels: dict[str, Label] = field(default_factory=dict)
    spacing_mm: tuple[float, float, float] | None = None

    @property
    def has_ct(self) -> bool:
        """Whether a usable CT volume was loaded for this exam."""
        return self.content_hash is not None


@dataclass
class SiteIndex:
    """All exams of a site plus every problem found on the way."""

    entries: list[ExamEntry]
    dicom_issues: list[dict[str, object]]
    table_issues: list[RowIssue]
    studies_found: int
    series_found: int
    files_found: int


def assign_split(patient_id: str, split: SplitConfig) -> str:
    """Deterministic patient-level split from a hash of (seed, patient ID)."""
    digest = hashlib.sha256(f"{split.seed}:{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    train, val, _ = split.fractions
    return "train" if u < train else "val" if u < train + val else "test"


def crop_specs(config: ModelConfig) -> list[CropSpec]:
    """One crop spec per ROI of a model config (crop size and HU window)."""
    return [
        CropSpec(roi, tuple(crop), HU_WINDOWS[roi]) for roi, crop in config.roi_crops
    ]  # type: ignore[arg-type]


def _lookup(table: dict, pid: str, eid: str | None) -> object | None:
    return table.get((pid, eid), table.get((pid, None)))


def _issue_dict(issue: object) -> dict[str, object]:
    return {
        k: getattr(issue, k)
        for k in ("code", "path", "field", "message", "severity", "exam_id")
    }


def build_site_index(
    cfg: SiteConfig,
    *,
    on_volume: Callable[[ExamEntry, CTVolume], None] | None = None,
    progress: Callable[[Iterable[ExamIngest], int], Iterable[ExamIngest]] | None = None,
) -> SiteIndex:
    """Ingest the site's DICOM tree and tables and join them.

    Args:
        cfg: the site config.
        on_volume: called with each usable exam and its volume (e.g. to cache crops);
            an exception it raises marks that exam's CT unusable and is reported.
        progress: wraps the exam iterator (e.g. a progress bar), given the exam count.

    Raises:
        ValueError: configuration errors (empty DICOM folder, unreadable tables,
            columns missing) — one clear error each.
    """
    clinical, clinical_issues = load_clinical_table(cfg.clinical)
    labels, label_issues = load_labels_table(cfg.labels)
    ingest = ingest_site(
        cfg.dicom.root,
        patient_id_tag=cfg.dicom.patient_id_tag,
        exam_id_tag=cfg.dicom.exam_id_tag,
        description_pattern=cfg.dicom.series_description_pattern,
    )
    dicom_issues = [_issue_dict(i) for i in ingest.issues]
    exams: Iterable[ExamIngest] = ingest
    if progress is not None:
        exams = progress(ingest, len(ingest.exam_ids))
    entries: dict[tuple[str, str], ExamEntry] = {}
    for exam in exams:
        entry = ExamEntry(
            exam.patient_id, exam.exam_id, assign_split(exam.patient_id, cfg.split)
        )
        dicom_issues += [_issue_dict(i) for i in exam.issues]
        if exam.volume is not None:
            _accept_volume(entry, exam.volume, on_volume, dicom_issues)
        entries[(exam.patient_id, exam.exam_id)] = entry
    table_issues = clinical_issues + label_issues
    _join_tables(cfg, entries, clinical, labels, table_issues)
    return SiteIndex(
        entries=sorted(entries.values(), key=lambda e: (e.patient_id, e.exam_id)),
        dicom_issues=dicom_issues,
        table_issues=table_issues,
        studies_found=len({s.study_uid for s in ingest.scan.series}),
        series_found=len(ingest.scan.series),
        files_found=ingest.scan.n_files,
    )


def _accept_volume(
    entry: ExamEntry,
    volume: CTVolume,
    on_volume: Callable[[ExamEntry, CTVolume], None] | None,
    issues: list[dict[str, object]],
) -> None:
    entry.content_hash = volume.content_hash
    entry.spacing_mm = tuple(volume.spacing_mm)  # type: ignore[assignment]
    if on_volume is None:
        return
    try:
        on_volume(entry, volume)
    except (
        ValueError
    ) as err:  # e.g. no lungs found: the exam keeps its tables, not its CT
        entry.content_hash = None
        issues.append(
            {
                "code": "roi_not_found",
                "path": str(volume.series_uid),
                "field": "",
                "severity": "error",
                "message": f"{type(err).__name__}: {err}; give the ROI box in the site manifest",
                "exam_id": entry.exam_id,
            }
        )


def _join_tables(
    cfg: SiteConfig,
    entries: dict[tuple[str, str], ExamEntry],
    clinical: dict[tuple[str, str | None], ClinicalRow],
    labels: dict[tuple[str, str | None], dict[str, Label]],
    issues: list[RowIssue],
) -> None:
    for entry in entries.values():
        row = _lookup(clinical, entry.patient_id, entry.exam_id)
        entry.clinical = row  # type: ignore[assignment]
        if row is None:
            issues.append(
                RowIssue(
                    "no_clinical_row",
                    str(cfg.clinical.path),
                    0,
                    "",
                    "exam has no clinical row; it trains on the CT alone",
                    row_id=entry.exam_id,
                )
            )
        entry.labels = dict(_lookup(labels, entry.patient_id, entry.exam_id) or {})  # type: ignore[arg-type]
    patients_with_ct = {pid for pid, _ in entries}
    for (pid, eid), row in clinical.items():
        if (pid, eid) in entries or (eid is None and pid in patients_with_ct):
            continue
        # A row whose exam has no DICOM series: keep it as a text-only exam.
        exam_id = eid or f"{pid}-text"
        entry = ExamEntry(pid, exam_id, assign_split(pid, cfg.split), clinical=row)
        entry.labels = dict(_lookup(labels, pid, eid) or {})  # type: ignore[arg-type]
        entries[(pid, exam_id)] = entry
        issues.append(
            RowIssue(
                "no_dicom_exam",
                str(cfg.clinical.path),
                0,
                "",
                "clinical row has no DICOM exam; it trains on the clinical text alone",
                row_id=exam_id,
            )
        )
