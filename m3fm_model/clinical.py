"""The 49 clinical data types and their serialisation to English sentences."""

from __future__ import annotations

import enum
import math
import numbers
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FieldKind",
    "ClinicalField",
    "ClinicalValueError",
    "CLINICAL_FIELDS",
    "normalize_record",
    "serialize",
    "serialize_with_spans",
    "parse_paragraph",
    "random_record",
]


class FieldKind(enum.StrEnum):
    """Value kind of a clinical field."""

    NUMBER = "number"
    CATEGORY = "category"
    FLAG = "flag"  # boolean; False is written as nothing
    AGE_AT_DIAGNOSIS = "age_at_diagnosis"  # age in years, or True if age unknown


@dataclass(frozen=True)
class ClinicalField:
    """One clinical data type and the sentence that states it.

    Attributes:
        name: Record key.
        group: "demographics", "smoking", "disease", "cancer", "family" or "exposure".
        kind: Value kind.
        unit: Unit of a number (None when unitless or not a number).
        minimum: Smallest valid number (None for categories and flags).
        maximum: Largest valid number (None for categories and flags).
        allowed: Canonical category spellings (empty unless a category).
        template: Sentence with a ``{value}`` slot (numbers printed with one
            decimal); AGE_AT_DIAGNOSIS templates have an ``{age}`` slot filled with
            " diagnosed at X years old" or nothing; FLAG templates have no slot.
        description: One-line human description.
        phrases: Optional text per allowed category written in place of the value.
    """

    name: str
    group: str
    kind: FieldKind
    unit: str | None
    minimum: float | None
    maximum: float | None
    allowed: tuple[str, ...]
    template: str
    description: str
    phrases: tuple[str, ...] = ()


