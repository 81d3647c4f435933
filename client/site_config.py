"""Site configuration: ``site.toml`` parsed once into frozen dataclasses.

The format is documented in docs/site-config.md. Every error names the file, the key and
what would fix it; unknown keys are refused so a typo never silently changes behaviour.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from m3fm_model.clinical import CLINICAL_FIELDS
from m3fm_model.tasks import TASKS, AnswerKind

from .app_pin import APP_ID, APP_VERSION

# Site-column units each dictionary field accepts (converted to the dictionary unit).
UNIT_CHOICES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"height": ("in", "inches", "cm"), "weight": ("lb", "lbs", "pounds", "kg")}
)


class SiteConfigError(ValueError):
    """A site config is missing, malformed or inconsistent."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        self.path, self.key = str(path), key
        super().__init__(f"{path}: [{key}] {problem}")


@dataclass(frozen=True)
class DicomSource:
    """Where the site's DICOM tree is and which tags hold the pseudonymous IDs."""

    root: Path
    patient_id_tag: str = "PatientID"
    exam_id_tag: str = "AccessionNumber"
    series_description_pattern: str | None = None


@dataclass(frozen=True)
class CancerRiskColumns:
    """The two label columns of the 6-year cancer risk."""

    event_year: str
    followup_years: str


@dataclass(frozen=True)
class TableSource:
    """A clinical or labels table and how its columns map onto ours."""

    path: Path
    patient_id_column: str
    exam_id_column: str | None
    columns: Mapping[str, Any] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class PrivacyConfig:
    """The site's own differential-privacy budget (only the site can switch DP off)."""

    enabled: bool = True
    epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class ComputeConfig:
    """Device and CPU threads for training and evaluation at this site."""

    device: str = "auto"
    threads: int = 1


@dataclass(frozen=True)
class SplitConfig:
    """Deterministic patient-level train/validation/test split."""

    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)


@dataclass(frozen=True)
class FederationConfig:
    """Which federated apps this site runs (checked before any app code is loaded).

    ``accept_apps`` holds ``publisher/name==version`` (or ``publisher/name`` for any
    version); ``accept_fab_sha256``, when not empty, further pins the exact app bundles.
    """

    accept_apps: tuple[str, ...] = (f"{APP_ID}=={APP_VERSION}",)
    accept_fab_sha256: tuple[str, ...] = ()


@dataclass(frozen=True)
class SiteConfig:
    """A whole site configuration (all paths absolute)."""

    path: Path
    name: str
    tasks: tuple[str, ...]
    dicom: DicomSource
    clinical: TableSource
    labels: TableSource
    privacy: PrivacyConfig
    compute: ComputeConfig
    cache_dir: Path
    split: SplitConfig
    state_dir: Path
    federation: FederationConfig = field(default_factory=FederationConfig)


_SECTIONS = {
    "site": {"name", "tasks", "state-dir"},
    "dicom": {"root", "patient-id-tag", "exam-id-tag", "series-description-pattern"},
    "clinical": {
        "path",
        "patient-id-column",
        "exam-id-column",
        "columns",
        "units",
        "values",
    },
    "labels": {"path", "patient-id-column", "exam-id-column", "columns"},
    "privacy": {"enabled", "epsilon", "delta", "max-grad-norm"},
    "compute": {"device", "threads"},
    "cache": {"dir"},
    "split": {"seed", "fractions"},
    "federation": {"accept-apps", "accept-fab-sha256"},
}
_REQUIRED = ("site", "dicom", "clinical", "labels")


def _check_keys(path: Path, raw: Mapping[str, Any]) -> None:
    for section in _REQUIRED:
        if section not in raw:
            raise SiteConfigError(
                path, section, "section is missing; see docs/site-config.md"
            )
    for section, body in raw.items():
        if section not in _SECTIONS:
            raise SiteConfigError(
                path, section, f"unknown section; valid: {sorted(_SECTIONS)}"
            )
        if not isinstance(body, Mapping):
            raise SiteConfigError(path, section, "must be a table")
        unknown = set(body) - _SECTIONS[section]
        if unknown:
            raise SiteConfigError(
                path,
                section,
                f"unknown keys {sorted(unknown)}; valid: {sorted(_SECTIONS[section])}",
            )


