"""The `klear` command: every shipped config and overlay parses, links, summary at paper scale."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch import LightningDataModule

from klear_lightning.cli import _ParseOnlyCLI, main, summary
from klear_lightning.logging import flatten_config
from klear_lightning.module import KlearModule
from klear_lightning.sequence import LatentGeometry

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _parse(*paths: Path):
    args = [a for p in paths for a in ("--config", str(p))]
    cli = _ParseOnlyCLI(KlearModule, LightningDataModule, subclass_mode_data=True, args=args, run=False,
                        save_config_callback=None, auto_configure_optimizers=False, seed_everything_default=False)
    return cli.config


@pytest.mark.parametrize("overlay", sorted(p.name for p in (CONFIGS / "ablations").glob("*.yaml")))
def test_demo_with_each_ablation_overlay_parses(overlay):
    cfg = _parse(CONFIGS / "demo.yaml", CONFIGS / "ablations" / overlay)
    assert cfg.ablation == overlay.removesuffix(".yaml")
    assert cfg.model.model.dim == 192 and str(cfg.data.init_args.root) == "runs/demo/syncworld"
    if overlay == "dual_tower.yaml":
        assert cfg.model.model.architecture == "dual_tower"
    if overlay == "t2av_only.yaml":
        assert cfg.model.task_weights == {"t2av": 1.0}


def test_stage_configs_chain_checkpoints():
    pre = _parse(CONFIGS / "pretrain.yaml")
    assert pre.stage == "pretrain" and pre.model.model.depth == 32 and pre.model.optim.lr == 1e-4
    assert pre.trainer.strategy.class_path.endswith("ModelParallelStrategy")
    spec = _parse(CONFIGS / "pretrain.yaml", CONFIGS / "specialize.yaml")
    assert spec.stage == "specialize" and spec.model.init_from == "runs/pretrain/checkpoints/last.ckpt"
    assert any(c.class_path.endswith("Rebalance") for c in spec.trainer.callbacks)
    qual = _parse(CONFIGS / "pretrain.yaml", CONFIGS / "quality.yaml")
    assert qual.model.init_from == "runs/specialize/checkpoints/last.ckpt" and qual.model.optim.lr < pre.model.optim.lr


def test_linked_fields_are_not_settable():
    with pytest.raises(SystemExit):
        _parse_args = ["fit", "--config", str(CONFIGS / "demo.yaml"), "--model.model.video_channels", "7", "--print_config"]
        main(_parse_args)


def test_print_config(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(CONFIGS / "demo.yaml"), "--print_config"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: klear_lightning.data.datamodule.AVDataModule" in out and "stage: demo" in out


@pytest.mark.slow
def test_summary_paper_scale_on_meta(capsys):
    import yaml

    geometry = LatentGeometry(**yaml.safe_load((CONFIGS / "paper_geometry.yaml").read_text()))
    summary(CONFIGS / "pretrain.yaml", geometry=geometry, text_dim=3584)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("parameters: ")
    assert abs(int(last.split()[1]) - 26e9) <= 0.1 * 26e9


def test_flatten_config():
    assert flatten_config({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": "1", "a.c.d": "[1, 2]", "e": "None"}
