"""Shared benchmark helpers: timing, this machine's fp32 matmul FLOP/s, result files."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], object], warmup: int = 2, repeats: int = 5) -> float:
    """Fastest wall seconds of `fn()` over `repeats` after `warmup` untimed calls (the minimum is
    the least disturbed by other load on a shared machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops_per_second(n: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 FLOP/s of an (n x n) @ (n x n) matmul on this machine (best of `repeats`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def machine() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def write_result(name: str, result: dict[str, Any], summary: str) -> dict[str, Any]:
    """Write results/<name>.json (with machine info) and print the one-line summary."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, **result, "machine": machine()}
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: {summary}")
    return record
