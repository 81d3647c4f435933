"""The site config (``site.toml``, docs/site-config.md) of a generated hospital.

One function writes both the ``site.toml`` next to generated data and the committed
``site_configs/<profile>.toml`` (whose paths point into ``../demo_data/<profile>``),
so the two can never drift apart.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from pathlib import Path

from client.synth.profiles import PROFILES, Profile, get

__all__ = ["site_config_toml", "write_demo_site_configs", "DELTA"]

DELTA = 1e-5


def _string(text: str) -> str:
    """TOML basic string (JSON escaping is valid TOML for these ASCII strings)."""
    return json.dumps(text)


def _key(text: str) -> str:
    plain = text.replace("_", "a").replace("-", "a")
    bare = plain.isalnum() and text.isascii()
    return text if bare else _string(text)


def _table(
    lines: list[str], header: str, items: Mapping[str, object], quote: bool = False
) -> None:
    lines.append("")
    lines.append(f"[{header}]")
    for key, value in items.items():
        lines.append(f"{_string(key) if quote else _key(key)} = {_value(value)}")


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _join(data_dir: str, name: str) -> str:
    return posixpath.join(data_dir, name) if data_dir else name


def _label_columns(profile: Profile) -> dict[str, object]:
    out: dict[str, object] = {}
    for task, column in profile.tables.label_columns.items():
        if isinstance(column, tuple):
            out[task] = {"event-year": column[0], "followup-years": column[1]}
        else:
            out[task] = column
    return out


def site_config_toml(profile: str | Profile, data_dir: str = "") -> str:
    """The site config of a generated hospital as TOML text.

    Args:
        profile: Profile name or object.
        data_dir: Folder of the generated data relative to the TOML file, in
            POSIX form ("" when the TOML sits next to the data).

    Returns:
        TOML text in the format of docs/site-config.md.
    """
    p = get(profile) if isinstance(profile, str) else profile
    t = p.tables
    lines = [
        f"# Generated demo hospital {p.name!r} (client.synth.synthesize_site).",
        "# Paths are relative to this file. The identifier columns "
        f"{', '.join(repr(c) for c in t.identifiers)}",
        "# of the clinical table are deliberately left unmapped.",
    ]
    _table(lines, "site", {
        "name": p.name, "tasks": list(p.tasks), "state-dir": _join(data_dir, "state"),
    })  # fmt: skip
    _table(lines, "dicom", {
        "root": _join(data_dir, "dicom"), "patient-id-tag": "PatientID",
        "exam-id-tag": "AccessionNumber", "series-description-pattern": "",
    })  # fmt: skip
    ids = {"patient-id-column": t.patient_id_column, "exam-id-column": t.exam_id_column}
    _table(lines, "clinical", {"path": _join(data_dir, t.clinical_file), **ids})
    _table(lines, "clinical.columns", dict(t.columns))
    _table(lines, "clinical.units", dict(t.units))
    for field, codes in t.values.items():
        _table(lines, f"clinical.values.{field}", dict(codes), quote=True)
    _table(lines, "labels", {"path": _join(data_dir, t.labels_file), **ids})
    _table(lines, "labels.columns", _label_columns(p))
    _table(lines, "privacy", {
        "enabled": True, "epsilon": p.epsilon, "delta": DELTA, "max-grad-norm": 1.0,
    })  # fmt: skip
    _table(lines, "compute", {"device": "auto", "threads": 1})
    _table(lines, "cache", {"dir": _join(data_dir, "cache")})
    # A large test share: demo cohorts are small and the README's comparison is
    # measured on the test splits (40 % keeps about 25 test patients per site).
    _table(lines, "split", {"seed": 0, "fractions": [0.5, 0.1, 0.4]})
    return "\n".join(lines) + "\n"


def write_demo_site_configs(folder: Path) -> list[Path]:
    """Write ``<folder>/<profile>.toml`` for every profile, data in ../demo_data.

    Args:
        folder: The site_configs folder.

    Returns:
        The written files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in PROFILES:
        path = folder / f"{name}.toml"
        path.write_text(site_config_toml(name, f"../demo_data/{name}"))
        out.append(path)
    return out
