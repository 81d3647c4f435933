"""Fuzz targets for the site's input parsers: DICOM ingestion and the site tables.

Each ``*_one_input(data)`` turns arbitrary bytes into one hostile input, runs the
site's real parser on it and checks the outcome contract of issue #8: a typed error
(``TableError``, a configuration ``ValueError``) or a skip with a reported reason,
never an unexpected exception, a non-finite volume or an unbounded allocation. A
violated contract raises ``AssertionError`` (libFuzzer then saves the input).

The targets need no fuzzing engine: ``fuzz/fuzz_dicom.py`` and ``fuzz/fuzz_tables.py``
drive them with atheris, and ``tests/reliability`` drives them with seeded bytes.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from client.dicom_ingest import MAX_VOXELS, ingest_site
from client.site_config import CancerRiskColumns, TableSource
from client.tables import TableError

TEMPLATE_SLICES = 16  # the default minimum of a CT series
TEMPLATE_SIZE = 16  # rows = columns of each template slice
# Header fields the DICOM target mutates, with the VR the dictionary gives them.
FIELDS: tuple[tuple[str, str], ...] = (
    ("Rows", "US"),
    ("Columns", "US"),
    ("PixelSpacing", "DS"),
    ("ImagePositionPatient", "DS"),
    ("ImageOrientationPatient", "DS"),
    ("RescaleSlope", "DS"),
    ("RescaleIntercept", "DS"),
    ("SliceThickness", "DS"),
    ("InstanceNumber", "IS"),
    ("NumberOfFrames", "IS"),
    ("PatientID", "LO"),
    ("AccessionNumber", "SH"),
    ("SeriesInstanceUID", "UI"),
    ("SOPInstanceUID", "UI"),
    ("Modality", "CS"),
    ("ImageType", "CS"),
    ("SeriesDescription", "LO"),
    ("BitsAllocated", "US"),
    ("PixelRepresentation", "US"),
    ("SamplesPerPixel", "US"),
)
WRONG_VRS = ("UN", "OB", "LO", "US", "FD", "SL", "DS", "IS", "UT")
ISSUE_SEVERITIES = frozenset({"error", "warning"})


def quiet() -> None:
    """Silence the expected skip warnings (client logs, pydicom VR warnings)."""
    logging.getLogger("client").setLevel(logging.ERROR)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", UserWarning)


class Bytes:
    """Consumes fuzzer bytes as small integers, floats and strings (never raises)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        """The next byte, 0 once the input is used up."""
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        """Up to ``n`` next bytes."""
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def rest(self) -> bytes:
        """Every remaining byte."""
        return self.take(len(self.data))

    def pick(self, n: int) -> int:
        """An index in ``range(n)``."""
        return self.byte() % n

    def number(self) -> float:
        """An awkward number: NaN, +-inf, 0, negative, huge, tiny or an 8-byte double."""
        special = (math.nan, math.inf, -math.inf, 0.0, -1.0, 1e308, 1e-308, 65535.0)
        k = self.byte()
        if k < 128:
            return special[k % len(special)]
        raw = self.take(8).ljust(8, b"\0")
        return float(np.frombuffer(raw, dtype="<f8")[0])

    def text(self, limit: int = 80) -> str:
        """A string from the next bytes (UTF-8 with replacement)."""
        return self.take(self.byte() % limit).decode("utf-8", "replace")


@functools.lru_cache(maxsize=1)
def template_series() -> tuple[bytes, ...]:
    """A valid 16-slice axial CT series (16 x 16 pixels each), one file per slice."""
    series, study = generate_uid(), generate_uid()
    files = []
    for k in range(TEMPLATE_SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = (
            CTImageStorage,
            meta.MediaStorageSOPInstanceUID,
        )
        ds.PatientID, ds.AccessionNumber = "PSEUDO-P1", "PSEUDO-E1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesDescription, ds.SliceThickness = "CHEST", 2.0
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-8.0, -8.0, 2.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = TEMPLATE_SIZE
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
            16,
            16,
            15,
            0,
        )
        pixels = np.full((TEMPLATE_SIZE, TEMPLATE_SIZE), 500 + 10 * k, dtype="<u2")
        ds.PixelData = pixels.tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return tuple(files)


def set_field(blob: bytes, keyword: str, vr: str, value: object) -> bytes:
    """Re-encode one file with ``keyword`` set to ``value`` stored under ``vr``.

    Values that pydicom cannot encode under that VR are stored as raw bytes with VR
    UN (validation is off while writing); a file an earlier edit made unreadable is
    returned unchanged.
    """
    tag = pydicom.datadict.tag_for_keyword(keyword)
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
    for element_vr, element_value in ((vr, value), ("UN", raw)):
        try:
            ds = pydicom.dcmread(io.BytesIO(blob))
            with pydicom.config.disable_value_validation():
                ds[tag] = DataElement(tag, element_vr, element_value)
                out = io.BytesIO()
                ds.save_as(out)
            return out.getvalue()
        except Exception:  # noqa: BLE001 - not encodable this way; try the next one
            continue
    return blob  # an earlier edit left a file pydicom cannot rewrite: keep it


def _value_for(vr: str, src: Bytes) -> object:
    """A hostile value for a VR: awkward numbers, multi-values, text, raw bytes."""
    if vr in ("US", "SL"):
        return (
            [0, 1, 65535, 2**31 - 1, -1][src.pick(5)]
            if vr == "SL"
            else [
                0,
                1,
                4096,
                65535,
            ][src.pick(4)]
        )
    if vr == "FD":
        return src.number()
    if vr in ("DS", "IS"):
        count = 1 + src.pick(7)
        return "\\".join(repr(src.number()) for _ in range(count))
    if vr in ("UN", "OB"):
        return src.take(src.byte())
    return src.text()


