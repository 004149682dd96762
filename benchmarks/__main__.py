"""`python -m benchmarks [NAME ...]`: run every benchmark module (or the named ones)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

HELPERS = {"common", "__main__", "parity"}


def available() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in HELPERS)


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = set(names) - set(available())
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; available: {available()}", file=sys.stderr)
        return 2
    for name in names:
        importlib.import_module(f"benchmarks.{name}").main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
