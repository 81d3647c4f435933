"""Reading site tables (CSV, Parquet, Excel) with pandas, with errors that name the file."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .site_config import TableSource

_READERS = {
    ".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""]),
    ".tsv": lambda p: pd.read_csv(
        p, sep="\t", dtype=str, keep_default_na=False, na_values=[""]
    ),
    ".parquet": pd.read_parquet,
    ".xlsx": lambda p: pd.read_excel(p, dtype=object),
    ".xls": lambda p: pd.read_excel(p, dtype=object),
}


class TableError(ValueError):
    """A table cannot be read or lacks a configured column."""


@dataclass(frozen=True)
class RowIssue:
    """A problem with one table row or cell (row numbers count data rows from 1)."""

    code: str
    path: str
    row: int
    field: str
    message: str
    severity: str = "warning"
    row_id: str = ""


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV/TSV, Parquet or Excel table.

    Raises:
        TableError: missing file, unsupported suffix or unreadable content.
    """
    if not path.is_file():
        raise TableError(f"{path}: table not found; fix the path in the site config")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise TableError(
            f"{path}: unsupported table type {path.suffix!r}; use {sorted(_READERS)}"
        )
    try:
        frame = reader(path)
    except Exception as err:  # pandas raises many types for corrupt files
        raise TableError(
            f"{path}: cannot be read as {path.suffix} ({type(err).__name__}: {err})"
        ) from err
    if frame.empty:
        raise TableError(f"{path}: the table has no rows")
    return frame


def require_columns(
    frame: pd.DataFrame, path: Path, columns: Iterable[str], what: str
) -> None:
    """Raise a TableError naming every configured column the table lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TableError(
            f"{path}: columns {missing} named in the site config ({what}) are not in the "
            f"table; it has {list(frame.columns)}. Fix the column map in the site config."
        )


def cell_text(value: object) -> str | None:
    """A cell as stripped text, None when empty or NaN."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    text = str(value).strip()
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    return text or None


def id_columns(src: TableSource) -> list[str]:
    """The configured ID columns of a table (patient, then exam when configured)."""
    return [src.patient_id_column] + (
        [src.exam_id_column] if src.exam_id_column else []
    )


def keyed_rows(
    frame: pd.DataFrame, src: TableSource, issues: list[RowIssue]
) -> Iterator[tuple[int, str, str | None, dict[str, object]]]:
    """Rows as (row number, patient ID, exam ID or None, row), first row per key only.

    A row without its IDs, or repeating an earlier row's IDs, is skipped and reported.
    """
    seen: set[tuple[str, str | None]] = set()
    where = "/".join(id_columns(src))
    for i, row in enumerate(frame.to_dict(orient="records"), start=1):
        pid = cell_text(row.get(src.patient_id_column))
        eid = cell_text(row.get(src.exam_id_column)) if src.exam_id_column else None
        if pid is None or (src.exam_id_column and eid is None):
            issues.append(
                RowIssue(
                    "missing_id",
                    str(src.path),
                    i,
                    where,
                    "row without an ID skipped",
                    "error",
                )
            )
            continue
        if (pid, eid) in seen:
            issues.append(
                RowIssue(
                    "duplicate_row",
                    str(src.path),
                    i,
                    where,
                    f"second row for {pid}/{eid} skipped",
                    "error",
                )
            )
            continue
        seen.add((pid, eid))
        yield i, pid, eid, row
