"""Fixtures shared by tests/unit and tests/integration; helpers that are not fixtures live in tests/helpers/."""

import os
from collections import Counter, defaultdict

import pytest
import torch

# Before anything imports transformers / mlflow: no network, no system-metrics thread.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def test_metrics(monkeypatch):
    """Register peak_test, gap_test, av_test and weights_test (unconfigured) for one test."""
    import klear_lightning.metrics.suite as suite_module
    from klear_lightning.metrics import base
    from klear_lightning.metrics.base import register_metric
    from tests.helpers.metric_doubles import AVPair, MeanAbsGap, MeanPeak, needs_weights

    registry = dict(suite_module.load_registry())
    monkeypatch.setattr(base, "REGISTRY", registry)
    monkeypatch.setattr(suite_module, "REGISTRY", registry)
    register_metric("peak_test", group="audio", description="test")(lambda ctx: MeanPeak())
    register_metric("gap_test", group="audio", description="test")(lambda ctx: MeanAbsGap())
    register_metric("av_test", group="av", description="test")(lambda ctx: AVPair())
    register_metric("weights_test", group="video", description="test")(needs_weights)
    return registry


def pytest_collection_modifyitems(items):
    """Modules with `slow` tests first, each module kept in order: `make test` runs `-n 2 --dist
    loadfile --no-loadscope-reorder`, which hands whole modules to the workers in this order (a
    module's fixtures, some of them whole runs, are built once), so the long end-to-end modules start
    early and the short ones fill in around them."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (item.module.__name__ not in slow_modules, order[id(item)]))


def pytest_terminal_summary(terminalreporter):
    """One line per test directory (unit, integration): outcomes and the summed duration of its tests."""
    counts: dict[str, Counter] = defaultdict(Counter)
    seconds: dict[str, float] = defaultdict(float)
    for outcome in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            parts = nodeid.split("/")
            if len(parts) < 3 or parts[0] != "tests":
                continue
            counts[parts[1]][outcome] += 1
            seconds[parts[1]] += getattr(report, "duration", 0.0)
    for directory in sorted(counts):
        outcomes = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts[directory].items()))
        terminalreporter.write_line(f"tests/{directory}: {outcomes}; {seconds[directory]:.0f} s summed test time")
