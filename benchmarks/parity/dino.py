"""DINO (v1) parity: the project's ViT against facebookresearch/dino's `vision_transformer`.

The reference (`references/dino.json`) was made by running DINO's own `vit_small` once outside the
project on `seeded_fan_in_state_dict` weights. Here the same weights are written as a DINO training
`checkpoint.pth` (the teacher under `backbone.`, its DINO head, an argparse `args`) and loaded
through `load_dino` (the allow-list reader).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.parity import ParityResult, compare, load_reference
from benchmarks.parity.seeded import seeded_fan_in_state_dict, seeded_input
from klear_lightning.metrics.nets import dino

FORMATS = (
    "dino_deitsmall16_pretrain.pth and the other released backbones (plain state dicts)",
    "DINO training checkpoint.pth (teacher weights, `backbone.` / `module.` prefixes, argparse `args`)",
)


def check() -> ParityResult:
    ref = load_reference("dino")
    seed = ref["seed"]
    template = dino.DinoViT().state_dict()
    if sorted(template) != ref["keys"]:
        return ParityResult(
            "dino_vits16",
            ref["official"],
            float("inf"),
            FORMATS,
            details={"keys": "the project's key layout differs from DINO's"},
        )
    state = seeded_fan_in_state_dict(template, seed)
    teacher = {f"backbone.{k}": v for k, v in state.items()}
    teacher["head.last_layer.weight_g"] = torch.ones(65536, 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pth"
        torch.save({"teacher": teacher, "epoch": 100, "args": argparse.Namespace(arch="vit_small")}, path)
        net = dino.load_dino(path)
    with torch.no_grad():
        cls = net(seeded_input((2, 3, 224, 224), seed + 1, -2.0, 2.0))
    worst, per = compare([("cls_feature", cls, ref["cls"])])
    return ParityResult(
        extractor="dino_vits16",
        reference=f"{ref['official']}; committed outputs (references/dino.json, seed {seed}): CLS features",
        max_rel_diff=worst,
        checkpoint_format=FORMATS,
        details=per,
    )


if __name__ == "__main__":
    print(check())
