"""`klear sweep` through the real command on a tiny config: the sweep is SIGKILLed mid-run and rerun
(with an arm and a partition added, two runs at a time): the finished phases are not repeated, the
added partition is scored on the finished run, the killed fit resumes from its checkpoint in the same
MLflow run, a failing arm is reported with its log and does not stop the others, and each run's test
and ood scores land in its MLflow run. A staged arm (a curriculum) trains its stages in order, each
from the previous one's weights, killed between stages and rerun, into one MLflow run.

The sweep that is killed runs as the installed command in its own process group (the kill takes the
group); the reruns call the same entry point, `klear_lightning.cli.main`, in this process, which
saves a Python start (six seconds of imports) per rerun. The runs themselves are always subprocesses."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from klear_lightning.cli import main
from klear_lightning.data.cache import cache_latents
from klear_lightning.data.syncworld import generate_syncworld
from klear_lightning.logging import sqlite_uri
from klear_lightning.sequence import ClipSpec
from tests.helpers import ROOT, subprocess_env

CLIP = ClipSpec(duration=2.0, fps=8.0, height=32, width=32, sample_rate=16000)
STEPS = 4  # checkpoints at steps 2 and 4; the kill comes at the end of step 3


def _weight_sum(checkpoint: Path) -> float:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return sum(v.double().sum().item() for k, v in state.items() if k.startswith("model."))


@pytest.fixture(scope="module")
def syncworld(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syncworld")
    generate_syncworld(root, clips_per_split=8, splits=["sound"], duration=CLIP.duration, size=CLIP.height)
    cache_latents(root, ["sound"], partitions=["train", "val", "test", "ood"], clip=CLIP, workers=1)
    return root


def _base(tmp: Path, data_root: Path) -> Path:
    cfg = {
        "seed_everything": 0,
        "stage": "tiny",
        "ablation": "baseline",
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": STEPS,
            "limit_val_batches": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp / "elsewhere"),
            "logger": {
                "class_path": "klear_lightning.logging.KlearMLFlowLogger",
                "init_args": {"run_dir": str(tmp / "elsewhere"), "experiment_name": "tiny"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp / "elsewhere"), "every_n_train_steps": 2},
                },
                {
                    "class_path": "tests.helpers.callbacks.KillSweepOnce",
                    "init_args": {"seed": 1, "step": 3, "marker": str(tmp / "killed")},
                },
                {
                    "class_path": "klear_lightning.callbacks.benchmark.BenchmarkCallback",
                    "init_args": {
                        "metrics": {
                            "metrics": ["colour_syncworld"],
                            "tasks": ["t2av"],
                            "sampling_steps": 2,
                            "ground_truth": False,
                        }
                    },
                },
            ],
        },
        "model": {
            "net": {"dim": 32, "depth": 1, "heads": 2, "attention_backend": "reference"},
            "task_weights": {"t2av": 1.0},
            "optim": {"lr": 1e-3, "warmup_steps": 1},
            "seed": 0,
        },
        "data": {
            "class_path": "klear_lightning.data.AVDataModule",
            "init_args": {
                "root": str(data_root),
                "train_splits": {"sound": 1.0},
                "clip": dict(vars(CLIP)),
                "batch_size": 2,
                "num_workers": 0,
                "epoch_samples": 8,
                "seed": 0,
            },
        },
    }
    path = tmp / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _overlay(tmp: Path, name: str, body: dict) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"ablation": name, **body}))
    return path


def _sweep(args: list[str]) -> subprocess.CompletedProcess:
    env = subprocess_env(MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false")
    return subprocess.run(
        [sys.executable, "-m", "klear_lightning.cli", "sweep", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        start_new_session=True,
    )  # its own process group: the kill stays there


def _rerun(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """`klear sweep <args>` through `main` in this process: (exit status, stdout)."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the runs' configs name tests.helpers callbacks
    capsys.readouterr()
    try:
        main(["sweep", *args])
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 2
    return status, capsys.readouterr().out


def _headers(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("# ")] if log.exists() else []


