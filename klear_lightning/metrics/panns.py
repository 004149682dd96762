"""PANNs Cnn14 (`metrics.nets.cnn14`, 16 kHz) run as av-benchmark runs it for FD and KL: clip by
clip at 16 kHz, at least one second (zero-padded), TF32 convolutions off."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from klear_lightning.media import MediaClip
from klear_lightning.metrics.audio_prep import clip_audio
from klear_lightning.metrics.base import BuildContext
from klear_lightning.metrics.nets.cnn14 import SAMPLE_RATE, Cnn14, PannsOutput, load_cnn14


class PannsExtractor:
    """Runs Cnn14 clip by clip (pooling over time makes padding change the result), with TF32
    convolutions off so scores do not depend on the GPU; remembers the last batch so FD and KL
    on the same clips run the network once."""

    def __init__(self, model: Cnn14, min_seconds: float = 1.0) -> None:
        self.model = model
        self.min_samples = int(min_seconds * SAMPLE_RATE)
        self._last: tuple[list[Tensor], PannsOutput] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def __call__(self, clips: Sequence[MediaClip]) -> PannsOutput:
        if (
            self._last is not None
            and len(self._last[0]) == len(clips)
            and all(a is c.audio for a, c in zip(self._last[0], clips))
        ):
            return self._last[1]
        outs = []
        for clip in clips:
            wave = clip_audio(clip, SAMPLE_RATE, "PANNs")
            if wave.numel() < self.min_samples:
                wave = F.pad(wave, (0, self.min_samples - wave.numel()))
            with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
                outs.append(self.model(wave[None].to(self.device)))
        out = PannsOutput(
            embedding=torch.cat([o.embedding for o in outs]).double().cpu(),
            logits=torch.cat([o.logits for o in outs]).double().cpu(),
        )
        self._last = ([c.audio for c in clips], out)
        return out


def panns_extractor(ctx: BuildContext) -> PannsExtractor:
    """The shared Cnn14 extractor from `metrics.checkpoints.panns`."""
    return ctx.load(
        "panns",
        "a PANNs Cnn14 16 kHz checkpoint (Cnn14_16k_mAP=0.438.pth, zenodo 3987831)",
        lambda path: PannsExtractor(load_cnn14(path, ctx.device)),
    )
