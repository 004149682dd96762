"""Helpers shared by test modules (test modules never import each other): `tests.helpers.<topic>`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment with the repository root on PYTHONPATH (configs of a subprocess can then name
    `tests.helpers.*` classes) and one thread per process (the suite shares two cores)."""
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)


def run_klear(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`klear <args>` through the real entry point in a fresh Python process."""
    code = "from klear_lightning.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