@pytest.mark.slow
def test_sweep_killed_and_rerun(tmp_path, syncworld, capsys, monkeypatch):
    base = _base(tmp_path, syncworld)
    out = tmp_path / "study"
    args = ["--config", str(base), "--seeds", "[0, 1]", "--run_dir", str(out)]
    runs = {(arm, seed): out / "runs" / arm / f"seed_{seed}" for arm in ("baseline", "broken") for seed in (0, 1)}

    # one run at a time, test partition only: seed 0 finishes, seed 1 is killed with the sweep at the
    # end of its step 3
    first = _sweep(args + ["--partitions", "[test]"])
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr[-3000:]
    assert yaml.safe_load((runs[("baseline", 0)] / "state.json").read_text())["done"] == ["fit", "test"]
    assert yaml.safe_load((runs[("baseline", 1)] / "state.json").read_text())["done"] == []
    assert (runs[("baseline", 1)] / "checkpoints" / "last.ckpt").exists()

    # rerun, two at a time, with the ood partition (the default test + ood) and an arm added: dim 32 is
    # not divisible by 5 heads, so its runs parse, then fail when they build the model
    broken = _overlay(tmp_path, "broken", {"model": {"net": {"heads": 5}}})
    status, stdout = _rerun(args + ["--overlays", f"[{broken}]", "--parallel", "2"], capsys, monkeypatch)
    assert status == 1, stdout
    lines = stdout.splitlines()
    assert "4 runs, 0 done, 4 to run, 2 at a time" in lines[0], lines[0]
    assert any("start baseline seed 1 (resuming from step 2)" in line for line in lines)
    assert any(re.search(r"\[\d/4 done, \d left\] baseline seed 1: done in ", line) for line in lines), stdout
    for seed in (0, 1):
        log = runs[("broken", seed)] / "fit.log"
        assert any(f"FAILED broken seed {seed}: fit exited with 2: {log}" in line for line in lines)
        assert "32 is not divisible by model.net.heads = 5" in log.read_text()
    assert "sweep study: 2 of 4 runs done, 2 failed:" in stdout
    assert f"klear compare --run_dir {out} --sweep study --baseline baseline" in lines[-1]

    # the finished run only gained the ood phase; the killed fit ran twice, the second time from its
    # checkpoint
    for phase in ("fit", "test", "ood"):
        assert len(_headers(runs[("baseline", 0)] / f"{phase}.log")) == 1, phase
    assert yaml.safe_load((runs[("baseline", 0)] / "state.json").read_text())["done"] == ["fit", "test", "ood"]
    fit = _headers(runs[("baseline", 1)] / "fit.log")
    assert len(fit) == 2 and "--ckpt_path" not in fit[0] and "--ckpt_path" in fit[1]

    client = MlflowClient(sqlite_uri(out))
    found = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.sweep = 'study'")
    by_key = {(r.data.tags["ablation"], int(r.data.tags["seed"])): r for r in found}
    assert len(by_key) == len(found) == 4, "one MLflow run per arm and seed"
    first_losses = {}
    for seed in (0, 1):
        run = by_key[("baseline", seed)]
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == "tiny"
        assert run.data.params["model.seed"] == run.data.params["data.init_args.seed"] == str(seed)
        assert run.data.params["seed_everything"] == str(seed)
        for prefix in ("test", "ood"):
            assert f"{prefix}/loss" in run.data.metrics and f"{prefix}/t2av/colour_acc_syncworld_n" in run.data.metrics
        assert run.data.metrics["test/loss"] != run.data.metrics["ood/loss"]
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert {m.step for m in history} == set(range(STEPS))
        first_losses[seed] = [m.value for m in history if m.step == 0][0]
        assert (runs[("baseline", seed)] / "report_ood.md").exists()
    assert first_losses[0] != first_losses[1], "the seed reaches training"

    # every phase done but MLflow says FAILED (a partition no longer asked for failed in an earlier
    # sweep): marked FINISHED, so klear compare counts the run
    seed0 = by_key[("baseline", 0)].info.run_id
    client.set_terminated(seed0, "FAILED")
    status, stdout = _rerun(args + ["--partitions", "[test]"], capsys, monkeypatch)
    assert status == 0, stdout
    assert "2 runs, 2 done, 0 to run" in stdout
    assert client.get_run(seed0).info.status == "FINISHED"