class ClinicalValueError(ValueError):
    """A clinical record holds an unknown field or an invalid value.

    Attributes:
        field: The offending field name.
        value: The offending value.
        reason: What is wrong and how to fix it.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"clinical field {field!r}: invalid value {value!r}: {reason}")


def _number(
    name: str, group: str, unit: str, lo: float, hi: float, template: str, desc: str
) -> ClinicalField:
    return ClinicalField(
        name, group, FieldKind.NUMBER, unit, lo, hi, (), template, desc
    )


def _category(
    name: str, allowed: tuple[str, ...], template: str, phrases: tuple[str, ...] = ()
) -> ClinicalField:
    description = f"{name.replace('_', ' ').capitalize()} category."
    return ClinicalField(
        name, "demographics" if name != "smoking_status" else "smoking",
        FieldKind.CATEGORY, None, None, None, allowed, template, description, phrases,
    )  # fmt: skip


def _history(name: str, group: str, label: str, template: str) -> ClinicalField:
    return ClinicalField(
        name, group, FieldKind.AGE_AT_DIAGNOSIS, "years", 0.0, 110.0, (), template,
        f"History of {label}: age at diagnosis in years, or True if age unknown.",
    )  # fmt: skip


def _flag(name: str, group: str, template: str, description: str) -> ClinicalField:
    return ClinicalField(
        name, group, FieldKind.FLAG, None, None, None, (), template, description
    )


_RACES = (
    "white",
    "black or african-american",
    "asian",
    "american indian or alaskan native",
    "native hawaiian or other pacific islander",
    "more than one race",
)
_ETHNICITIES = ("hispanic or latino", "neither hispanic nor latino")
_EDUCATION = (
    "8th grade or less",
    "9th-11th grade",
    "high school graduate/ged",
    "post high school training",
    "associate degree/ some college",
    "bachelors degree",
    "graduate school",
)
_DISEASES = (
    "asbestosis", "asthma", "bronchiectasis", "childhood_asthma",
    "chronic_bronchitis", "copd", "diabetes", "emphysema_history",
    "pulmonary_fibrosis", "heart_disease", "hypertension", "pneumonia",
    "sarcoidosis", "silicosis", "stroke", "tuberculosis",
)  # fmt: skip
# Words written in the sentence where they differ from the field name.
_DISEASE_LABELS = {"copd": "COPD", "emphysema_history": "emphysema"}
_CANCERS = (
    "bladder", "breast", "cervical", "colorectal", "esophageal",
    "kidney", "larynx", "lung", "oral", "pancreatic",
)  # fmt: skip
_RELATIVES = ("father", "mother", "brother", "sister", "child")
_EXPOSURES = (
    ("asbestos", "with asbestos"),
    ("coal_mining", "in coal mining"),
    ("farming", "in farming"),
    ("sandblasting", "in sandblasting"),
    ("welding", "in welding"),
)

_FIELD_LIST = (
    _number("age", "demographics", "years", 18, 110,
            "The patient is {value} years old.", "Age at the scan in years."),
    _category("gender", ("Male", "Female"), "Gender is {value}."),
    _category("race", _RACES, "Race is {value}."),
    _category("ethnicity", _ETHNICITIES, "Ethnicity is {value}."),
    _number("height", "demographics", "inches", 48, 90,
            "Height is {value} inches.", "Height in inches."),
    _number("weight", "demographics", "pounds", 60, 700,
            "Weight is {value} pounds.", "Weight in pounds."),
    _category("education", _EDUCATION, "Education is {value}."),
    _category("smoking_status", ("current", "former", "never"), "{value}.",
              ("Current smoker", "Former smoker", "Never smoked")),
    _number("pack_years", "smoking", "pack years", 0, 300,
            "Smoking duration is {value} pack years.", "Cumulative pack-years."),
    _number("cigs_per_day", "smoking", "cigarettes per day", 0, 200,
            "Smoking intensity is {value} cigarettes per day.",
            "Average cigarettes smoked per day."),
    _number("smoking_years", "smoking", "years", 0, 90,
            "The patient smoked for {value} years.", "Total years of smoking."),
    _number("age_started_smoking", "smoking", "years", 5, 100,
            "The patient started smoking at {value} years old.",
            "Age when smoking started."),
    _number("age_quit_smoking", "smoking", "years", 5, 110,
            "The patient quit smoking at {value} years old.",
            "Age when smoking stopped (former smokers)."),
    *(_history(name, "disease", label, f"The patient had {label}{{age}}.")
      for name in _DISEASES
      for label in [_DISEASE_LABELS.get(name, name.replace("_", " "))]),
    *(_history(f"cancer_{site}", "cancer", f"{site} cancer",
               f"The patient had prior {site} cancer{{age}}.") for site in _CANCERS),
    *(_flag(f"family_{who}", "family", f"Patient's {who} have lung cancer.",
            f"The patient's {who} had lung cancer.") for who in _RELATIVES),
    *(_flag(f"exposure_{what}", "exposure", f"The patient worked {phrase}.",
            f"Occupational exposure: {what.replace('_', ' ')}.")
      for what, phrase in _EXPOSURES),
)  # fmt: skip

CLINICAL_FIELDS: Mapping[str, ClinicalField] = types.MappingProxyType(
    {f.name: f for f in _FIELD_LIST}
)
assert len(CLINICAL_FIELDS) == 49, "the paper's 49 clinical data types"

_TRUE_WORDS = frozenset({"true", "yes", "y", "1"})
_FALSE_WORDS = frozenset({"false", "no", "n", "0"})


def _category_key(text: str) -> str:
    """Case/space-insensitive key, so "associate degree/some college" matches."""
    return "".join(text.lower().split())


_CATEGORY_LOOKUP: Mapping[str, Mapping[str, str]] = types.MappingProxyType(
    {
        f.name: {_category_key(a): a for a in f.allowed}
        for f in _FIELD_LIST
        if f.kind is FieldKind.CATEGORY
    }
)


def _is_absent(value: object) -> bool:
    """True for None, NaN, blank strings and pandas NA/NaT (checked without pandas)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
        return math.isnan(float(value))
    return type(value).__name__ in ("NAType", "NaTType")


