"""m3fm-site synth + validate + prepare on a generated hospital with injected faults."""

import json
from pathlib import Path

import pytest

import m3fm_model.tasks as tasks_module
from client import site_index
from client.cli import main
from client.prepare import manifest_path
from client.site_config import load_site_config
from client.site_dataset import manifest_is_current
from client.site_index import SPLITS


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("hospital_b")
    assert (
        main(
            [
                "synth",
                "--profile",
                "hospital_b",
                "--out",
                str(out),
                "--patients",
                "12",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    report = out / "report.json"
    assert (
        main(
            ["validate", "--site-config", str(out / "site.toml"), "--out", str(report)]
        )
        == 0
    )
    assert main(["prepare", "--site-config", str(out / "site.toml")]) == 0
    truth = json.loads((out / "truth.json").read_text())
    return out, json.loads(report.read_text()), truth


def _codes_for(report, exam_id):
    codes = {
        i["code"]
        for i in report["skipped"] + report["warnings"]
        if i.get("exam_id") == exam_id
    }
    codes |= {i["code"] for i in report["table_issues"] if exam_id in i["row_id"]}
    return codes


EXPECTED = {
    "non_ct_series": {"not_ct"},
    "localizer": {"localizer"},
    "duplicate_slice": {"duplicate_file", "duplicate_slice"},
    "missing_slice": {"gap_filled"},
    "slice_gap": {"gap"},
    "corrupt_file": {"gap_filled", "decode_error", "gap"},
    "missing_values": {"missing_values"},
    "out_of_range": {"invalid_value"},
    "no_clinical_row": {"no_clinical_row"},
    "orphan_row": {"no_dicom_exam"},
    "unreadable_exam": {"no_dicom_exam"},
}


def test_every_injected_fault_is_named_in_the_report(site):
    _, report, truth = site
    assert truth["faults"], "the profile injected no faults"
    for fault in truth["faults"]:
        codes = _codes_for(report, fault["exam_id"])
        assert codes & EXPECTED[fault["kind"]], (fault["kind"], fault["exam_id"], codes)
    unreadable = [i for i in report["skipped"] if i["code"] == "unreadable_file"]
    corrupt = [f for f in truth["faults"] if f["kind"] == "corrupt_file"]
    for fault in corrupt:
        assert any(i["path"].endswith(Path(fault["files"][0]).name) for i in unreadable)


def test_report_counts_and_labels(site):
    _, report, _ = site
    assert report["exams"]["usable"] > 0
    assert report["dicom"]["exams_with_usable_ct"] >= 8
    assert set(report["labels"]) == {
        "heart",
        "cvd_mortality",
        "cancer_risk",
        "pleural_effusion",
        "consolidation",
    }
    assert sum(report["labels"]["heart"][s]["labelled"] for s in SPLITS) > 0
    assert 0 < report["clinical_completeness"]["age"] <= 1


def test_manifest_split_has_no_patient_in_two_splits(site):
    out, _, _ = site
    cfg = load_site_config(out / "site.toml")
    exams = json.loads(manifest_path(cfg, "tiny").read_text())["exams"]
    split_of = {}
    for e in exams:
        assert split_of.setdefault(e["patient_id"], e["split"]) == e["split"]
    with_ct = [e for e in exams if e["crops"]]
    assert with_ct and all(
        set(e["crops"]) == {"lung", "heart", "chest", "parenchyma", "lung_masked"}
        for e in with_ct
    )


def test_censoring_mask_in_manifest(site):
    out, _, _ = site
    cfg = load_site_config(out / "site.toml")
    for e in json.loads(manifest_path(cfg, "tiny").read_text())["exams"]:
        risk = e["labels"].get("cancer_risk")
        if risk is None:
            continue
        t, o = risk["targets"], risk["observed"]
        assert len(t) == len(o) == 6
        # observed years form a prefix; once positive, stays positive
        assert o == sorted(o, reverse=True)
        assert t == sorted(t)


def test_no_identifier_in_cache_manifest_or_report(site):
    out, _, truth = site
    sentinels = [e["display_name"] for e in truth["exams"]] + [
        e["birth_date"] for e in truth["exams"]
    ]
    shared = [out / "cache", out / "report.json", out / "state"]
    blobs = []
    for root in shared:
        files = (
            [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        )
        blobs += [p.read_bytes() for p in files]
    assert blobs
    for s in sentinels:
        for b in blobs:
            assert s.encode() not in b, s


def test_second_prepare_reuses_the_cache(site, capsys):
    out, _, _ = site
    crops = sorted(
        p.stat().st_mtime_ns for p in (out / "cache" / "crops").rglob("*.npy")
    )
    assert main(["prepare", "--site-config", str(out / "site.toml")]) == 0
    again = sorted(
        p.stat().st_mtime_ns for p in (out / "cache" / "crops").rglob("*.npy")
    )
    assert crops == again


def test_manifest_is_current_until_the_crops_change(site, monkeypatch):
    out, _, _ = site
    cfg = load_site_config(out / "site.toml")
    assert manifest_is_current(cfg, "tiny")
    windows = dict(tasks_module.HU_WINDOWS, parenchyma=(-1000.0, -650.0))
    monkeypatch.setattr(site_index, "HU_WINDOWS", windows)
    assert not manifest_is_current(cfg, "tiny")
    assert not manifest_is_current(cfg, "base")  # never prepared


def test_clear_errors_for_bad_config_and_empty_folder(tmp_path, capsys):
    assert main(["validate", "--site-config", str(tmp_path / "missing.toml")]) == 2
    assert "file not found" in capsys.readouterr().err
    bad = tmp_path / "site.toml"
    bad.write_text(
        '[site]\nname = "x"\ntasks = ["cancer_risk"]\n[dicom]\nroot = "dicom"\n'
        '[clinical]\npath = "c.csv"\npatient-id-column = "pid"\n'
        '[labels]\npath = "l.csv"\npatient-id-column = "pid"\n[labels.columns]\n'
        'cancer_risk = { event-year = "ev", followup-years = "fu" }\n'
    )
    (tmp_path / "c.csv").write_text("pid,AGE\nP1,60\n")
    (tmp_path / "l.csv").write_text("pid,ev,fu\nP1,,3\n")
    (tmp_path / "dicom").mkdir()
    assert main(["validate", "--site-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "holds no files" in err and "[dicom] root" in err
