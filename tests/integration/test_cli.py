"""The `klear` command: every shipped config and overlay parses, links, summary at paper scale."""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from klear_lightning.cli import main
from klear_lightning.lightning_cli import bootstrap_from_config, parse_config
from klear_lightning.logging import flatten_config
from klear_lightning.sequence import ClipSpec
from tests.helpers import ROOT, klear

CONFIGS = ROOT / "configs"


def _parse(*paths: Path):
    return _parse_args(*(a for p in paths for a in ("--config", str(p))))


def _parse_args(*args: str):
    return parse_config(*args).config


@pytest.mark.parametrize("overlay", sorted(p.name for p in (CONFIGS / "ablations").glob("*.yaml")))
def test_demo_with_each_ablation_overlay_parses(overlay):
    cfg = _parse(CONFIGS / "demo.yaml", CONFIGS / "ablations" / overlay)
    assert cfg.ablation == overlay.removesuffix(".yaml")
    assert cfg.model.net.dim == 192 and str(cfg.data.init_args.root) == "runs/demo/syncworld"
    if overlay == "dual_tower.yaml":
        assert cfg.model.net.architecture == "dual_tower"
    if overlay == "t2av_only.yaml":
        assert cfg.model.task_weights == {"t2av": 1.0}
    # the demo's temporal RoPE scale (3) is what these two ablate
    expected_time_scale = 1.0 if overlay in ("rope_offset.yaml", "rope_time_unscaled.yaml") else 3.0
    assert cfg.model.net.rope_time_scale == expected_time_scale


RESEARCH = CONFIGS / "research"
RESEARCH_ARMS = sorted(str(p.relative_to(RESEARCH / "ablations")) for p in (RESEARCH / "ablations").rglob("*.yaml"))


@pytest.mark.parametrize("overlay", RESEARCH_ARMS)
def test_research_config_with_each_ablation_overlay_parses_and_changes_only_its_arm(overlay):
    base = _parse(RESEARCH / "baseline.yaml")
    cfg = _parse(RESEARCH / "baseline.yaml", RESEARCH / "ablations" / overlay)
    assert cfg.ablation != base.ablation == "baseline"
    assert cfg.data.init_args.clip == base.data.init_args.clip and cfg.data.init_args.batch_size == 8
    if overlay.startswith("curriculum/"):  # its stages split the baseline's steps (checked below)
        return
    assert cfg.trainer.max_steps == base.trainer.max_steps  # one stage of the baseline's length
    changed = {
        k
        for k in ("architecture", "dim", "rope_mode", "rope_time_scale")
        if getattr(cfg.model.net, k) != getattr(base.model.net, k)
    } | {k for k in ("task_weights", "timesteps", "lambda_video", "lambda_audio") if cfg.model[k] != base.model[k]}
    mix = {"task_weights"}
    expected = {
        "single_vs_dual_tower.yaml": {"architecture", "dim"},
        "rope_offset.yaml": {"rope_mode", "rope_time_scale"},
        "rope_time_scale_1.yaml": {"rope_time_scale"},
        "loss_weights_ovi.yaml": {"lambda_video", "lambda_audio"},
        "split_shift_off.yaml": {"timesteps"},
        "timestep_shift_off.yaml": {"timesteps"},
    } | dict.fromkeys(["t2v_only.yaml", "t2v_t2av.yaml", "t2av_only.yaml", "all_tasks.yaml", "paper_tasks.yaml"], mix)
    assert changed == expected.get(overlay, set())
    if overlay == "split_shift_off.yaml":
        assert cfg.model.timesteps.split_shift == {} and cfg.model.timesteps.shift == base.model.timesteps.shift == 3.0
    if overlay == "timestep_shift_off.yaml":
        assert cfg.model.timesteps.split_shift == {} and cfg.model.timesteps.shift == 1.0


def test_research_curriculum_has_the_baselines_total_steps_and_chains():
    stages = [
        _parse(RESEARCH / "baseline.yaml", RESEARCH / "ablations" / "curriculum" / f"stage{i}.yaml") for i in (1, 2, 3)
    ]
    assert sum(s.trainer.max_steps for s in stages) == _parse(RESEARCH / "baseline.yaml").trainer.max_steps
    for before, after in zip(stages, stages[1:]):
        saved = [c.init_args.dirpath for c in before.trainer.callbacks if c.class_path.endswith("ModelCheckpoint")]
        assert after.model.init_from == saved[0] + "/last.ckpt"
    assert any(c.class_path.endswith("Rebalance") for c in stages[1].trainer.callbacks)


