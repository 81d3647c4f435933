"""``make bench``: every benchmark row in one table, also written to bench/results.json.

Each row is a ratio with its anchor and target; both sides are measured in the same
process (interleaved, torch pinned to one thread, medians of repeats) except where a
row says otherwise (peak memory in fresh processes, the simulation round, bytes counted
on the meta device). A benchmark that fails leaves a row with its error and a miss.

Usage: ``python -m bench.run_all [--quick] [--out bench/results.json] [--only NAME]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import (  # noqa: E402
    bench_aggregation,
    bench_ingest,
    bench_round,
    bench_train,
    bench_transfer,
)
from bench.timing import row as result_row  # noqa: E402

logger = logging.getLogger("bench")


def suites(workdir: Path) -> dict[str, Callable[[bool], list[dict]]]:
    """Name -> ``run(quick)`` of each benchmark module, in table order."""
    return {
        "train": lambda q: bench_train.run(q, workdir=workdir),
        "aggregation": bench_aggregation.run,
        "transfer": bench_transfer.run,
        "ingest": bench_ingest.run,
        "round": lambda q: bench_round.run(q, workdir=workdir),
    }


def format_table(rows: list[dict]) -> str:
    """One line per row: name, ratio (unit), target, pass/miss, anchor."""
    lines = [f"{'row':36} {'ratio':>9} {'target':>10}  mark  anchor", "-" * 88]
    for r in rows:
        ratio = r["ratio"]
        shown = "error" if isinstance(ratio, float) and math.isnan(ratio) else ratio
        mark = "info" if r["meets"] is None else "pass" if r["meets"] else "MISS"
        anchor = r.get("anchor", "")
        unit = f" {r['unit']}" if "unit" in r else ""
        lines.append(
            f"{r['name']:36} {shown!s:>9} {r['target']:>10}  {mark:4}  {anchor}{unit}"
        )
    return "\n".join(lines)


def run(quick: bool, only: list[str] | None = None) -> list[dict]:
    """All rows (or only the named suites)."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in suites(Path(tmp)).items():
            if only and name not in only:
                continue
            start = time.perf_counter()
            try:
                got = fn(quick)
            except Exception as err:  # noqa: BLE001 - reported as a failed row
                logger.exception("benchmark %s failed", name)
                got = [result_row(name, math.nan, "runs", False, error=repr(err))]
            for r in got:
                r.setdefault("suite", name)
            rows += got
            logger.info(
                "%s: %d rows in %.0f s", name, len(got), time.perf_counter() - start
            )
    return rows


def main() -> None:
    """Run, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument(
        "--only", nargs="*", help="suite names: " + " ".join(suites(ROOT))
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True
    )
    for noisy in ("flwr", "bench_aggregation", "bench_ingest", "client", "server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    rows = run(args.quick, args.only)
    print(format_table(rows))
    targeted = [r for r in rows if r["meets"] is not None]
    met = sum(r["meets"] for r in targeted)
    print(
        f"{met} of {len(targeted)} rows with a target meet it "
        f"({len(rows) - len(targeted)} informational); JSON: {args.out}"
    )
    args.out.write_text(json.dumps(rows, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