def mutate_series(src: Bytes) -> list[bytes]:
    """The template series with a few hostile edits chosen by ``src``."""
    files = list(template_series())
    for _ in range(1 + src.pick(3)):
        mode = src.pick(5)
        index = src.pick(len(files))
        if mode == 0:  # one header field, dictionary VR, hostile value
            keyword, vr = FIELDS[src.pick(len(FIELDS))]
            targets = range(len(files)) if src.byte() & 1 else [index]
            value = _value_for(vr, src)
            for i in targets:
                files[i] = set_field(files[i], keyword, vr, value)
        elif mode == 1:  # one header field stored under a wrong VR
            keyword, _ = FIELDS[src.pick(len(FIELDS))]
            vr = WRONG_VRS[src.pick(len(WRONG_VRS))]
            files[index] = set_field(files[index], keyword, vr, _value_for(vr, src))
        elif mode == 2:  # truncated file
            cut = (src.byte() << 8 | src.byte()) % max(len(files[index]), 1)
            files[index] = files[index][:cut]
        elif mode == 3:  # flipped bytes
            blob = bytearray(files[index])
            for _ in range(1 + src.pick(8)):
                blob[(src.byte() << 8 | src.byte()) % len(blob)] ^= 1 + src.pick(255)
            files[index] = bytes(blob)
        else:  # a file of arbitrary bytes next to the series
            files.append(src.take(512))
    return files


def check_site_ingest(root: Path) -> list[str]:
    """Ingest ``root`` and check the contract; returns the issue codes seen.

    Raises:
        AssertionError: on an unexpected exception surfaced as ``internal_error``, a
            malformed issue, or a volume with non-finite values, bad spacing or more
            than ``MAX_VOXELS`` voxels.
    """
    site = ingest_site(root)
    codes = [i.code for i in site.issues]
    for exam in site:
        for issue in exam.issues:
            assert issue.severity in ISSUE_SEVERITIES, issue
            assert issue.code and issue.message, issue
            assert issue.code != "internal_error", issue
            codes.append(issue.code)
        volume = exam.volume
        if volume is None:
            assert any(i.severity == "error" for i in exam.issues), exam
            continue
        assert volume.hu.dtype == np.float32 and volume.hu.ndim == 3
        assert volume.hu.size <= MAX_VOXELS
        assert bool(np.isfinite(volume.hu).all()), "non-finite HU in an accepted volume"
        assert all(math.isfinite(s) and s > 0 for s in volume.spacing_mm), volume
    return codes


def write_files(folder: Path, files: list[bytes]) -> None:
    """Write the files as ``f000``, ``f001``, ... (names carry no meaning)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, blob in enumerate(files):
        (folder / f"f{i:03d}").write_bytes(blob)


def dicom_one_input(data: bytes) -> None:
    """Fuzz target: a mutated CT series (headers, VRs, truncation, bytes) is ingested."""
    files = mutate_series(Bytes(data))
    with tempfile.TemporaryDirectory() as tmp:
        write_files(Path(tmp) / "dicom", files)
        check_site_ingest(Path(tmp) / "dicom")


CLINICAL_COLUMNS = {
    "age": "age",
    "gender": "sex",
    "height": "height",
    "weight": "weight",
    "smoking_status": "smoking",
}


def clinical_source(path: Path) -> TableSource:
    """The clinical-table mapping the table target uses (cm and kg units, sex codes)."""
    return TableSource(
        path=path,
        patient_id_column="pid",
        exam_id_column="eid",
        columns=CLINICAL_COLUMNS,
        units={"height": "cm", "weight": "kg"},
        values={"gender": {"1": "Male", "2": "Female"}},
    )


def labels_source(path: Path) -> TableSource:
    """The labels-table mapping the table target uses (binary, class and hazard)."""
    return TableSource(
        path=path,
        patient_id_column="pid",
        exam_id_column="eid",
        columns={
            "heart": "heart",
            "emphysema": "emph",
            "cancer_risk": CancerRiskColumns("event", "follow"),
        },
    )


def check_tables(path: Path) -> None:
    """Load ``path`` as clinical and as labels table and check the contract.

    Raises:
        AssertionError: on an exception other than ``TableError``, or an accepted
            record holding a non-finite number or a non-numeric, non-text value.
    """
    from client.clinical_table import load_clinical_table
    from client.labels_table import HazardTarget, load_labels_table

    loaders: tuple[Callable[[], object], ...] = (
        lambda: load_clinical_table(clinical_source(path)),
        lambda: load_labels_table(labels_source(path)),
    )
    for load in loaders:
        try:
            rows, issues = load()  # type: ignore[misc]
        except TableError as err:
            assert str(path) in str(err), "a table error must name the file"
            continue
        for issue in issues:
            assert issue.severity in ISSUE_SEVERITIES and issue.code, issue
        for value in rows.values():
            items = getattr(value, "record", value)
            for item in items.values():
                if isinstance(item, HazardTarget):
                    assert all(math.isfinite(t) for t in item.targets)
                elif isinstance(item, float):
                    assert math.isfinite(item), item
                else:
                    assert isinstance(item, int | str), item


TABLE_SUFFIXES = (".csv", ".tsv", ".xlsx", ".parquet")
HEADER = "pid,eid,age,sex,height,weight,smoking,heart,emph,event,follow\n"


def table_one_input(data: bytes) -> None:
    """Fuzz target: bytes as a CSV (behind a valid header), TSV, Excel or Parquet file."""
    src = Bytes(data)
    suffix = TABLE_SUFFIXES[src.pick(len(TABLE_SUFFIXES))]
    body = src.rest()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"table{suffix}"
        path.write_bytes(HEADER.encode() + body if suffix == ".csv" else body)
        check_tables(path)
