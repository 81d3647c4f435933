"""Hostile DICOM input: every malformed file or header is skipped with a reason.

Property-based (hypothesis) over header fields with awkward values, wrong VRs,
truncation, flipped bytes and arbitrary files; the outcome contract is checked by
``fuzz.targets.check_site_ingest`` (no unexpected exception, finite volumes, bounded
size). Absurd geometry must be refused before any voxel is allocated.
"""

import logging
import math
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.dicom_ingest import MAX_MATRIX, MAX_VOXELS, ingest_site
from fuzz.targets import (
    FIELDS,
    WRONG_VRS,
    check_site_ingest,
    set_field,
    template_series,
    write_files,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's VR warnings
SETTINGS = settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
INJECTION = (
    "../../../etc/passwd",
    "'; DROP TABLE exams; --",
    "=cmd|' /C calc'!A0",
    "<script>alert(1)</script>",
    "\u202eevil\u202c",
    "名前\u0000null",
    "A" * 4000,
    "${jndi:ldap://x/a}",
    "%s%s%n",
)
AWKWARD_FLOATS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e308, 1e-308]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def _ds_text(values: list[float]) -> str:
    return "\\".join(repr(v) for v in values)


def _field_value(vr: str) -> st.SearchStrategy[object]:
    if vr == "US":
        return st.integers(0, 65535)
    if vr in ("DS", "IS"):
        return st.lists(AWKWARD_FLOATS, min_size=0, max_size=7).map(_ds_text)
    return st.one_of(st.sampled_from(INJECTION), st.text(max_size=64))


@st.composite
def header_edit(draw: st.DrawFn) -> tuple[str, str, object, bool]:
    keyword, vr = draw(st.sampled_from(FIELDS))
    if draw(st.booleans()):  # a wrong VR for the field
        vr = draw(st.sampled_from(WRONG_VRS))
        value = draw(
            st.one_of(
                st.binary(max_size=64),
                st.integers(0, 65535) if vr == "US" else st.text(max_size=32),
            )
            if vr in ("UN", "OB", "US")
            else _field_value("DS" if vr in ("FD", "SL") else vr)
        )
        if vr in ("FD", "SL"):
            vr = "DS"
    else:
        value = draw(_field_value(vr))
    return keyword, vr, value, draw(st.booleans())


def _ingest(files: list[bytes]) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        write_files(Path(tmp) / "dicom", files)
        return check_site_ingest(Path(tmp) / "dicom")


@pytest.fixture(autouse=True)
def _quiet_ingest():
    # Thousands of expected skip warnings would only slow the run down.
    logging.getLogger("client").setLevel(logging.ERROR)
    yield
    logging.getLogger("client").setLevel(logging.NOTSET)


@SETTINGS
@given(edits=st.lists(header_edit(), min_size=1, max_size=3), index=st.integers(0, 15))
def test_hostile_header_fields_are_skipped_or_accepted_cleanly(edits, index):
    files = list(template_series())
    for keyword, vr, value, every_slice in edits:
        for i in range(len(files)) if every_slice else [index]:
            files[i] = set_field(files[i], keyword, vr, value)
    _ingest(files)


@SETTINGS
@given(index=st.integers(0, 15), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_file_is_reported_and_the_exam_skipped(index, cut):
    files = list(template_series())
    files[index] = files[index][: int(cut * len(files[index]))]
    codes = _ingest(files)
    assert codes, "a truncated slice must be reported"


@SETTINGS
@given(
    index=st.integers(0, 15),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=8),
)
def test_flipped_bytes_never_crash_ingestion(index, flips):
    files = list(template_series())
    blob = bytearray(files[index])
    for offset, mask in flips:
        blob[offset % len(blob)] ^= mask
    files[index] = bytes(blob)
    _ingest(files)


@SETTINGS
@given(
    extra=st.lists(
        st.one_of(
            st.binary(max_size=600),
            st.binary(max_size=300).map(lambda b: b"\0" * 128 + b"DICM" + b),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_arbitrary_files_next_to_a_series_are_reported(extra):
    codes = _ingest([*template_series(), *extra])
    assert len(codes) >= len(extra)  # each extra file: unreadable or "not an image"
    assert set(codes) <= {"unreadable_file", "invalid_header", "not_image"}


@pytest.mark.parametrize("value", INJECTION)
def test_injection_strings_in_ids_stay_data(value):
    files = [set_field(f, "PatientID", "LO", value) for f in template_series()]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dicom"
        write_files(root, files)
        check_site_ingest(root)
        # Nothing is created from an ID: the tree holds exactly the written files.
        assert sorted(p.name for p in Path(tmp).rglob("*")) == sorted(
            ["dicom", *(f"f{i:03d}" for i in range(len(files)))]
        )


@pytest.mark.parametrize(
    ("rows", "cols", "slices"),
    [(65535, 65535, 16), (MAX_MATRIX, MAX_MATRIX, MAX_VOXELS // MAX_MATRIX**2 + 1)],
)
def test_absurd_volume_is_refused_before_allocating(rows, cols, slices):
    # Prepare: headers claim rows x cols x slices voxels; the pixel data is tiny.
    base = list(template_series())
    files = []
    for k in range(slices):
        blob = set_field(base[k % len(base)], "Rows", "US", rows)
        blob = set_field(blob, "Columns", "US", cols)
        blob = set_field(blob, "SOPInstanceUID", "UI", f"1.2.3.{k + 1}")
        files.append(set_field(blob, "ImagePositionPatient", "DS", f"0\\0\\{2 * k}"))
    with tempfile.TemporaryDirectory() as tmp:
        write_files(Path(tmp) / "dicom", files)
        # Execute
        tracemalloc.start()
        try:
            exams = list(ingest_site(Path(tmp) / "dicom"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # Assert
    (exam,) = exams
    assert exam.volume is None
    assert [i.code for i in exam.issues if i.severity == "error"] == [
        "volume_too_large"
    ]
    assert peak < 64 * 2**20  # the claimed volume would need >= 4 GiB


@pytest.mark.parametrize(
    ("keyword", "value", "code"),
    [
        ("PixelSpacing", "0.000001\\0.000001", "absurd_geometry"),
        ("PixelSpacing", "-1\\-1", "invalid_header"),
        ("PixelSpacing", "1e6\\1e6", "absurd_geometry"),
        ("PixelSpacing", "nan\\1", "invalid_header"),
        ("RescaleSlope", "inf", "invalid_header"),
        ("RescaleSlope", "1e300", "decode_error"),
        ("ImagePositionPatient", "0\\0\\nan", "invalid_header"),
    ],
)
def test_absurd_geometry_and_rescale_are_named(keyword, value, code):
    files = [set_field(f, keyword, "DS", value) for f in template_series()]
    with tempfile.TemporaryDirectory() as tmp:
        write_files(Path(tmp) / "dicom", files)
        site = ingest_site(Path(tmp) / "dicom")
        exams = list(site)
    issues = [*site.issues, *(i for e in exams for i in e.issues)]
    assert all(e.volume is None for e in exams)
    assert code in {i.code for i in issues}
    named = [i for i in issues if i.code == code]
    assert all(i.message and i.path for i in named)
