import tomllib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from client.synth import PROFILES, site_config_toml, synthesize_site
from client.synth.covariates import EDUCATION, ETHNICITIES, RACES
from client.synth.faults import ALL_FAULTS
from client.synth.labels import TASKS
from tests.client.synth_fixtures import (
    generated_site,
    load_truth,
    read_canonical,
    read_table,
    series_files,
    site,  # noqa: F401  (fixture)
)

REPO = Path(__file__).resolve().parents[2]
_CATEGORIES = {
    "gender": ("Male", "Female"),
    "race": RACES,
    "ethnicity": ETHNICITIES,
    "education": EDUCATION,
    "smoking_status": ("current", "former", "never"),
}
_SECTIONS = {
    "site": {"name", "tasks"},
    "dicom": {"root", "patient-id-tag", "exam-id-tag", "series-description-pattern"},
    "clinical": {"path", "patient-id-column", "exam-id-column", "columns", "units"},
    "labels": {"path", "patient-id-column", "exam-id-column", "columns"},
    "privacy": {"enabled", "epsilon", "delta", "max-grad-norm"},
    "compute": {"device", "threads"},
    "cache": {"dir"},
    "split": {"seed", "fractions"},
}


def test_site_toml_has_the_documented_keys(site):  # noqa: F811
    profile, root = site
    config = tomllib.loads((root / "site.toml").read_text())
    for section, keys in _SECTIONS.items():
        assert keys <= set(config[section]), section
    assert config["site"]["name"] == profile
    assert set(config["site"]["tasks"]) <= set(TASKS)
    assert set(config["labels"]["columns"]) == set(config["site"]["tasks"])
    assert (root / config["dicom"]["root"]).is_dir()
    assert (root / config["clinical"]["path"]).is_file()
    assert (root / config["labels"]["path"]).is_file()
    assert 15 <= len(config["clinical"]["columns"]) <= 30
    for field, codes in config["clinical"].get("values", {}).items():
        allowed = _CATEGORIES.get(field, ("yes", "no"))
        assert set(codes.values()) <= set(allowed), field
    assert (root / "site.toml").read_text() == site_config_toml(profile)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_committed_demo_configs_match_the_generator(profile):
    committed = REPO / "site_configs" / f"{profile}.toml"
    assert committed.read_text() == site_config_toml(profile, f"../demo_data/{profile}")
    config = tomllib.loads(committed.read_text())
    assert config["dicom"]["root"] == f"../demo_data/{profile}/dicom"


def test_tables_are_readable_and_mapped(site):  # noqa: F811
    # Prepare
    profile, root = site
    config = tomllib.loads((root / "site.toml").read_text())
    clinical = read_table(root / config["clinical"]["path"])
    labels = read_table(root / config["labels"]["path"])
    truth = load_truth(root)
    spec = PROFILES[profile].tables
    # Assert: mapped and identifier columns present, identifiers unmapped
    assert set(config["clinical"]["columns"].values()) <= set(clinical.columns)
    assert set(spec.identifiers) <= set(clinical.columns)
    assert not set(spec.identifiers) & set(config["clinical"]["columns"].values())
    exam_col, cols = spec.exam_id_column, config["clinical"]["columns"]
    rows = clinical.set_index(exam_col)
    for exam in truth["exams"]:
        if exam["faults"] or exam["exam_id"] not in rows.index:
            continue
        row = rows.loc[exam["exam_id"]]
        assert row[spec.identifiers[0]] == exam["display_name"]
        assert exam["display_name"] in row[spec.identifiers[2]]
        assert float(row[cols["age"]]) == exam["age"]
        codes = config["clinical"].get("values", {}).get("gender")
        gender = row[cols["gender"]]
        assert (codes[str(gender)] if codes else gender.capitalize()) == exam[
            "clinical"
        ]["gender"]
        if pd.notna(row[cols["height"]]):
            factor = 2.54 if config["clinical"]["units"]["height"] == "cm" else 1.0
            assert float(row[cols["height"]]) == pytest.approx(
                exam["clinical"]["height"] * factor, abs=0.06
            )
    label_cols = config["labels"]["columns"]
    flat = [
        c
        for v in label_cols.values()
        for c in (v.values() if isinstance(v, dict) else [v])
    ]
    assert set(flat) <= set(labels.columns)


def test_labels_match_truth(site):  # noqa: F811
    profile, root = site
    config = tomllib.loads((root / "site.toml").read_text())
    labels = read_table(root / config["labels"]["path"]).set_index(
        config["labels"]["exam-id-column"]
    )
    for exam in load_truth(root)["exams"]:
        row = labels.loc[exam["exam_id"]]
        for task, column in config["labels"]["columns"].items():
            want = exam["labels"][task]
            if isinstance(column, dict):
                event = row[column["event-year"]]
                assert (pd.isna(event) and want[0] is None) or event == pytest.approx(
                    want[0]
                )
                assert row[column["followup-years"]] == pytest.approx(want[1])
            elif pd.notna(row[column]):
                got = row[column]
                assert (str(got) if isinstance(want, str) else int(got)) == want