def _get(
    path: Path,
    raw: Mapping[str, Any],
    section: str,
    key: str,
    kind: type,
    default: Any = None,
) -> Any:
    value = raw.get(section, {}).get(key, default)
    if value is None:
        raise SiteConfigError(path, f"{section}.{key}", "is required")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SiteConfigError(
            path, f"{section}.{key}", f"must be a {kind.__name__}, got {value!r}"
        )
    return value


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _parse_tasks(path: Path, raw: Mapping[str, Any]) -> tuple[str, ...]:
    tasks = raw["site"].get("tasks", [])
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise SiteConfigError(path, "site.tasks", "must be a list of task names")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SiteConfigError(
            path, "site.tasks", f"unknown tasks {unknown}; known: {sorted(TASKS)}"
        )
    return tuple(tasks)


def _parse_clinical(path: Path, base: Path, raw: Mapping[str, Any]) -> TableSource:
    sec = raw["clinical"]
    columns = dict(sec.get("columns", {}))
    unknown = [f for f in columns if f not in CLINICAL_FIELDS]
    if unknown:
        raise SiteConfigError(
            path,
            "clinical.columns",
            f"unknown clinical fields {unknown}; valid: {list(CLINICAL_FIELDS)}",
        )
    units = dict(sec.get("units", {}))
    for fld, unit in units.items():
        if fld not in UNIT_CHOICES or unit not in UNIT_CHOICES[fld]:
            raise SiteConfigError(
                path,
                f"clinical.units.{fld}",
                f"unit {unit!r} is not convertible; choices: {dict(UNIT_CHOICES)}",
            )
    values = {
        k: {str(c): str(v) for c, v in m.items()}
        for k, m in sec.get("values", {}).items()
    }
    for fld in values:
        if fld not in columns:
            raise SiteConfigError(
                path,
                f"clinical.values.{fld}",
                "maps codes of a field that has no column",
            )
    return TableSource(
        path=_resolve(base, _get(path, raw, "clinical", "path", str)),
        patient_id_column=_get(path, raw, "clinical", "patient-id-column", str),
        exam_id_column=sec.get("exam-id-column"),
        columns=MappingProxyType(columns),
        units=MappingProxyType(units),
        values=MappingProxyType(values),
    )


def _parse_labels(
    path: Path, base: Path, raw: Mapping[str, Any], tasks: tuple[str, ...]
) -> TableSource:
    sec = raw["labels"]
    columns: dict[str, Any] = {}
    for task, col in sec.get("columns", {}).items():
        if task not in TASKS:
            raise SiteConfigError(
                path, f"labels.columns.{task}", f"unknown task; known: {sorted(TASKS)}"
            )
        if TASKS[task].answer_kind == AnswerKind.HAZARD6:
            if not isinstance(col, Mapping) or set(col) != {
                "event-year",
                "followup-years",
            }:
                raise SiteConfigError(
                    path,
                    f"labels.columns.{task}",
                    'needs { event-year = "...", followup-years = "..." }',
                )
            columns[task] = CancerRiskColumns(
                str(col["event-year"]), str(col["followup-years"])
            )
        elif isinstance(col, str):
            columns[task] = col
        else:
            raise SiteConfigError(
                path, f"labels.columns.{task}", "must be a column name"
            )
    missing = [t for t in tasks if t not in columns and not TASKS[t].auxiliary]
    if missing:
        raise SiteConfigError(
            path,
            "labels.columns",
            f"tasks {missing} in site.tasks have no label column",
        )
    return TableSource(
        path=_resolve(base, _get(path, raw, "labels", "path", str)),
        patient_id_column=_get(path, raw, "labels", "patient-id-column", str),
        exam_id_column=sec.get("exam-id-column"),
        columns=MappingProxyType(columns),
    )


