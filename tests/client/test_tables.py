import pandas as pd
import pytest

from client.clinical_table import load_clinical_table
from client.labels_table import HazardTarget, load_labels_table
from client.site_config import CancerRiskColumns, TableSource
from client.tables import TableError


def _src(path, **kw):
    return TableSource(
        path=path, patient_id_column="pid", exam_id_column=kw.pop("eid", None), **kw
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".xlsx"])
def test_units_codes_and_formats(tmp_path, suffix):
    frame = pd.DataFrame(
        {
            "pid": ["P1", "P2"],
            "HCM": [170.18, 160.0],
            "KG": [80.0, 60.0],
            "SEX": ["1", "2"],
            "NAME": ["Ann Smith", "Bo Li"],
        }
    )
    path = tmp_path / f"c{suffix}"
    {".csv": frame.to_csv, ".parquet": frame.to_parquet, ".xlsx": frame.to_excel}[
        suffix
    ](path, index=False)
    src = _src(
        path,
        columns={"height": "HCM", "weight": "KG", "gender": "SEX"},
        units={"height": "cm", "weight": "kg"},
        values={"gender": {"1": "Male", "2": "Female"}},
    )
    rows, issues = load_clinical_table(src)
    r = rows[("P1", None)]
    assert r.record["height"] == pytest.approx(67.0, abs=0.01)
    assert r.record["weight"] == pytest.approx(176.37, abs=0.01)
    assert r.record["gender"] == "Male"
    assert "Height is 67.0 inches." in r.text and "Ann" not in r.text
    assert issues == []


def test_bad_values_are_dropped_and_reported(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("pid,AGE,SEX\nP1,250,M\nP2,,F\nP1,60,M\n")
    rows, issues = load_clinical_table(
        _src(
            path,
            columns={"age": "AGE", "gender": "SEX"},
            values={"gender": {"M": "Male", "F": "Female"}},
        )
    )
    assert (
        "age" not in rows[("P1", None)].record
        and rows[("P1", None)].record["gender"] == "Male"
    )
    codes = {(i.code, i.row, i.field) for i in issues}
    assert ("invalid_value", 1, "age") in codes
    assert ("missing_values", 2, "age") in codes
    assert ("duplicate_row", 3, "pid") in codes
    bad = next(i for i in issues if i.code == "invalid_value")
    assert "250" in bad.message and str(path) == bad.path


def test_missing_column_and_unreadable_table(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("pid,AGE\nP1,60\n")
    with pytest.raises(TableError, match=r"\['WEIGHT'\].*has \['pid', 'AGE'\]"):
        load_clinical_table(_src(path, columns={"weight": "WEIGHT"}))
    junk = tmp_path / "c.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(TableError, match="cannot be read"):
        load_clinical_table(_src(junk, columns={}))
    with pytest.raises(TableError, match="not found"):
        load_clinical_table(_src(tmp_path / "none.csv", columns={}))


def test_labels_censoring_and_classes(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text(
        "pid,eid,ev,fu,cvd,size\nP1,E1,2.3,5,yes,6-15 mm\nP2,E2,,3.5,0,none\nP3,E3,,x,maybe,huge\n"
    )
    src = _src(
        path,
        eid="eid",
        columns={
            "cancer_risk": CancerRiskColumns("ev", "fu"),
            "heart": "cvd",
            "nodule_size": "size",
        },
    )
    labels, issues = load_labels_table(src)
    p1 = labels[("P1", "E1")]
    assert p1["cancer_risk"] == HazardTarget((0, 0, 1, 1, 1, 1), (True,) * 6)
    assert p1["heart"] == 1 and p1["nodule_size"] == 2
    p2 = labels[("P2", "E2")]["cancer_risk"]
    assert p2.observed == (True, True, True, False, False, False)
    assert labels[("P3", "E3")] == {}
    assert {i.field for i in issues} == {"cancer_risk", "heart", "nodule_size"}
    assert all(i.row_id == "P3/E3" for i in issues)
