"""KlearModule: training step, logging breakdown, non-finite skip, LR schedule, generate.

`RandomAVData` is a tiny stateful in-memory data module (a legitimate test double of the real
AVDataModule: same batch type, geometry attributes and resumable iteration); other test files
import it from here.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from klear_lightning.checkpoint import CheckpointError
from klear_lightning.codecs import Decoders
from klear_lightning.models import ModelConfig
from klear_lightning.module import KlearModule
from klear_lightning.optim import OptimConfig, lr_factor
from klear_lightning.sampling import SamplerConfig
from klear_lightning.sequence import ClipSpec, LatentGeometry, SequenceSpec
from klear_lightning.streams import AVBatch

TEXT_DIM = 16
GEOMETRY = LatentGeometry(
    video_channels=4, video_temporal_factor=4, video_spatial_factor=8, video_causal=True, audio_channels=4, audio_hop=2000
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
        dim=32, depth=2, heads=2, text_dim=TEXT_DIM, video_channels=GEOMETRY.video_channels,
        audio_channels=GEOMETRY.audio_channels, video_latent_fps=SEQUENCE.video_latent_fps,
        audio_latent_fps=SEQUENCE.audio_latent_fps, attention_backend="reference",
    )
    base.update(overrides)
    return ModelConfig.preset("tiny", **base)


def tiny_module(**overrides: Any) -> KlearModule:
    kwargs: dict[str, Any] = dict(net=tiny_config(), optim=OptimConfig(lr=1e-3), caption_dropout=0.1)
    kwargs.update(overrides)
    module = KlearModule(**kwargs)
    module.configure_model()
    return module


def _trainer(tmp_path, steps: int, **kw: Any) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **kw,
    )


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    got = [lr_factor(s, cfg, total_steps=14) for s in range(15)]
    assert got[:4] == [0.25, 0.5, 0.75, 1.0]
    assert got[4] == pytest.approx(1.0)
    assert got[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert got[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(got[4:], got[5:]))


def test_training_reduces_loss_and_logs_breakdown(tmp_path):
    module = tiny_module(task_weights={"t2av": 1.0, "t2v": 1.0, "t2a": 1.0}, caption_dropout=0.0, optim=OptimConfig(lr=3e-3))
    data = RandomAVData(batch_size=4)
    fixed = data.val[0]
    gen = (torch.Generator().manual_seed(5), torch.Generator().manual_seed(5))
    before = module._loss(fixed, gen, 0.0)[0].total.item()
    data.train_dataloader = lambda: DataLoader([fixed] * 200, batch_size=None)
    trainer = _trainer(tmp_path, steps=40)
    trainer.fit(module, datamodule=data)
    logged = trainer.logged_metrics
    assert "train/loss" in logged and "train/loss_video" in logged and "train/loss_audio" in logged
    assert any(k.startswith("train/loss_task/") for k in logged)
    assert any(k.startswith("train/loss_t/") for k in logged)
    gen = (torch.Generator().manual_seed(5), torch.Generator().manual_seed(5))
    after = module._loss(fixed, gen, 0.0)[0].total.item()
    assert after < 0.92 * before  # fresh noise every step: the floor is the noise variance


def test_breakdown_matches_per_sample_losses():
    module = tiny_module(lambda_video=1.0, lambda_audio=0.5)
    batch = random_batch(torch.Generator().manual_seed(1), batch_size=6)
    terms, fs, tasks = module._loss(batch, (torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)), 0.0)
    got = module._breakdown(terms, fs, tasks.names)
    per = terms.video_per_sample + 0.5 * terms.audio_per_sample
    for name in set(tasks.names):
        idx = [i for i, n in enumerate(tasks.names) if n == name]
        assert got[f"loss_task/{name}"] == pytest.approx(per[idx].mean().item(), rel=1e-5)
    assert sum(k.startswith("loss_t/") for k in got) >= 1


def test_audio_frames_of_a_partial_token_are_never_supervised():
    """audio_patch 2 and a clip with 7 of 8 audio latent frames: its last token is partial, so the
    model treats it as padding (output 0); none of its frames may be in the loss, and every
    supervised frame is one the model predicts."""
    module = tiny_module(net=tiny_config(audio_patch=2), task_weights={"t2a": 1.0, "t2av": 1.0})
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    batch = random_batch(torch.Generator().manual_seed(1), batch_size=2)
    batch.audio_mask[0, 7:] = False
    terms, fs, _ = module._loss(batch, (torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)), 0.0)
    assert fs.audio_loss_mask[0].tolist() == [True] * 6 + [False] * 2
    assert fs.audio_loss_mask[1].all()
    predicted = module.model(fs.inputs).audio.abs().sum(1) > 0
    assert predicted[fs.audio_loss_mask].all()
    assert terms.audio_count[0] == 6 * GEOMETRY.audio_channels


def _validate(module: KlearModule, data: L.LightningDataModule, tmp_path) -> dict[str, float]:
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=data, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_validation_scores_every_task_on_every_clip_whatever_the_task_weights(tmp_path):
    """The per-task validation losses the rebalancer reads are measured on the same clips, t and
    noise at every validation: changing the training task weights leaves them unchanged."""
    module = tiny_module(task_weights={"t2v": 1.0, "t2a": 1.0, "t2av": 1.0, "a2v": 1.0})
    data = RandomAVData(val_batches=2)
    before = _validate(module, data, tmp_path)
    assert {k for k in before if k.startswith("val/loss_task/")} == {f"val/loss_task/{t}" for t in ("t2v", "t2a", "t2av", "a2v")}
    module.task_sampler.set_weights({"t2v": 0.97, "t2a": 0.01, "t2av": 0.01, "a2v": 0.01})
    after = _validate(module, data, tmp_path)
    assert after == before


def test_validation_noise_and_times_differ_between_ranks():
    """Each rank validates its own clips with its own t and noise (not rank 0's draws again)."""
    from types import SimpleNamespace

    module = tiny_module(task_weights={"t2av": 1.0})
    module.log = lambda *args, **kwargs: None
    module.on_validation_epoch_start()
    batch = random_batch(torch.Generator().manual_seed(3))

    def loss(rank: int) -> float:
        module._trainer = SimpleNamespace(global_rank=rank)
        return module.validation_step(batch, 0).item()

    assert loss(0) == loss(0)
    assert loss(1) != loss(0)


class _NanAfter(KlearModule):
    """Produces a NaN loss on chosen global steps (by poisoning the batch)."""

    nan_steps: set[int] = set()

    def training_step(self, batch: AVBatch, batch_idx: int):
        if batch_idx in self.nan_steps:
            batch.video = batch.video * float("nan")
        return super().training_step(batch, batch_idx)


def test_nonfinite_loss_skips_update_then_stops(tmp_path):
    module = _NanAfter(net=tiny_config(), optim=OptimConfig(lr=1e-3), max_nonfinite=3)
    module.configure_model()
    module.nan_steps = {2}
    data = RandomAVData()
    seen: list[dict[str, Tensor]] = []

    class Snap(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    _trainer(tmp_path, steps=4, callbacks=[Snap()]).fit(module, datamodule=data)
    assert module.nonfinite_total == 1 and module.nonfinite_in_row == 0
    assert all(torch.equal(seen[1][k], seen[2][k]) for k in seen[1])
    assert not all(torch.equal(seen[2][k], seen[3][k]) for k in seen[2])
    assert all(torch.isfinite(v).all() for v in seen[-1].values())

    module = _NanAfter(net=tiny_config(), max_nonfinite=3)
    module.configure_model()
    module.nan_steps = set(range(100))
    with pytest.raises(RuntimeError, match="3 non-finite losses in a row"):
        _trainer(tmp_path, steps=10).fit(module, datamodule=RandomAVData())


def test_generate_returns_media_for_each_task():
    module = tiny_module()
    module.decoders = RandomAVData().decoders()
    batch = random_batch(torch.Generator().manual_seed(2), batch_size=2)
    clips = module.generate(batch, "t2v", SamplerConfig(steps=2))
    assert len(clips) == 2 and clips[0].audio is None
    assert clips[0].video.dtype == torch.uint8 and clips[0].video.shape == (SEQUENCE.video_latent_frames, 16, 16, 3)
    clips = module.generate(batch, "t2a", SamplerConfig(steps=2))
    assert clips[0].video is None and clips[0].audio.shape == (SEQUENCE.clip.samples,)
    clips = module.generate(batch, "v2a", SamplerConfig(steps=2))
    ref = module.reference_media(batch)
    assert torch.equal(clips[0].video, ref[0].video)
    assert clips[0].meta["key"] == "k0"


def test_init_from_previous_stage_checkpoint(tmp_path):
    module = tiny_module()
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(module, datamodule=RandomAVData())
    path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(path)
    nxt = tiny_module(init_from=str(path))
    for k, v in module.model.state_dict().items():
        assert torch.equal(nxt.model.state_dict()[k], v), k
    with pytest.raises(CheckpointError, match="^model.init_from: no checkpoint file at "):
        tiny_module(init_from=str(tmp_path / "missing.ckpt"))


def test_media_logger_logs_mp4_wav_png_to_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    from klear_lightning.callbacks.media_logger import MediaLogger
    from klear_lightning.logging import KlearMLFlowLogger

    logger = KlearMLFlowLogger(run_dir=str(tmp_path), experiment_name="media")
    media = MediaLogger(tasks=["t2av"], clips=1, sampler=SamplerConfig(steps=1))
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=1, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                        num_sanity_val_steps=0, val_check_interval=1, check_val_every_n_epoch=None,
                        callbacks=[media])
    trainer.fit(tiny_module(), datamodule=RandomAVData())
    client = MlflowClient(logger._tracking_uri)
    names = [f.path for f in client.list_artifacts(logger.run_id, "media/step_0000001/t2av")]
    assert len(client.list_artifacts(logger.run_id, "media/reference")) == 3
    assert sorted(p.rsplit("/", 1)[1] for p in names) == ["panel.png", "t2av_0.mp4", "t2av_0.wav", "t2av_0_spectrogram.png"]
    assert any(k.startswith("val/loss_task/") for k in trainer.callback_metrics)
    from PIL import Image

    panel = Image.open(tmp_path / "media" / "step_0000001" / "t2av" / "panel.png")
    assert panel.size[0] > 3 * panel.size[1]  # one row: frames and spectrogram, generated beside ground truth


def test_test_and_predict_loops(tmp_path):
    module = tiny_module(predict_task="t2a", val_sampler=SamplerConfig(steps=1))
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    result = trainer.test(module, datamodule=RandomAVData(val_batches=2))
    assert result[0]["test/loss"] > 0
    predictions = trainer.predict(module, datamodule=RandomAVData(batch_size=2))
    clips = predictions[0]
    assert len(clips) == 2 and clips[0].video is None and clips[0].audio.shape == (SEQUENCE.clip.samples,)
