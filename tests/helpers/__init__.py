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


KLEAR = Path(sys.executable).with_name("klear")  # the installed entry point


def klear(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: int = 900
) -> subprocess.CompletedProcess:
    """`klear <args>` through the installed entry point in a fresh process, run in `cwd`, with
    `subprocess_env()` (KLEAR_DEBUG unset unless `env` sets it). The timeout only guards against a hang:
    a 40-step `klear fit` took over 300 s on two cores shared with other work."""
    environ = {k: v for k, v in subprocess_env().items() if k != "KLEAR_DEBUG"} | (env or {})
    return subprocess.run([str(KLEAR), *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)


def only_error_line(done: subprocess.CompletedProcess) -> str:
    """The `error:` line of a failed command: status 2, no traceback, exactly one such line."""
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    return errors[0]