def _verify_dicom_fault(root: Path, fault: dict, exam: dict) -> None:
    kind = fault["kind"]
    primary = exam["series"][0]
    if kind == "unreadable_exam":
        files = [p for p in (root / fault["folder"]).rglob("*") if p.is_file()]
        assert len(files) == fault["n_files"] > 0
        for path in files:
            with pytest.raises(InvalidDicomError):
                pydicom.dcmread(path)
        return
    if kind in ("localizer", "non_ct_series"):
        ds = pydicom.dcmread(series_files(root, fault["series"])[0])
        assert ds.StudyInstanceUID == exam["study_uid"]
        assert (
            ("LOCALIZER" in ds.ImageType)
            if kind == "localizer"
            else ds.Modality == "MR"
        )
        return
    present = series_files(root, primary)
    if kind == "corrupt_file":
        with warnings.catch_warnings(), pytest.raises(Exception):  # noqa: B017
            warnings.simplefilter("ignore")  # pydicom warns about the truncation
            _ = pydicom.dcmread(root / fault["files"][0]).pixel_array
    elif kind == "duplicate_slice":
        a, b = (root / f for f in fault["files"])
        assert a.read_bytes() == b.read_bytes() and a != b
    else:
        assert len(present) == primary["n_files"] - len(fault["slices"])
        assert not any((root / f).exists() for f in fault["files"])
        _, _, datasets = read_canonical(present)
        steps = np.diff([float(ds.ImagePositionPatient[2]) for ds in datasets])
        spacing = exam["grid"]["spacing_mm"][0]
        assert steps.max() == pytest.approx(
            spacing * (len(fault["slices"]) + 1), abs=1e-3
        )


def test_every_fault_is_injected_and_recorded(tmp_path_factory):
    # Prepare
    root = generated_site("hospital_b", tmp_path_factory)
    truth = load_truth(root)
    config = tomllib.loads((root / "site.toml").read_text())
    clinical = read_table(root / config["clinical"]["path"])
    labels = read_table(root / config["labels"]["path"])
    exams = {e["exam_id"]: e for e in truth["exams"]}
    id_col = config["clinical"]["exam-id-column"]
    # Assert: one of each kind, in distinct exams
    assert truth["faults_injected"] is True
    assert sorted(f["kind"] for f in truth["faults"]) == sorted(ALL_FAULTS)
    assert len({f["exam_id"] for f in truth["faults"]}) == len(ALL_FAULTS)
    for fault in truth["faults"]:
        kind, exam_id = fault["kind"], fault["exam_id"]
        rows = clinical[clinical[id_col] == exam_id]
        if kind == "orphan_row":
            assert exam_id not in exams and len(rows) == 1
            assert (labels[id_col] == exam_id).sum() == 1
        elif kind == "no_clinical_row":
            assert len(rows) == 0 and (labels[id_col] == exam_id).sum() == 1
        elif kind == "missing_values":
            assert rows[fault["columns"]].isna().all(axis=None)
        elif kind == "out_of_range":
            assert float(rows[fault["columns"][0]].iloc[0]) == fault["value"]
        else:
            assert kind in exams[exam_id]["faults"]
            _verify_dicom_fault(root, fault, exams[exam_id])


@pytest.mark.parametrize("profile", ["hospital_a", "hospital_c"])
def test_faults_off_by_default_except_hospital_b(profile, tmp_path_factory):
    truth = load_truth(generated_site(profile, tmp_path_factory))
    assert truth["faults_injected"] is False and truth["faults"] == []


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_same_seed_same_bytes(profile, tmp_path):
    first = synthesize_site(profile, tmp_path / "a", patients=1, seed=4, faults=False)
    second = synthesize_site(profile, tmp_path / "b", patients=1, seed=4, faults=False)
    other = synthesize_site(profile, tmp_path / "c", patients=1, seed=5, faults=False)
    assert _files(first.parent) == _files(second.parent)
    assert _files(first.parent) != _files(other.parent)


def test_bad_requests_raise(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        synthesize_site("hospital_a", tmp_path / "full", patients=1, seed=0)
    with pytest.raises(ValueError, match="at least"):
        synthesize_site("hospital_a", tmp_path / "few", patients=3, seed=0, faults=True)
    with pytest.raises(ValueError, match="unknown"):
        synthesize_site("hospital_z", tmp_path / "z", patients=1, seed=0)
