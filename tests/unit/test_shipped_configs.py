"""Every config the project ships parses, passes the config checks and builds its callbacks: a
renamed metric or field breaks this test, not a user's (or a sweep's) run."""

from __future__ import annotations

from pathlib import Path

import pytest

from klear_lightning.config_checks import check_config
from klear_lightning.errors import ConfigError
from klear_lightning.lightning_cli import instantiate_callbacks, parse_config
from tests.helpers import ROOT

CONFIGS = ROOT / "configs"
RESEARCH = CONFIGS / "research"


def _stacks() -> list[tuple[Path, ...]]:
    demo = CONFIGS / "demo.yaml"
    stacks = [
        (demo,),
        (demo, CONFIGS / "demo_specialize.yaml"),
        (CONFIGS / "pretrain.yaml",),
        (CONFIGS / "pretrain.yaml", CONFIGS / "specialize.yaml"),
        (CONFIGS / "pretrain.yaml", CONFIGS / "specialize.yaml", CONFIGS / "quality.yaml"),
    ]
    stacks += [(demo, overlay) for overlay in sorted((CONFIGS / "ablations").glob("*.yaml"))]
    base = RESEARCH / "baseline.yaml"
    stacks += [(base,), (base, RESEARCH / "test_ood.yaml")]
    stacks += [(base, overlay) for overlay in sorted((RESEARCH / "ablations").rglob("*.yaml"))]
    first = RESEARCH / "history" / "baseline_1200.yaml"  # the first study's baseline and the candidates after it
    stacks += [(first,)] + [(first, p) for p in sorted((RESEARCH / "history").glob("*.yaml")) if p != first]
    return stacks


def test_every_shipped_config_file_is_covered():
    covered = {path for stack in _stacks() for path in stack}
    claims = {RESEARCH / "claims.yaml", RESEARCH / "claims_ood.yaml"}  # `klear compare`'s, checked in test_compare
    assert covered == set(CONFIGS.rglob("*.yaml")) - claims


@pytest.mark.parametrize("stack", _stacks(), ids=lambda s: "+".join(str(p.relative_to(CONFIGS)) for p in s))
def test_shipped_config_parses_checks_and_builds_its_callbacks(stack):
    # A later stage's `model.init_from` names the previous stage's checkpoint, which a fresh clone lacks.
    args = [a for path in stack for a in ("--config", str(path))] + ["--model.init_from", "null"]
    config = parse_config(*args).config
    check_config(config)
    instantiate_callbacks(config)


def test_a_bad_callback_argument_is_one_config_error_naming_the_callback():
    config = parse_config("--config", str(RESEARCH / "baseline.yaml")).config
    benchmark = next(c for c in config.trainer.callbacks if c.class_path.endswith("BenchmarkCallback"))
    benchmark.init_args.metrics.metrics.append("wer_whisper")
    with pytest.raises(
        ConfigError,
        match=r"^trainer\.callbacks\[\d\] \(.*BenchmarkCallback\): metrics\.metrics: "
        r"unknown metric 'wer_whisper'",
    ):
        instantiate_callbacks(config)


def test_a_split_shift_for_a_split_not_trained_is_one_config_error():
    stack = ("--config", str(RESEARCH / "baseline.yaml"))
    check_config(parse_config(*stack).config)
    config = parse_config(*stack, "--model.timesteps.split_shift", "{sond: 1.0}").config
    with pytest.raises(ConfigError, match=r"^model\.timesteps\.split_shift: 'sond' is not a training split"):
        check_config(config)
