"""The real `klear` entry point: `--help` lists every command; bad input gives one `error:` line, status 2."""

from __future__ import annotations

import os

import pytest

from klear_lightning.cli import LIGHTNING_COMMANDS, PROJECT_COMMANDS
from tests.helpers import ROOT, klear, only_error_line

DEMO = str(ROOT / "configs" / "demo.yaml")


def test_help_lists_every_command_with_one_line(tmp_path):
    done = klear("--help", cwd=tmp_path)
    assert done.returncode == 0
    listed = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("  ")}
    expected = {"fit", "validate", "test", "predict", "summary", "syncworld", "prepare", "cache", "generate", "compare"}
    assert expected <= set(LIGHTNING_COMMANDS) | set(PROJECT_COMMANDS)
    # a line's first word is its command (`test --prompts` is listed as a form of `test`)
    assert set(listed) == set(LIGHTNING_COMMANDS) | {name.split()[0] for name in PROJECT_COMMANDS}
    assert all(len(line.split()) > 2 for line in listed.values()), "each command needs its one-line description"


def test_corrupt_ckpt_path_is_one_line(tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(os.urandom(4096))
    line = only_error_line(klear("fit", "--config", DEMO, "--ckpt_path", str(bad), cwd=tmp_path))
    assert line == f"error: ckpt_path: {bad} is not a checkpoint written by torch.save (truncated, or another format)"


def test_unknown_task_weight_is_one_line_before_any_data_work(tmp_path):
    line = only_error_line(klear("fit", "--config", DEMO, "--model.task_weights", "{t2v: 1.0, t2x: 1.0}", cwd=tmp_path))
    assert line.startswith("error: model.task_weights.t2x: unknown task 't2x'")
    assert not (tmp_path / "runs").exists(), "the demo's SyncWorld bootstrap must not start on a bad config"


def test_bad_attention_backend_and_bad_value_type_are_one_line(tmp_path):
    line = only_error_line(klear("fit", "--config", DEMO, "--model.net.attention_backend", "fast", cwd=tmp_path))
    assert line.startswith("error: model.net.attention_backend: unknown attention backend 'fast'")
    line = only_error_line(klear("fit", "--config", DEMO, "--model.optim.lr", "fast", cwd=tmp_path))
    assert line == "error: model.optim.lr: expected float, got 'fast'"


@pytest.mark.parametrize("how", ["--debug", "KLEAR_DEBUG"])
def test_debug_shows_the_traceback(tmp_path, how):
    args = ("syncworld", "--out", str(tmp_path / "sw"), "--clips_per_split", "0")
    done = klear(
        *((how, *args) if how == "--debug" else args),
        cwd=tmp_path,
        env={"KLEAR_DEBUG": "1"} if how == "KLEAR_DEBUG" else None,
    )
    assert done.returncode != 0 and "Traceback" in done.stderr
    assert "ConfigError: clips_per_split: must be >= 1, got 0" in done.stderr
