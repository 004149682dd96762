"""Every config field is documented where it is declared, and `klear fit --help` shows that text."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import docstring_parser

from klear_lightning.callbacks import EMA, BenchmarkCallback, MediaLogger, Rebalance, SyncProbe
from klear_lightning.data.datamodule import AVDataModule
from klear_lightning.lightning_cli import parse_config
from klear_lightning.logging import KlearMLFlowLogger
from klear_lightning.module import KlearModule
from tests.helpers import ROOT

CONFIGURABLE = (KlearModule, AVDataModule, EMA, BenchmarkCallback, MediaLogger, Rebalance, SyncProbe, KlearMLFlowLogger)
DEMO = ROOT / "configs" / "demo.yaml"


def descriptions(obj: type) -> dict[str, str]:
    """Argument / field descriptions of a class (Google style: its docstring's `Args:`, and its __init__'s)."""
    found = {p.arg_name: p.description or "" for p in docstring_parser.parse(inspect.getdoc(obj) or "").params}
    if not dataclasses.is_dataclass(obj):
        init = docstring_parser.parse(inspect.getdoc(obj.__init__) or "")
        found |= {p.arg_name: p.description or "" for p in init.params}
    return found


def config_dataclasses(tp: typing.Any, seen: set[type]) -> set[type]:
    """The dataclasses a type hint names, and those their fields name, recursively."""
    for t in typing.get_args(tp) or (tp,):
        if dataclasses.is_dataclass(t) and isinstance(t, type) and t not in seen:
            seen.add(t)
            hints = typing.get_type_hints(t)
            for f in dataclasses.fields(t):
                config_dataclasses(hints[f.name], seen)
        elif typing.get_args(t):
            config_dataclasses(t, seen)
    return seen


def test_every_config_argument_and_field_is_documented_where_declared():
    missing, dataclasses_seen = [], set()
    for cls in CONFIGURABLE:
        hints = typing.get_type_hints(cls.__init__)
        documented = descriptions(cls)
        for name in list(inspect.signature(cls.__init__).parameters)[1:]:
            if not documented.get(name, "").strip():
                missing.append(f"{cls.__name__}.{name}")
            config_dataclasses(hints.get(name), dataclasses_seen)
    assert {"ModelConfig", "OptimConfig", "ParallelConfig", "SamplerConfig", "ClipSpec"} <= {
        c.__name__ for c in dataclasses_seen
    }
    for dc in dataclasses_seen:
        documented = descriptions(dc)
        missing += [f"{dc.__name__}.{f.name}" for f in dataclasses.fields(dc) if not documented.get(f.name, "").strip()]
    assert not missing, f"undocumented config fields: {sorted(missing)}"


def test_fit_help_shows_each_model_field_meaning():
    helps = {action.dest: action.help or "" for action in parse_config("--config", str(DEMO)).parser._actions}
    module = typing.get_type_hints(KlearModule.__init__)
    shown = 0
    for arg in ("net", "timesteps", "optim", "parallel", "val_sampler"):
        documented = descriptions(module[arg])
        for field in dataclasses.fields(module[arg]):
            key = f"model.{arg}.{field.name}"
            if key in helps:  # fields linked from the data module are not options
                assert helps[key].startswith(documented[field.name].split("\n")[0][:40]), key
                shown += 1
    assert shown >= 40