def test_research_dual_tower_arm_within_five_percent_of_the_single_tower():
    from dataclasses import replace

    from klear_lightning.lightning_cli import instantiate_model_and_data as parse_modules
    from klear_lightning.models import ModelConfig, build_model

    module, data = parse_modules(RESEARCH / "baseline.yaml")
    single = module.model_config
    dual = replace(
        single,
        **_parse(RESEARCH / "baseline.yaml", RESEARCH / "ablations" / "single_vs_dual_tower.yaml").model.net.as_dict()
        | {
            k: getattr(single, k)
            for k in ("video_channels", "audio_channels", "text_dim", "video_latent_fps", "audio_latent_fps")
        },
    )
    count = [sum(p.numel() for p in build_model(ModelConfig(**vars(c))).parameters()) for c in (single, dual)]
    assert dual.architecture == "dual_tower"
    assert abs(count[1] / count[0] - 1) <= 0.05, count


def test_research_ood_overlay_tests_the_held_out_partition():
    cfg = _parse(RESEARCH / "baseline.yaml", RESEARCH / "test_ood.yaml")
    assert cfg.data.init_args.test_partition == "ood" and "speech_multi" not in cfg.data.init_args.test_splits
    assert cfg.trainer.default_root_dir != _parse(RESEARCH / "baseline.yaml").trainer.default_root_dir


def test_stage_configs_chain_checkpoints():
    pre = _parse(CONFIGS / "pretrain.yaml")
    assert pre.stage == "pretrain" and pre.model.net.depth == 32 and pre.model.optim.lr == 1e-4
    assert pre.trainer.strategy.class_path.endswith("ModelParallelStrategy")
    spec = _parse(CONFIGS / "pretrain.yaml", CONFIGS / "specialize.yaml")
    assert spec.stage == "specialize" and spec.model.init_from == "runs/pretrain/checkpoints/last.ckpt"
    assert any(c.class_path.endswith("Rebalance") for c in spec.trainer.callbacks)
    qual = _parse(CONFIGS / "pretrain.yaml", CONFIGS / "quality.yaml")
    assert qual.model.init_from == "runs/specialize/checkpoints/last.ckpt" and qual.model.optim.lr < pre.model.optim.lr


def test_demo_stages_chain_into_one_mlflow_database():
    one = _parse(CONFIGS / "demo.yaml")
    two = _parse(CONFIGS / "demo.yaml", CONFIGS / "demo_specialize.yaml")
    assert two.stage == "demo_specialize" and two.model.init_from == "runs/demo/checkpoints/last.ckpt"
    assert any(
        c.init_args.dirpath == two.model.init_from.rsplit("/", 1)[0]
        for c in one.trainer.callbacks
        if c.class_path.endswith("ModelCheckpoint") and c.init_args.save_last
    )
    assert (
        two.trainer.logger.init_args.tracking_uri == "sqlite:///" + one.trainer.logger.init_args.run_dir + "/mlflow.db"
    )
    assert two.model.task_weights == one.model.task_weights and two.model.net == one.model.net
    assert "sound" not in two.data.init_args.train_splits  # speech only: stage I's split_shift for sound is dropped
    assert one.model.timesteps.split_shift == {"sound": 1.0} and two.model.timesteps.split_shift == {}


def test_linked_fields_are_not_settable():
    with pytest.raises(SystemExit):
        _parse_args = [
            "fit",
            "--config",
            str(CONFIGS / "demo.yaml"),
            "--model.net.video_channels",
            "7",
            "--print_config",
        ]
        main(_parse_args)