def _to_float(field: ClinicalField, value: object) -> float:
    """Coerce a number or numeric string to float and range-check it."""
    limits = f"between {field.minimum:g} and {field.maximum:g}"
    if field.unit:
        limits += f" {field.unit}"
    fix = f"give a number {limits}, or leave the item empty if unknown"
    if isinstance(value, bool | np.bool_):
        raise ClinicalValueError(field.name, value, f"a boolean is not a number; {fix}")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ClinicalValueError(
                field.name, value, f"not a number; {fix}"
            ) from None
    elif isinstance(value, numbers.Real):
        number = float(value)
    else:
        raise ClinicalValueError(
            field.name, value, f"unsupported type {type(value).__name__}; {fix}"
        )
    if not math.isfinite(number) or not field.minimum <= number <= field.maximum:
        raise ClinicalValueError(field.name, value, f"out of range; {fix}")
    return number


def _to_flag(field: ClinicalField, value: object) -> bool:
    """Coerce True/False/1/0/"yes"/"no" (and "true"/"false", "y"/"n") to bool."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, numbers.Real) and float(value) in (0.0, 1.0):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise ClinicalValueError(
        field.name, value, "expected a yes/no value: True/False, 1/0 or 'yes'/'no'"
    )


def _to_category(field: ClinicalField, value: object) -> str:
    """Match a category case-insensitively to its canonical spelling."""
    if isinstance(value, str):
        canonical = _CATEGORY_LOOKUP[field.name].get(_category_key(value))
        if canonical is not None:
            return canonical
    allowed = ", ".join(repr(a) for a in field.allowed)
    raise ClinicalValueError(
        field.name, value, f"expected one of {allowed} (case-insensitive); map the "
        "site's code to one of these spellings or leave the item empty",
    )  # fmt: skip


def _coerce(field: ClinicalField, value: object) -> object | None:
    """Return the canonical value, or None when the item should be omitted."""
    if field.kind is FieldKind.NUMBER:
        return _to_float(field, value)
    if field.kind is FieldKind.CATEGORY:
        return _to_category(field, value)
    if field.kind is FieldKind.FLAG:
        return True if _to_flag(field, value) else None
    # AGE_AT_DIAGNOSIS: booleans and yes/no words are flags, anything else an age.
    if isinstance(value, bool | np.bool_) or (
        isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS
        and not value.strip().isdigit()
    ):  # fmt: skip
        return True if _to_flag(field, value) else None
    return _to_float(field, value)


def normalize_record(record: Mapping[str, object]) -> dict[str, object]:
    """Validate a clinical record and bring it to canonical form.

    Absent values (None, NaN, blank strings) and False flags are dropped; numeric
    strings become floats; categories get their canonical spelling.

    Args:
        record: Field name -> raw value; names must be keys of ``CLINICAL_FIELDS``.

    Returns:
        Field name -> canonical value, in ``CLINICAL_FIELDS`` order.

    Raises:
        ClinicalValueError: On an unknown field name or an invalid value.
    """
    if not isinstance(record, Mapping):
        raise ClinicalValueError(
            "record", record, "a clinical record must be a mapping of field -> value"
        )
    for name in record:
        if name not in CLINICAL_FIELDS:
            raise ClinicalValueError(
                str(name), record[name], "unknown clinical field; valid names are: "
                + ", ".join(CLINICAL_FIELDS),
            )  # fmt: skip
    out: dict[str, object] = {}
    for name, field in CLINICAL_FIELDS.items():
        if name in record and not _is_absent(record[name]):
            value = _coerce(field, record[name])
            if value is not None:
                out[name] = value
    return out


def _sentence(field: ClinicalField, value: object) -> str:
    """Write one field's sentence for a canonical value."""
    if field.kind is FieldKind.NUMBER:
        return field.template.format(value=f"{value:.1f}")
    if field.kind is FieldKind.CATEGORY:
        text = field.phrases[field.allowed.index(value)] if field.phrases else value
        return field.template.format(value=text)
    if field.kind is FieldKind.FLAG:
        return field.template
    age = "" if value is True else f" diagnosed at {value:.1f} years old"
    return field.template.format(age=age)


