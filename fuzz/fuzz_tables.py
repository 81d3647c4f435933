"""atheris driver for the site tables; libFuzzer options pass through (fuzz/README.md).

Run from the repository root, e.g.:
.venv/bin/python fuzz/fuzz_tables.py -runs=2000           # bounded
.venv/bin/python fuzz/fuzz_tables.py -max_total_time=3600 fuzz/corpus/tables
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["client", "fuzz"]):
    from fuzz.targets import quiet, table_one_input


def main() -> None:
    """Run libFuzzer over ``fuzz.targets.table_one_input``."""
    quiet()
    atheris.Setup(sys.argv, table_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