def test_print_config(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(CONFIGS / "demo.yaml"), "--print_config"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: klear_lightning.data.datamodule.AVDataModule" in out and "stage: demo" in out


def _summary_commands_in_docs() -> list[str]:
    """Every `klear summary` command line in the user docs (README.md, docs/*.md) code blocks."""
    root = CONFIGS.parent
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    lines = [line.strip() for doc in docs if doc.exists() for line in doc.read_text().splitlines()]
    return sorted({line for line in lines if line.startswith("klear summary ")})


@functools.cache
def _summary(*args: str) -> subprocess.CompletedProcess:
    """`klear summary <args>` through the real command, each distinct command once (`make test`
    distributes whole modules, so the tests below share this cache)."""
    return klear("summary", *args, timeout=600)


@pytest.mark.slow
def test_klear_summary_of_the_paper_config_without_any_weights_or_data():
    """The paper config names codec and caption-encoder folders that are not on this machine: the
    summary still works (declared geometry), through the real `klear` command, and counts ~26B."""
    done = _summary("--config", "configs/pretrain.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"parameters: \d+", last), last
    assert abs(int(last.split()[1]) - 26e9) <= 0.1 * 26e9
    assert "video_text" in done.stdout and "training FLOPs" in done.stdout


@pytest.mark.slow
def test_the_summary_commands_the_docs_show_work():
    commands = _summary_commands_in_docs()
    assert "klear summary --config configs/pretrain.yaml" in commands
    for command in commands:
        done = _summary(*shlex.split(command)[2:])
        assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
        assert done.stdout.strip().splitlines()[-1].startswith("parameters: "), command


@pytest.mark.slow
def test_klear_summary_memory_per_rank_of_the_paper_config():
    """`--world_size 128`: memory lines per rank, the peak just before the parameter count."""
    done = _summary("--config", "configs/pretrain.yaml", "--world_size", "128")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    n = int(lines[-1].removeprefix("parameters: "))
    assert lines[-2].startswith("peak_memory_per_rank_gib: ")
    memory = "\n".join(lines[next(i for i, x in enumerate(lines) if x.startswith("memory per rank")) :])
    assert "FSDP2 over 128 ranks, batch 1 x" in memory and "with activation checkpointing as configured" in memory
    # each rank holds 1/128 of the fp32 master weights
    params_gib = float(next(x for x in lines if "parameters (fp32 master shards)" in x).split()[-1])
    assert params_gib == pytest.approx(4 * n / 128 / 1024**3, abs=0.01)


def test_flatten_config():
    assert flatten_config({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {
        "a.b": "1",
        "a.c.d": "[1, 2]",
        "e": "None",
    }


def _cached_keys(root: Path, partition: str, split: str) -> list[str]:
    from klear_lightning.data.shards import iter_tar, read_index

    return [
        k
        for s in read_index(root / partition, split)
        for raw in iter_tar(s.url)
        for k in raw
        if k.startswith("latent.")
    ]


def test_bootstrap_generates_at_clip_size_then_caches(tmp_path, capsys):
    """The demo's self-bootstrap writes only the configured splits at the clip's resolution and caches
    every train / val / test sample with the data module's codecs (the fast path the demo trains on)."""
    from klear_lightning.data.datamodule import AVDataModule
    from klear_lightning.data.shards import iter_tar, parse_sample, read_index

    root = tmp_path / "sw"
    cfg = _parse_args(
        "--config",
        str(CONFIGS / "demo.yaml"),
        "--data.init_args.root",
        str(root),
        "--data.init_args.train_splits",
        "{sound: 1.0}",
        "--syncworld_clips_per_split",
        "2",
    )
    bootstrap_from_config(cfg)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["sound"]
    rec = parse_sample(next(iter_tar(read_index(root / "train", "sound")[0].url)), "first")
    assert rec.video()[0].shape[1:3] == (32, 32)
    dm = AVDataModule(root, {"sound": 1.0}, clip=ClipSpec(**cfg.data.init_args.clip.as_dict()), num_workers=0)
    for partition in ("train", "val", "test"):
        n = sum(s.nsamples for s in read_index(root / partition, "sound"))
        assert len(_cached_keys(root, partition, "sound")) == 2 * n, partition  # video and audio latents
    assert (root / "stats" / f"{dm.video_codec.name}-{dm.video_codec.version}.json").exists()


def test_bootstrap_draws_the_scene_and_refuses_a_root_generated_otherwise(tmp_path):
    """`syncworld_scene` reaches the generator; a root generated with another scene or clip count is an
    error naming both, never silently trained on; the same config reuses it."""

    root = tmp_path / "sw"
    args = [
        "--config",
        str(CONFIGS / "demo.yaml"),
        "--data.init_args.root",
        str(root),
        "--data.init_args.train_splits",
        "{sound: 1.0}",
        "--syncworld_clips_per_split",
        "1",
    ]
    bootstrap_from_config(_parse_args(*args, "--syncworld_scene.object_scale", "1.5"))
    assert json.loads((root / "syncworld.json").read_text())["config"]["scene"]["object_scale"] == 1.5
    bootstrap_from_config(_parse_args(*args, "--syncworld_scene.object_scale", "1.5"))  # same: reused
    with pytest.raises(ValueError, match="object_scale.: 2.0.*delete"):  # the demo's own scale
        bootstrap_from_config(_parse_args(*args))
    with pytest.raises(ValueError, match="syncworld_clips_per_split = 2"):
        bootstrap_from_config(_parse_args(*args[:-1], "2", "--syncworld_scene.object_scale", "1.5"))


def test_cache_subcommand_adds_latents(tmp_path, capsys):
    from klear_lightning.data.shards import ShardWriter
    from tests.helpers.samples import make_sample

    with ShardWriter(tmp_path / "train", "s") as w:
        for i in range(2):
            s = make_sample(f"k{i}", "s")
            s.arrays = {}
            w.write(s)
    main(
        [
            "cache",
            "--root",
            str(tmp_path),
            "--splits",
            "[s]",
            "--partitions",
            "[train]",
            "--clip.duration",
            "1.0",
            "--workers",
            "1",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert (report["cached"], report["failed"]) == (2, [])
    assert len(_cached_keys(tmp_path, "train", "s")) == 4
