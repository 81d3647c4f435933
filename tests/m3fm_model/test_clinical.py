"""Tests for the clinical data dictionary, normaliser and serializer."""

from collections import Counter

import numpy as np
import pytest

from m3fm_model.clinical import (
    CLINICAL_FIELDS,
    ClinicalValueError,
    FieldKind,
    normalize_record,
    parse_paragraph,
    random_record,
    serialize,
    serialize_with_spans,
)

PAPER_RECORD = {
    "age": 68,
    "gender": "Female",
    "race": "white",
    "ethnicity": "neither hispanic nor latino",
    "height": 62,
    "weight": 134,
    "education": "associate degree/ some college",
    "smoking_status": "current",
    "pack_years": 37.5,
    "cigs_per_day": 15,
    "diabetes": 68,
    "family_mother": True,
}
PAPER_TEXT = (
    "The patient is 68.0 years old. Gender is Female. Race is white. Ethnicity is "
    "neither hispanic nor latino. Height is 62.0 inches. Weight is 134.0 pounds. "
    "Education is associate degree/ some college. Current smoker. Smoking duration "
    "is 37.5 pack years. Smoking intensity is 15.0 cigarettes per day. The patient "
    "had diabetes diagnosed at 68.0 years old. Patient's mother have lung cancer."
)


def test_dictionary_has_49_fields_in_groups():
    names = list(CLINICAL_FIELDS)
    assert len(names) == 49
    assert names[:7] == [
        "age", "gender", "race", "ethnicity", "height", "weight", "education",
    ]  # fmt: skip
    assert names[7] == "smoking_status" and names[-1] == "exposure_welding"
    groups = Counter(f.group for f in CLINICAL_FIELDS.values())
    assert groups == {
        "demographics": 7, "smoking": 6, "disease": 16, "cancer": 10,
        "family": 5, "exposure": 5,
    }  # fmt: skip
    assert all(name == f.name for name, f in CLINICAL_FIELDS.items())


def test_serialize_reproduces_paper_example():
    assert serialize(PAPER_RECORD) == PAPER_TEXT


@pytest.mark.parametrize(
    ("record", "text"),
    [
        ({"diabetes": True}, "The patient had diabetes."),
        ({"cancer_bladder": 55}, "The patient had prior bladder cancer diagnosed at "
                                 "55.0 years old."),
        ({"exposure_asbestos": "yes"}, "The patient worked with asbestos."),
        ({"smoking_status": "FORMER"}, "Former smoker."),
        ({"smoking_status": "never"}, "Never smoked."),
        ({"copd": "true", "asthma": 40.25}, "The patient had asthma diagnosed at "
                                             "40.2 years old. The patient had COPD."),
        ({}, ""),
        ({"family_father": False, "age": None}, ""),
    ],
)  # fmt: skip
def test_sentence_style(record, text):
    assert serialize(record) == text


def test_normalize_coerces_and_drops_absent():
    raw = {
        "weight": "134",
        "age": np.int64(70),
        "gender": " female ",
        "education": "Associate Degree/Some College",
        "height": float("nan"),
        "race": "",
        "family_father": 1,
        "family_mother": "No",
        "exposure_farming": np.bool_(True),
        "asthma": "yes",
        "copd": False,
        "stroke": "61",
        "ethnicity": None,
    }
    out = normalize_record(raw)
    assert out == {
        "age": 70.0,
        "gender": "Female",
        "weight": 134.0,
        "education": "associate degree/ some college",
        "asthma": True,
        "stroke": 61.0,
        "family_father": True,
        "exposure_farming": True,
    }
    assert list(out) == [n for n in CLINICAL_FIELDS if n in out]  # dictionary order


@pytest.mark.parametrize(
    ("record", "field", "hint"),
    [
        ({"age": 250}, "age", "between 18 and 110 years"),
        ({"gender": "X"}, "gender", "'Male', 'Female'"),
        ({"favourite_colour": "blue"}, "favourite_colour", "valid names are: age"),
        ({"pack_years": "lots"}, "pack_years", "not a number"),
        ({"weight": True}, "weight", "boolean is not a number"),
        ({"family_child": "maybe"}, "family_child", "yes/no"),
        ({"diabetes": -3}, "diabetes", "between 0 and 110"),
        ({"height": float("inf")}, "height", "out of range"),
        ({"race": 3}, "race", "map the site's code"),
    ],
)
def test_bad_values_name_the_field(record, field, hint):
    with pytest.raises(ClinicalValueError) as info:
        normalize_record(record)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == field
    assert f"'{field}'" in str(err) and hint in str(err)
    assert err.value == next(iter(record.values())) or field == "height"


def test_round_trip_random_records():
    rng = np.random.default_rng(1234)
    for _ in range(200):
        record = random_record(rng, completeness=float(rng.uniform(0.0, 1.0)))
        text = serialize(record)
        assert normalize_record(parse_paragraph(text)) == normalize_record(record)
        assert serialize(parse_paragraph(text)) == text


def test_round_trip_every_field_and_category():
    record = {}
    for name, field in CLINICAL_FIELDS.items():
        if field.kind is FieldKind.NUMBER:
            record[name] = field.maximum
        elif field.kind is FieldKind.CATEGORY:
            record[name] = field.allowed[-1]
        elif field.kind is FieldKind.FLAG:
            record[name] = True
        else:
            record[name] = 12.5 if len(record) % 2 else True
    assert len(parse_paragraph(serialize(record))) == 49
    assert parse_paragraph(serialize(record)) == normalize_record(record)
    for name, field in CLINICAL_FIELDS.items():
        for value in field.allowed:
            assert parse_paragraph(serialize({name: value})) == {name: value}


def test_spans_cover_each_sentence():
    text, spans = serialize_with_spans(PAPER_RECORD)
    assert text == PAPER_TEXT
    assert [name for name, _, _ in spans] == list(normalize_record(PAPER_RECORD))
    pieces = {name: text[start:end] for name, start, end in spans}
    assert pieces["age"] == "The patient is 68.0 years old."
    assert pieces["smoking_status"] == "Current smoker."
    assert pieces["family_mother"] == "Patient's mother have lung cancer."
    assert pieces["diabetes"] == (
        "The patient had diabetes diagnosed at 68.0 years old."
    )
    for name, start, end in spans:
        assert parse_paragraph(text[start:end]) == {name: normalize_record(
            PAPER_RECORD)[name]}  # fmt: skip
    assert serialize_with_spans({}) == ("", [])


def test_parse_rejects_foreign_or_repeated_sentences():
    with pytest.raises(ClinicalValueError, match="not a sentence"):
        parse_paragraph("The patient is 68.0 years old. The patient likes tea.")
    with pytest.raises(ClinicalValueError, match="twice"):
        parse_paragraph("Gender is Male. Gender is Female.")
    assert parse_paragraph("  ") == {}


def test_random_record_is_valid_and_respects_completeness():
    rng = np.random.default_rng(0)
    assert random_record(rng, completeness=0.0) == {}
    full = [random_record(rng, completeness=1.0) for _ in range(50)]
    assert all({"age", "gender", "smoking_status"} <= set(r) for r in full)
    for record in full:
        assert normalize_record(record) == record
        if record["smoking_status"] == "former":
            assert record["age_quit_smoking"] <= record["age"]
    with pytest.raises(ValueError, match="completeness"):
        random_record(rng, completeness=1.5)


def test_random_record_is_deterministic():
    a = random_record(np.random.default_rng(5))
    b = random_record(np.random.default_rng(5))
    assert a == b
