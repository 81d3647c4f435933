"""One exam's inputs for predict and explain: a DICOM folder and/or clinical data.

The CT goes through the site pipeline (series selection, ingestion, ROI crops) and
each crop is rounded to float16, the precision of the site cache that training and
``evaluate`` read, so one exam gets the same numbers here as in a batch. Clinical data
come as a JSON object, a ``.json`` file or a one-row table (CSV, Parquet, Excel) whose
keys are data-dictionary names (``m3fm_model.clinical.CLINICAL_FIELDS``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from m3fm_model.clinical import (
    CLINICAL_FIELDS,
    ClinicalValueError,
    normalize_record,
    serialize_with_spans,
)
from m3fm_model.config import preset_config

from ..dicom_ingest import ingest_site, load_ct_volume
from ..preprocess import preprocess_exam
from ..roi import Box, ROINotFoundError
from ..site_index import crop_specs
from ..tables import cell_text, read_table

ID_COLUMNS = ("patient_id", "exam_id")


@dataclass
class ExamInputs:
    """What the model sees of one exam.

    Attributes:
        crops: ROI -> ((1, S, H, W) float32 crop in [-1, 1], spacing after resize).
        record: The validated clinical record (empty without clinical data).
        text: The clinical paragraph, or None.
        spans: (field, start, end) of each field's sentence in ``text``.
    """

    crops: dict[str, tuple[torch.Tensor, tuple[float, float, float]]] = field(
        default_factory=dict
    )
    record: dict[str, object] = field(default_factory=dict)
    text: str | None = None
    spans: list[tuple[str, int, int]] = field(default_factory=list)
    geometry: dict[str, CropGeometry] = field(default_factory=dict)


@dataclass(frozen=True)
class CropGeometry:
    """Where a crop came from in the canonical volume.

    Attributes:
        box: The ROI box (start, stop voxels) before growing to the crop size.
        volume_shape: Shape (Z, Y, X) of the canonical HU volume.
        crop_size: The crop's (S, H, W).
    """

    box: tuple[tuple[int, int, int], tuple[int, int, int]]
    volume_shape: tuple[int, int, int]
    crop_size: tuple[int, int, int]

    def to_crop(self, voxel: tuple[float, float, float]) -> tuple[float, ...]:
        """Map a canonical volume voxel to crop coordinates (grow, pad, resize)."""
        box = Box(*self.box)
        grown = box.grow_to(self.crop_size, self.volume_shape)
        out = []
        for v, start, size, crop in zip(
            voxel, grown.start, grown.size, self.crop_size, strict=True
        ):
            padded = max(size, crop)
            before = (padded - size) // 2
            out.append((v - start + before + 0.5) * crop / padded - 0.5)
        return tuple(out)


def _issues_text(issues: list[Any]) -> str:
    return "; ".join(f"{i.code}: {i.message} ({i.path})" for i in issues[:4])


def load_ct_crops(
    dicom_dir: str | Path,
    preset: str,
    *,
    exam_id: str | None = None,
    patient_id_tag: str = "PatientID",
    exam_id_tag: str = "AccessionNumber",
) -> tuple[dict[str, tuple[torch.Tensor, tuple[float, float, float]]], dict]:
    """Ingest one exam's DICOM folder and cut the preset's ROI crops.

    Returns:
        ROI -> (crop, spacing after resize), and ROI -> ``CropGeometry``.

    Raises:
        ValueError: a missing or empty folder, no usable CT series, several exams
            without ``exam_id``, or no lung/heart region; the message says what was
            expected and what was found.
    """
    root = Path(dicom_dir).expanduser()
    ingest = ingest_site(root, patient_id_tag=patient_id_tag, exam_id_tag=exam_id_tag)
    exams = ingest.exam_ids
    if exam_id is None and len(exams) > 1:
        raise ValueError(
            f"{root} holds {len(exams)} exams; pass --exam-id with one of "
            f"{', '.join(exams[:8])}{', ...' if len(exams) > 8 else ''}"
        )
    wanted = exam_id or (exams[0] if exams else None)
    series = ingest.selected.get(wanted) if wanted else None
    if series is None:
        found = ingest.issues + ingest.exam_issues.get(wanted or "", [])
        raise ValueError(
            f"no usable CT series in {root}: expected an axial CT series (Modality CT, "
            f"ORIGINAL, >= 16 slices, tags {patient_id_tag}/{exam_id_tag} set); "
            f"found {len(ingest.scan.series)} series. {_issues_text(found)}"
        )
    volume, issues = load_ct_volume(series)
    if volume is None:
        raise ValueError(f"the CT series in {root} is unusable: {_issues_text(issues)}")
    try:
        crops = preprocess_exam(volume, crop_specs(preset_config(preset)))
    except ROINotFoundError as err:
        raise ValueError(f"CT in {root}: {err}") from None
    tensors = {
        roi: (
            torch.from_numpy(c.crop.astype("float16").astype("float32")),
            tuple(float(s) for s in c.spacing_mm),
        )
        for roi, c in crops.items()
    }
    geometry = {
        roi: CropGeometry(
            (tuple(c.box.start), tuple(c.box.stop)),
            tuple(volume.hu.shape),
            tuple(c.crop.shape[1:]),
        )
        for roi, c in crops.items()
    }
    return tensors, geometry  # type: ignore[return-value]


def _raw_clinical(source: str) -> tuple[dict[str, Any], str]:
    text = source.strip()
    if text.startswith("{"):
        try:
            return json.loads(text), "the --clinical JSON"
        except ValueError as err:
            raise ValueError(f"--clinical is not valid JSON: {err}") from None
    path = Path(source).expanduser()
    if not path.is_file():
        raise ValueError(
            f"clinical file {path} does not exist; give a .json/.csv/.parquet/.xlsx "
            "file or an inline JSON object"
        )
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"clinical file {path} is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"clinical file {path} must hold one JSON object")
        return raw, str(path)
    frame = read_table(path)
    if len(frame) != 1:
        raise ValueError(
            f"clinical table {path} must have exactly one row, has {len(frame)}"
        )
    row = {str(k): cell_text(v) for k, v in frame.iloc[0].to_dict().items()}
    return {k: v for k, v in row.items() if v is not None}, str(path)


def load_clinical(
    source: str,
) -> tuple[dict[str, object], str, list[tuple[str, int, int]]]:
    """Read and validate one exam's clinical data.

    Args:
        source: Inline JSON object or a file path (see the module docstring).

    Returns:
        (validated record, paragraph, sentence spans).

    Raises:
        ValueError: unreadable input, unknown columns (the valid names are listed) or
            an invalid value (the field and the reason are named).
    """
    raw, where = _raw_clinical(source)
    record = {k: v for k, v in raw.items() if k not in ID_COLUMNS}
    unknown = sorted(k for k in record if k not in CLINICAL_FIELDS)
    if unknown:
        raise ValueError(
            f"{where}: unknown columns {unknown}; expected data-dictionary names: "
            f"{', '.join(CLINICAL_FIELDS)}"
        )
    try:
        record = normalize_record(record)
    except ClinicalValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if not record:
        raise ValueError(f"{where}: no clinical value given")
    text, spans = serialize_with_spans(record)
    return record, text, spans


def load_exam(
    *,
    preset: str,
    dicom_dir: str | Path | None = None,
    clinical: str | None = None,
    exam_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> ExamInputs:
    """The CT crops and/or clinical paragraph of one exam (at least one is needed)."""
    if dicom_dir is None and clinical is None:
        raise ValueError("give --exam DICOM_DIR, --clinical FILE_OR_JSON, or both")
    inputs = ExamInputs()
    if dicom_dir is not None:
        inputs.crops, inputs.geometry = load_ct_crops(
            dicom_dir, preset, exam_id=exam_id, **(tags or {})
        )
    if clinical is not None:
        inputs.record, inputs.text, inputs.spans = load_clinical(clinical)
    return inputs
