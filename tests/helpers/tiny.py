"""A tiny KlearModule and an in-memory data module for it.

`RandomAVData` is a small stateful data module (a legitimate test double of the real AVDataModule:
same batch type, geometry attributes and resumable iteration); subprocess configs name it as
`tests.helpers.tiny.RandomAVData` (the subprocess needs the repository root on PYTHONPATH).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from klear_lightning.codecs import Decoders
from klear_lightning.models import ModelConfig
from klear_lightning.module import KlearModule
from klear_lightning.optim import OptimConfig
from klear_lightning.sequence import ClipSpec, LatentGeometry, SequenceSpec
from klear_lightning.streams import AVBatch

TEXT_DIM = 16
GEOMETRY = LatentGeometry(
    video_channels=4,
    video_temporal_factor=4,
    video_spatial_factor=8,
    video_causal=True,
    audio_channels=4,
    audio_hop=2000,
)
SEQUENCE = SequenceSpec(ClipSpec(duration=1.0, fps=9.0, height=16, width=16, sample_rate=16000), GEOMETRY)


def random_batch(gen: torch.Generator, batch_size: int = 4) -> AVBatch:
    s = SEQUENCE
    tv, (h, w), ta = s.video_latent_frames, s.video_latent_hw, s.audio_latent_frames
    lengths = torch.randint(2, 6, (batch_size,), generator=gen)
    text_mask = torch.arange(6)[None] < lengths[:, None]
    return AVBatch(
        video=torch.randn(batch_size, GEOMETRY.video_channels, tv, h, w, generator=gen),
        video_mask=torch.ones(batch_size, tv, dtype=torch.bool),
        audio=torch.randn(batch_size, GEOMETRY.audio_channels, ta, generator=gen),
        audio_mask=torch.ones(batch_size, ta, dtype=torch.bool),
        video_text=torch.randn(batch_size, 6, TEXT_DIM, generator=gen),
        video_text_mask=text_mask,
        audio_text=torch.randn(batch_size, 6, TEXT_DIM, generator=gen),
        audio_text_mask=text_mask.clone(),
        meta=[{"key": f"k{i}", "video_caption": "a ball", "audio_caption": "a bounce"} for i in range(batch_size)],
    )


class _Stream(IterableDataset):
    """Endless random batches; batch i is drawn from seed (seed, i), so a stream restarted at the
    number of consumed batches continues exactly (the resumable-loader contract)."""

    def __init__(self, seed: int, batch_size: int, start: int = 0) -> None:
        self.seed, self.batch_size, self.start = seed, batch_size, start

    def __iter__(self):
        i = self.start
        while True:
            yield random_batch(torch.Generator().manual_seed(self.seed * 100_003 + i), self.batch_size)
            i += 1


class RandomAVData(L.LightningDataModule):
    """Random latents with the geometry of `SEQUENCE`; exposes `sequence`, `text_dim`, `decoders()`."""

    def __init__(self, seed: int = 0, batch_size: int = 4, val_batches: int = 1) -> None:
        super().__init__()
        self.sequence = SEQUENCE
        self.text_dim = TEXT_DIM
        self.seed, self.batch_size = seed, batch_size
        self.val = [random_batch(torch.Generator().manual_seed(seed + 1), batch_size) for _ in range(val_batches)]

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step if self.trainer is not None else 0
        return DataLoader(_Stream(self.seed, self.batch_size, start), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=None)

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader

    def decoders(self) -> Decoders:
        return Decoders(video_codec=_PixelDecoder(), audio_codec=_WaveDecoder(), fps=9.0, sample_rate=16000)


class _PixelDecoder:
    """(B, C, T, H, W) latents -> uint8 (B, T, 8H, 8W, 3): nearest upsampling of the first 3 channels."""

    def decode(self, lat: Tensor) -> Tensor:
        x = lat[:, :3].clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
        x = x.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)
        return x.permute(0, 2, 3, 4, 1).contiguous()


class _WaveDecoder:
    """(B, C, T) -> (B, T * hop): the channel mean held for `hop` samples."""

    def decode(self, lat: Tensor) -> Tensor:
        return lat.mean(1).repeat_interleave(GEOMETRY.audio_hop, dim=1).tanh()


def tiny_config(**overrides: Any) -> ModelConfig:
    base = dict(
        dim=32,
        depth=2,
        heads=2,
        text_dim=TEXT_DIM,
        video_channels=GEOMETRY.video_channels,
        audio_channels=GEOMETRY.audio_channels,
        video_latent_fps=SEQUENCE.video_latent_fps,
        audio_latent_fps=SEQUENCE.audio_latent_fps,
        attention_backend="reference",
    )
    base.update(overrides)
    return ModelConfig.preset("tiny", **base)


def tiny_module(**overrides: Any) -> KlearModule:
    kwargs: dict[str, Any] = dict(net=tiny_config(), optim=OptimConfig(lr=1e-3), caption_dropout=0.1)
    kwargs.update(overrides)
    module = KlearModule(**kwargs)
    module.configure_model()
    return module


def quiet_trainer(tmp_path, steps: int, **kw: Any) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **kw,
    )