def serialize_with_spans(
    record: Mapping[str, object],
) -> tuple[str, list[tuple[str, int, int]]]:
    """Write a record as a paragraph and locate each field's sentence in it.

    Args:
        record: A clinical record (normalised first, see ``normalize_record``).

    Returns:
        The paragraph (sentences joined by one space; "" for an empty record) and
        one (field name, start, end) per present field, where ``paragraph[start:end]``
        is that field's sentence including its final period.
    """
    parts: list[str] = []
    spans: list[tuple[str, int, int]] = []
    position = 0
    for name, value in normalize_record(record).items():
        sentence = _sentence(CLINICAL_FIELDS[name], value)
        if parts:
            position += 1  # the joining space
        spans.append((name, position, position + len(sentence)))
        parts.append(sentence)
        position += len(sentence)
    return " ".join(parts), spans


def serialize(record: Mapping[str, object]) -> str:
    """Write a clinical record as English sentences (the text encoder's input).

    Args:
        record: A clinical record (normalised first, see ``normalize_record``).

    Returns:
        The paragraph; "" when no item is present.
    """
    return serialize_with_spans(record)[0]


_NUMBER_RE = r"(\d+(?:\.\d+)?)"


def _sentence_regex(field: ClinicalField) -> re.Pattern[str]:
    """Compile a full-sentence regex with one capture group (or none for flags)."""
    if field.kind is FieldKind.FLAG:
        return re.compile(re.escape(field.template))
    slot = "{age}" if field.kind is FieldKind.AGE_AT_DIAGNOSIS else "{value}"
    head, tail = (re.escape(part) for part in field.template.split(slot))
    if field.kind is FieldKind.NUMBER:
        middle = _NUMBER_RE
    elif field.kind is FieldKind.CATEGORY:
        words = sorted(field.phrases or field.allowed, key=len, reverse=True)
        middle = "(" + "|".join(re.escape(w) for w in words) + ")"
    else:
        middle = f"(?: diagnosed at {_NUMBER_RE} years old)?"
    return re.compile(head + middle + tail)


_SENTENCE_RES = types.MappingProxyType(
    {name: _sentence_regex(field) for name, field in CLINICAL_FIELDS.items()}
)


def _parse_value(field: ClinicalField, match: re.Match[str]) -> object:
    """Turn a sentence match back into the field's value."""
    if field.kind is FieldKind.FLAG:
        return True
    captured = match.group(1)
    if field.kind is FieldKind.CATEGORY:
        if field.phrases:
            return field.allowed[field.phrases.index(captured)]
        return captured
    if field.kind is FieldKind.AGE_AT_DIAGNOSIS and captured is None:
        return True
    return float(captured)


def _match_sentence(sentence: str) -> tuple[str, re.Match[str]]:
    """Find the field whose sentence template matches ``sentence`` in full."""
    for name, pattern in _SENTENCE_RES.items():
        match = pattern.fullmatch(sentence)
        if match is not None:
            return name, match
    raise ClinicalValueError(
        "paragraph", sentence, "not a sentence written by clinical.serialize"
    )


def parse_paragraph(text: str) -> dict[str, object]:
    """Read a paragraph written by ``serialize`` back into a record.

    Args:
        text: The paragraph.

    Returns:
        Field name -> value (numbers as floats, flags as True).

    Raises:
        ClinicalValueError: If a sentence is not one the serializer writes, or a
            field appears twice.
    """
    record: dict[str, object] = {}
    for sentence in re.split(r"(?<=\.)\s+", text.strip()) if text.strip() else []:
        name, match = _match_sentence(sentence)
        if name in record:
            raise ClinicalValueError(name, sentence, "the field appears twice")
        record[name] = _parse_value(CLINICAL_FIELDS[name], match)
    return record