def _parse_privacy(path: Path, raw: Mapping[str, Any]) -> PrivacyConfig:
    p = PrivacyConfig(
        enabled=_get(path, raw, "privacy", "enabled", bool, True),
        epsilon=_get(path, raw, "privacy", "epsilon", float, 8.0),
        delta=_get(path, raw, "privacy", "delta", float, 1e-5),
        max_grad_norm=_get(path, raw, "privacy", "max-grad-norm", float, 1.0),
    )
    if p.epsilon <= 0 or not 0 < p.delta < 1 or p.max_grad_norm <= 0:
        raise SiteConfigError(
            path, "privacy", "epsilon and max-grad-norm must be > 0 and 0 < delta < 1"
        )
    return p


def _parse_split(path: Path, raw: Mapping[str, Any]) -> SplitConfig:
    fr = raw.get("split", {}).get("fractions", [0.7, 0.15, 0.15])
    if (
        len(fr) != 3
        or any(not isinstance(f, int | float) or f < 0 for f in fr)
        or abs(sum(fr) - 1) > 1e-6
    ):
        raise SiteConfigError(
            path, "split.fractions", "needs three non-negative numbers summing to 1"
        )
    return SplitConfig(
        _get(path, raw, "split", "seed", int, 0), tuple(float(f) for f in fr)
    )  # type: ignore[arg-type]


def _parse_federation(path: Path, raw: Mapping[str, Any]) -> FederationConfig:
    body = raw.get("federation", {})
    apps = body.get("accept-apps", list(FederationConfig().accept_apps))
    hashes = body.get("accept-fab-sha256", [])
    pin = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(==[A-Za-z0-9_.+-]+)?")
    if (
        not isinstance(apps, list)
        or not apps
        or not all(isinstance(a, str) and pin.fullmatch(a) for a in apps)
    ):
        raise SiteConfigError(
            path,
            "federation.accept-apps",
            'give a non-empty list like ["m3fm/m3fm-federated==0.1.0"]',
        )
    if not isinstance(hashes, list) or not all(
        isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes
    ):
        raise SiteConfigError(
            path,
            "federation.accept-fab-sha256",
            "give a list of 64-character lowercase hex SHA-256 digests",
        )
    return FederationConfig(tuple(apps), tuple(hashes))


def load_site_config(path: str | Path) -> SiteConfig:
    """Parse and validate a site config.

    Args:
        path: the ``site.toml`` file.

    Raises:
        SiteConfigError: with the file, key and fix.
    """
    path = Path(path)
    if not path.is_file():
        raise SiteConfigError(
            path, "-", "file not found; pass --site-config with a site.toml path"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SiteConfigError(path, "-", f"is not valid TOML: {err}") from err
    _check_keys(path, raw)
    base = path.resolve().parent
    name = _get(path, raw, "site", "name", str)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise SiteConfigError(path, "site.name", "use letters, digits, '_' or '-' only")
    tasks = _parse_tasks(path, raw)
    pattern = raw["dicom"].get("series-description-pattern") or None
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as err:
            raise SiteConfigError(
                path, "dicom.series-description-pattern", f"invalid regex: {err}"
            ) from err
    compute = ComputeConfig(
        device=_get(path, raw, "compute", "device", str, "auto"),
        threads=_get(path, raw, "compute", "threads", int, 1),
    )
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", compute.device):
        raise SiteConfigError(path, "compute.device", "use auto, cpu, cuda or cuda:N")
    return SiteConfig(
        path=path.resolve(),
        name=name,
        tasks=tasks,
        dicom=DicomSource(
            root=_resolve(base, _get(path, raw, "dicom", "root", str)),
            patient_id_tag=_get(path, raw, "dicom", "patient-id-tag", str, "PatientID"),
            exam_id_tag=_get(path, raw, "dicom", "exam-id-tag", str, "AccessionNumber"),
            series_description_pattern=pattern,
        ),
        clinical=_parse_clinical(path, base, raw),
        labels=_parse_labels(path, base, raw, tasks),
        privacy=_parse_privacy(path, raw),
        compute=compute,
        cache_dir=_resolve(base, _get(path, raw, "cache", "dir", str, "cache")),
        split=_parse_split(path, raw),
        state_dir=_resolve(base, _get(path, raw, "site", "state-dir", str, "state")),
        federation=_parse_federation(path, raw),
    )