def _stage(tmp: Path, k: int, steps: int, callbacks: list[dict], **model) -> Path:
    """A curriculum stage overlay whose logger, checkpoint folder and `init_from` point elsewhere:
    the sweep must move them into the run."""
    elsewhere = str(tmp / f"elsewhere_stage{k}")
    return _overlay(
        tmp,
        f"stage{k}",
        {
            "ablation": "curriculum",
            "stage": f"tiny_stage{k}",
            "trainer": {
                "max_steps": steps,
                "default_root_dir": elsewhere,
                "logger": {
                    "class_path": "klear_lightning.logging.KlearMLFlowLogger",
                    "init_args": {"run_dir": elsewhere, "experiment_name": "tiny"},
                },
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": elsewhere, "every_n_train_steps": 2},
                    },
                    {"class_path": "tests.helpers.callbacks.LogStartWeights"},
                    *callbacks,
                ],
            },
            "model": {"init_from": None if k == 1 else f"{elsewhere}/last.ckpt", **model},
        },
    )


@pytest.mark.slow
def test_staged_arm_killed_between_stages_and_rerun(tmp_path, syncworld, capsys, monkeypatch):
    base = _base(tmp_path, syncworld)
    kill = {
        "class_path": "tests.helpers.callbacks.KillSweepOnce",
        "init_args": {"seed": 1, "step": 3, "marker": str(tmp_path / "k")},
    }
    score = {
        "class_path": "klear_lightning.callbacks.benchmark.BenchmarkCallback",
        "init_args": {
            "metrics": {"metrics": ["colour_syncworld"], "tasks": ["t2av"], "sampling_steps": 2, "ground_truth": False}
        },
    }
    stages = [
        _stage(tmp_path, 1, 4, []),
        _stage(tmp_path, 2, 4, [kill], optim={"lr": 3e-3, "warmup_steps": 1}),
        _stage(tmp_path, 3, 2, [score]),
    ]
    out = tmp_path / "study"
    args = [
        "--config",
        str(base),
        "--overlays",
        f"[[{', '.join(map(str, stages))}]]",
        "--baseline",
        "false",
        "--seeds",
        "[1]",
        "--partitions",
        "[test]",
        "--run_dir",
        str(out),
    ]
    run = out / "runs" / "curriculum" / "seed_1"

    # stage 1 finishes, the sweep is killed at the end of stage 2's step 3 (its checkpoint: step 2)
    first = _sweep(args)
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr[-3000:]
    assert yaml.safe_load((run / "state.json").read_text())["done"] == ["stage1"]
    assert (run / "stage2" / "checkpoints" / "last.ckpt").exists()

    status, stdout = _rerun(args, capsys, monkeypatch)
    assert status == 0, stdout
    assert "1 runs, 0 done, 1 to run" in stdout.splitlines()[0]
    assert "start curriculum seed 1 stage2 (resuming from step 2)" in stdout
    assert "start curriculum seed 1 stage1" not in stdout
    assert yaml.safe_load((run / "state.json").read_text())["done"] == ["stage1", "stage2", "stage3", "test"]
    assert len(_headers(run / "stage1" / "fit.log")) == 1, "a finished stage never reruns"
    fit2 = _headers(run / "stage2" / "fit.log")
    assert len(fit2) == 2 and "--ckpt_path" not in fit2[0]
    assert f"--ckpt_path {run / 'stage2' / 'checkpoints' / 'last.ckpt'}" in fit2[1]
    assert len(_headers(run / "stage3" / "fit.log")) == len(_headers(run / "test.log")) == 1
    assert f"--ckpt_path {run / 'stage3' / 'checkpoints' / 'last.ckpt'}" in _headers(run / "test.log")[0]
    assert (run / "report.md").exists()
    for k in (1, 2, 3):
        cfg = yaml.safe_load((run / f"stage{k}" / "config.yaml").read_text())
        assert cfg["seed_everything"] == cfg["model"]["seed"] == cfg["data"]["init_args"]["seed"] == 1
        assert cfg["stage"] == f"tiny_stage{k}"
    assert not any(tmp_path.glob("elsewhere*")), "every stage's files go into the run folder"

    client = MlflowClient(sqlite_uri(out))
    found = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.sweep = 'study'")
    assert len(found) == 1, "one MLflow run for the three stages and the scoring"
    mlrun = found[0]
    assert mlrun.info.status == "FINISHED"
    assert (mlrun.data.tags["ablation"], mlrun.data.tags["seed"]) == ("curriculum", "1")
    assert "test/loss" in mlrun.data.metrics and "test/t2av/colour_acc_syncworld_n" in mlrun.data.metrics
    # each stage continues the step axis of the ones before: 4 + 4 + 2 steps
    history = client.get_metric_history(mlrun.info.run_id, "train/loss")
    assert sorted({m.step for m in history}) == list(range(10))
    # stage k starts from stage k-1's final weights (the sweep's init_from, not the stage yaml's)
    starts = {m.step: m.value for m in client.get_metric_history(mlrun.info.run_id, "marker/start_weight_sum")}
    assert sorted(starts) == [0, 4, 8]
    assert starts[4] == pytest.approx(_weight_sum(run / "stage1" / "checkpoints" / "last.ckpt"), rel=1e-9, abs=0)
    assert starts[8] == pytest.approx(_weight_sum(run / "stage2" / "checkpoints" / "last.ckpt"), rel=1e-9, abs=0)
    assert starts[4] != pytest.approx(starts[0], rel=1e-6)
    stored = {a.path for k in (1, 2, 3) for a in client.list_artifacts(mlrun.info.run_id, f"stage{k}")}
    assert stored == {f"stage{k}/config.yaml" for k in (1, 2, 3)}


