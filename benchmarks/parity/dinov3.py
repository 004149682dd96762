"""DINOv3 parity (Verse-Bench ID): the project runs transformers' own `DINOv3ViTModel` (the registry
implementation Verse-Bench's pipeline runs), so the network is the official one by construction; this
check compares the project's preprocessing (`dinov3_inputs`) with transformers' DINOv3 image processor.
That processor imports torchvision; PyPI's torchvision is a CUDA build that does not import beside
torch 2.13 CPU, so on such a machine the check is skipped, naming the package.
"""

from __future__ import annotations

import torch

from benchmarks.parity import ParityResult, compare, skipped
from benchmarks.parity.seeded import seeded_input
from klear_lightning.metrics.identity import dinov3_inputs

FORMATS = ("Hugging Face directory (config.json + model.safetensors), e.g. dinov3-vitl16-pretrain-lvd1689m",)
REFERENCE = "transformers' DINOv3ViTImageProcessor (what Verse-Bench's image-feature-extraction pipeline runs)"


def check() -> ParityResult:
    try:
        from transformers import DINOv3ViTImageProcessor

        processor = DINOv3ViTImageProcessor()
    except (ImportError, RuntimeError) as err:
        return skipped(
            "dinov3_vitl16",
            REFERENCE,
            FORMATS,
            f"torchvision (needed by transformers' DINOv3 image processor) does not import here: "
            f"{str(err).strip().splitlines()[0][:120]}",
        )
    frames = (seeded_input((2, 180, 320, 3), 1305) * 256).floor().clamp(max=255).to(torch.uint8)
    theirs = processor(images=list(frames.numpy()), return_tensors="pt").pixel_values
    worst, per = compare([("pixel_values", dinov3_inputs(frames), theirs)])
    return ParityResult("dinov3_vitl16", REFERENCE, worst, FORMATS, details=per)


if __name__ == "__main__":
    print(check())
