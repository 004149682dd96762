"""aesthetic-predictor-v2.5 parity (the first component of Verse-Bench's AS): the project's SigLIP path
and head against the package itself.

The package is AGPL-3.0 and declares torchvision as a dependency (PyPI's torchvision is a CUDA build that
does not import beside torch 2.13 CPU), so it is not in the test extra: it was run once outside the
project (installed without dependencies) on `seeded_fan_in_state_dict` weights of a reduced SigLIP, and
its outputs are `references/aesthetic_v25.json`. Here the same weights are saved as the two official
files (a SigLIP directory with `vision_model.*` safetensors, and `aesthetic_predictor_v2_5.pth`) and
loaded through the project's loaders.
"""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks.parity import ParityResult, compare, load_reference
from benchmarks.parity.seeded import seeded_fan_in_state_dict, seeded_input
from klear_lightning.metrics import aesthetic
from klear_lightning.metrics.nets import aesthetic as aesthetic_net

FORMATS = (
    "aesthetic_predictor_v2_5.pth (the package's head state dict)",
    "SigLIP vision directory (config.json + model.safetensors), e.g. google/siglip-so400m-patch14-384",
)


def check() -> ParityResult:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    ref = load_reference("aesthetic_v25")
    seed = ref["seed"]
    config = SiglipVisionConfig(**ref["config"])
    head = aesthetic_net.AestheticV25Head(ref["config"]["hidden_size"])
    # the official key names (`vision_model.*`, as the released SigLIP files and the package's model)
    template = {
        **{f"vision_model.{k}": v for k, v in SiglipVisionModel(config).state_dict().items()},
        **{f"layers.{k}": v for k, v in head.state_dict().items()},
    }
    state = seeded_fan_in_state_dict(template, seed)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "siglip").mkdir()
        config.save_pretrained(Path(tmp) / "siglip")
        save_file(
            {k: v.contiguous() for k, v in state.items() if k.startswith("vision_model.")},
            Path(tmp) / "siglip" / "model.safetensors",
            metadata={"format": "pt"},
        )
        head_path = Path(tmp) / "aesthetic_predictor_v2_5.pth"
        torch.save(
            OrderedDict((k.removeprefix("layers."), v) for k, v in state.items() if k.startswith("layers.")), head_path
        )
        metric = aesthetic.AestheticV25VerseBench(
            aesthetic_net.load_siglip_vision(Path(tmp) / "siglip"), aesthetic_net.load_aesthetic_v25_head(head_path)
        )
    frames = (seeded_input((2, 200, 300, 3), seed + 1) * 256).floor().clamp(max=255).to(torch.uint8)
    pixels = aesthetic.siglip_inputs(frames)
    worst, per = compare(
        [
            ("pixels", pixels.flatten()[::997], ref["pixels_every_997"]),
            ("pixel_sums", pixels.double().sum((1, 2, 3)), ref["pixel_sums"]),
            ("scores", metric.frame_scores(frames), ref["scores"]),
        ]
    )
    return ParityResult(
        extractor="aesthetic_v25",
        reference=f"{ref['official']}; committed outputs (references/aesthetic_v25.json, seed {seed}): processor "
        "pixels and scores",
        max_rel_diff=worst,
        checkpoint_format=FORMATS,
        details=per,
    )


if __name__ == "__main__":
    print(check())