def test_staged_arm_checks(tmp_path, syncworld):
    base = _base(tmp_path, syncworld)
    one = _overlay(tmp_path, "one", {})
    with pytest.raises(ValueError, match="a staged arm .* needs at least two stage overlays"):
        main(["sweep", "--config", str(base), "--overlays", f"[[{one}]]", "--run_dir", str(tmp_path / "s")])
    other = _overlay(tmp_path, "other", {})
    with pytest.raises(
        ValueError, match=r"the stages of a staged arm must share one `ablation`, got \['one', 'other'\]"
    ):
        main(["sweep", "--config", str(base), "--overlays", f"[[{one}, {other}]]", "--run_dir", str(tmp_path / "s")])
    assert not (tmp_path / "s" / "runs").exists()


def test_arms_need_distinct_names_before_anything_runs(tmp_path, syncworld):
    base = _base(tmp_path, syncworld)
    same = _overlay(tmp_path, "baseline", {"model": {"optim": {"lr": 1e-2}}})
    with pytest.raises(ValueError, match="ablation 'baseline' names two arms"):
        main(["sweep", "--config", str(base), "--overlays", f"[{same}]", "--run_dir", str(tmp_path / "s")])
    assert not (tmp_path / "s" / "runs").exists()
    with pytest.raises(ValueError, match="each item must be one '--key=value'"):
        main(
            [
                "sweep",
                "--config",
                str(base),
                "--overrides",
                "[--trainer.max_steps, '3']",
                "--run_dir",
                str(tmp_path / "s"),
            ]
        )


def test_a_run_started_with_another_config_is_not_mixed(tmp_path, syncworld):
    base = _base(tmp_path, syncworld)
    folder = tmp_path / "s" / "runs" / "baseline" / "seed_0"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("seed_everything: 0\n")
    with pytest.raises(ValueError, match="this run was started with a different config"):
        main(["sweep", "--config", str(base), "--run_dir", str(tmp_path / "s")])