# Rough prevalences for synthetic records (screening-age smokers); not epidemiology.
_DISEASE_RATE = {"hypertension": 0.35, "pneumonia": 0.2, "heart_disease": 0.12,
                 "copd": 0.1, "diabetes": 0.1, "emphysema_history": 0.08,
                 "chronic_bronchitis": 0.08, "asthma": 0.06}  # fmt: skip
_FAMILY_RATE = {"father": 0.1, "mother": 0.07, "brother": 0.05, "sister": 0.04}
_EXPOSURE_RATE = {"asbestos": 0.05, "farming": 0.1, "welding": 0.06}


def _smoking_items(rng: np.random.Generator, age: float) -> dict[str, object]:
    """Draw a consistent smoking history for a patient of the given age."""
    status = str(rng.choice(["current", "former", "never"], p=[0.45, 0.45, 0.1]))
    if status == "never":
        return {"smoking_status": status}
    started = float(np.clip(round(rng.normal(17, 4)), 8, age - 5))
    quit_age = float(rng.integers(int(started) + 5, int(age) + 1))
    stopped = quit_age if status == "former" else age
    years = stopped - started
    cigs = float(rng.choice([10, 15, 20, 20, 25, 30, 40, 60]))
    items: dict[str, object] = {
        "smoking_status": status,
        "pack_years": float(min(round(cigs / 20 * years, 1), 300.0)),
        "cigs_per_day": cigs,
        "smoking_years": years,
        "age_started_smoking": started,
    }
    if status == "former":
        items["age_quit_smoking"] = quit_age
    return items


def _history_items(rng: np.random.Generator, age: float) -> dict[str, object]:
    """Draw disease and cancer history, family history and exposures."""
    items: dict[str, object] = {}
    for name in _DISEASES:
        if rng.random() < _DISEASE_RATE.get(name, 0.02):
            top = 15 if name == "childhood_asthma" else int(age)
            low = 2 if name == "childhood_asthma" else 20
            known = rng.random() < 0.85
            items[name] = float(rng.integers(low, top + 1)) if known else True
    for site in _CANCERS:
        if rng.random() < 0.015:
            known = rng.random() < 0.85
            items[f"cancer_{site}"] = (
                float(rng.integers(30, int(age) + 1)) if known else True
            )
    for who in _RELATIVES:
        items[f"family_{who}"] = bool(rng.random() < _FAMILY_RATE.get(who, 0.02))
    for what, _ in _EXPOSURES:
        items[f"exposure_{what}"] = bool(rng.random() < _EXPOSURE_RATE.get(what, 0.02))
    return items


def random_record(
    rng: np.random.Generator, *, completeness: float = 0.7
) -> dict[str, object]:
    """Draw a plausible, valid synthetic clinical record (tests, corpora, demos).

    Args:
        rng: Source of randomness.
        completeness: Probability that each generated item is kept (0..1).

    Returns:
        A canonical record (see ``normalize_record``), numbers with one decimal.
    """
    if not 0.0 <= completeness <= 1.0:
        raise ValueError(f"completeness must be in [0, 1], got {completeness!r}")
    male = bool(rng.random() < 0.58)
    age = float(rng.integers(50, 81))
    height = np.clip(round(rng.normal(69.5 if male else 64.0, 3.0)), 48, 90)
    weight = np.clip(rng.normal(195 if male else 165, 35), 90, 450)
    race_p = [0.86, 0.07, 0.03, 0.01, 0.01, 0.02]
    record: dict[str, object] = {
        "age": age,
        "gender": "Male" if male else "Female",
        "race": str(rng.choice(_RACES, p=race_p)),
        "ethnicity": str(rng.choice(_ETHNICITIES, p=[0.05, 0.95])),
        "height": float(height),
        "weight": float(round(weight, 1)),
        "education": str(rng.choice(_EDUCATION)),
        **_smoking_items(rng, age),
        **_history_items(rng, age),
    }
    kept = {k: v for k, v in record.items() if rng.random() < completeness}
    return normalize_record(kept)
