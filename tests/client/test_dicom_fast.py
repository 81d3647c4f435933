"""The series template writes the bytes pydicom's ``save_as`` writes for each slice."""

from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from client.synth.dicom_fast import SeriesTemplate
from client.synth.dicom_writer import (
    SLICE_VARYING,
    SeriesInfo,
    StudyInfo,
    series_header,
    slice_pixels,
    slice_values,
    write_ct_series,
)
from client.synth.paint import Grid
from client.synth.profiles import get

STUDY = StudyInfo(
    patient_name="Müller^Zoë^K", patient_id="HX-P0001", birth_date="19500203",
    sex="F", age_years=69, study_uid="1.2.826.0.1.3680043.8.498.1",
    study_date="20190304", study_time="101500", accession="HX-E0001-1",
    study_id="1011", frame_uid="1.2.826.0.1.3680043.8.498.2", height_m=1.62,
    weight_kg=61.5, table_z_mm=-150.0,
)  # fmt: skip
SERIES = SeriesInfo(uid="1.2.826.0.1.3680043.8.498.3", number=2, description="CHEST", thickness_mm=2.5)  # fmt: skip
GRID = Grid(shape=(4, 24, 20), spacing=(2.5, 2.8, 2.8), z0_mm=-10.0)


def _volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(-500, 400, GRID.shape).astype(np.float32)


def _reference(header: Dataset, values: Dataset) -> bytes:
    full = Dataset()
    full.update(header)
    full.update(values)
    full.file_meta = header.file_meta
    full.file_meta.MediaStorageSOPInstanceUID = values.SOPInstanceUID
    buf = BytesIO()
    full.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("profile", ["hospital_a", "hospital_b", "hospital_c"])
def test_template_bytes_equal_save_as(profile):
    # Prepare: each profile's scanner (native int16/uint16, JPEG-LS, padding, flips)
    scanner = get(profile).scanner
    volume = _volume()
    header = series_header(GRID, STUDY, SERIES, scanner)
    template = SeriesTemplate(header, SLICE_VARYING)
    for k in range(GRID.shape[0]):
        values, _ = slice_values(volume, GRID, header, STUDY, SERIES, scanner, k)
        # Execute
        got = template.encode(values)
        # Assert
        assert got == _reference(series_header(GRID, STUDY, SERIES, scanner), values)


def test_written_series_reads_back(tmp_path):
    # Prepare
    scanner = get("hospital_a").scanner
    volume = _volume()
    # Execute
    files = write_ct_series(volume, GRID, tmp_path, STUDY, SERIES, scanner)
    # Assert: every slice parses, carries its own UID and the pixels of its plane
    uids = set()
    for f in files:
        ds = pydicom.dcmread(f.path)
        uids.add(ds.SOPInstanceUID)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PatientName == STUDY.patient_name
        assert np.array_equal(ds.pixel_array, slice_pixels(volume[f.k], scanner, GRID))
    assert len(uids) == GRID.shape[0]


def test_missing_slice_value_is_refused():
    # Prepare
    header = series_header(GRID, STUDY, SERIES, get("hospital_a").scanner)
    template = SeriesTemplate(header, SLICE_VARYING)
    values = Dataset()
    values.SOPInstanceUID = "1.2.3"
    # Execute / Assert
    with pytest.raises(ValueError, match="lack the varying tags"):
        template.encode(values)


def test_encoding_leaves_the_header_untouched():
    # Prepare: a header whose file meta already names an instance
    scanner = get("hospital_b").scanner
    header = series_header(GRID, STUDY, SERIES, scanner)
    header.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    before = [(e.tag, e.value) for e in header.file_meta]
    template = SeriesTemplate(header, SLICE_VARYING)
    values, _ = slice_values(_volume(), GRID, header, STUDY, SERIES, scanner, 0)
    # Execute
    got = pydicom.dcmread(BytesIO(template.encode(values)))
    # Assert
    assert got.file_meta.MediaStorageSOPInstanceUID == values.SOPInstanceUID
    assert [(e.tag, e.value) for e in header.file_meta] == before
