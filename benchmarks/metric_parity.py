"""Parity of every metric extractor with its official implementation (see `benchmarks/parity/`).

Runs `check()` of every module in `benchmarks/parity/` and writes `results/metric_parity.json`: one entry per extractor with `reference`,
`max_rel_diff`, `checkpoint_format`, and `skipped` where the official implementation could not be run.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from benchmarks.common import write_result
from benchmarks.parity import ParityResult

HELPERS = {"seeded"}


def modules() -> list[str]:
    here = Path(__file__).resolve().parent / "parity"
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in HELPERS)


def run(names: list[str] | None = None) -> list[ParityResult]:
    return [importlib.import_module(f"benchmarks.parity.{name}").check() for name in (names or modules())]


def main() -> dict[str, Any]:
    results = run()
    entries = {r.extractor: r.to_json() for r in results}
    passed = sum(r.passed for r in results)
    skipped = [r.extractor for r in results if r.skipped]
    failed = [r.extractor for r in results if not r.passed and not r.skipped]
    summary = f"{passed}/{len(results)} extractors within {results[0].tolerance if results else 0:g}"
    summary += f"; skipped {skipped}" if skipped else ""
    summary += f"; FAILED {failed}" if failed else ""
    return write_result("metric_parity", {"extractors": entries}, summary)
