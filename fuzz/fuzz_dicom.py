"""atheris driver for DICOM ingestion; libFuzzer options pass through (fuzz/README.md).

Run from the repository root, e.g.:
.venv/bin/python fuzz/fuzz_dicom.py -runs=200            # bounded
.venv/bin/python fuzz/fuzz_dicom.py -max_total_time=3600 fuzz/corpus/dicom
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["client", "fuzz"]):
    from fuzz.targets import dicom_one_input, quiet


def main() -> None:
    """Run libFuzzer over ``fuzz.targets.dicom_one_input``."""
    quiet()
    atheris.Setup(sys.argv, dicom_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
