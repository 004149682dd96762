import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader

from klear_lightning.callbacks.sync_probe import SyncProbe, shift_in_time
from klear_lightning.flow import FlowMatching
from klear_lightning.streams import AVBatch, ModelOutputs


def test_shift_in_time_rolls_valid_frames_and_keeps_padding():
    x = torch.arange(12, dtype=torch.float32).reshape(2, 1, 6)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = shift_in_time(x, mask, 0.5)
    assert out[0, 0].tolist() == [3, 4, 5, 0, 1, 2]
    assert out[1, 0].tolist() == [8, 9, 6, 7, 10, 11]  # 4 valid frames shifted by 2, padding kept
    video = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 1, 6, 2, 2)  # (B, C, T, H, W)
    moved = shift_in_time(video, mask, 0.5)
    assert torch.equal(moved[0, :, 0], video[0, :, 3]) and torch.equal(moved[1, :, 1], video[1, :, 3])
    assert torch.equal(moved[1, :, 4:], video[1, :, 4:])


def av_batch(seed: int, b: int = 4, t: int = 8) -> AVBatch:
    """Video latents equal to the audio latents frame by frame: perfectly synchronised streams."""
    audio = torch.randn(b, 2, t, generator=torch.Generator().manual_seed(seed))
    return AVBatch(
        video=audio[..., None, None].clone(),
        video_mask=torch.ones(b, t, dtype=torch.bool),
        audio=audio,
        audio_mask=torch.ones(b, t, dtype=torch.bool),
        video_text=torch.zeros(b, 3, 4),
        video_text_mask=torch.ones(b, 3, dtype=torch.bool),
        audio_text=torch.zeros(b, 3, 4),
        audio_text_mask=torch.ones(b, 3, dtype=torch.bool),
        meta=[{} for _ in range(b)],
    )


class SyncAware(nn.Module):
    """Predicts each stream from the other at the same instant (the data's video equals its audio)."""

    def forward(self, inputs):
        return ModelOutputs(video=inputs.audio[..., None, None].clone(), audio=inputs.video[..., 0, 0].clone())


class Blind(nn.Module):
    def forward(self, inputs):
        return ModelOutputs(video=torch.zeros_like(inputs.video), audio=torch.zeros_like(inputs.audio))


class ProbeModule(L.LightningModule):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.flow = model, FlowMatching()
        self.weight = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return self.weight.sum()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class RecordingLogger(Logger):
    name, version = "recording", 0

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, float] = {}

    def log_metrics(self, metrics, step=None):
        self.records.update(metrics)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def probe(model: nn.Module, tmp_path) -> dict[str, float]:
    logger = RecordingLogger()
    loader = DataLoader([0, 1, 2], batch_size=1, collate_fn=lambda ix: av_batch(ix[0]))
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=logger,
        callbacks=[SyncProbe(times=(0.5, 0.9))],
        limit_train_batches=1,
        num_sanity_val_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(ProbeModule(model), loader, loader)
    return logger.records


def test_probe_is_zero_for_a_model_blind_to_the_other_stream(tmp_path):
    records = probe(Blind(), tmp_path)
    # same noise, same targets: the shifted other stream changes nothing for a blind model
    assert records["val/sync_probe/video"] == 0.0
    assert records["val/sync_probe/audio"] == 0.0
    assert records["val/sync_probe/video_n"] == 12  # 3 batches of 4


def test_probe_is_positive_for_a_model_that_uses_timing(tmp_path):
    records = probe(SyncAware(), tmp_path)
    assert records["val/sync_probe/video"] > 0.3
    assert records["val/sync_probe/audio"] > 0.3


def test_probe_rejects_bad_settings_and_modules_without_flow(tmp_path):
    with pytest.raises(ValueError, match="times"):
        SyncProbe(times=(0.0, 0.5))
    with pytest.raises(ValueError, match="shift_fraction"):
        SyncProbe(shift_fraction=1.0)

    class NoFlow(ProbeModule):
        flow = None

    module = NoFlow(Blind())
    module.flow = None
    loader = DataLoader([0], batch_size=1, collate_fn=lambda ix: av_batch(ix[0]))
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[SyncProbe()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(TypeError, match="NoFlow.flow and .model"):
        trainer.fit(module, loader, loader)


class SplitData(L.LightningDataModule):
    """Two validation splits: `synced` clips (video = audio) and `unrelated` (video independent of audio)."""

    val_splits = ["synced", "unrelated"]

    def _batch(self, ix):
        batch = av_batch(ix[0], t=32)
        if ix[0] % 2:
            batch.video = torch.randn(batch.video.shape, generator=torch.Generator().manual_seed(100 + ix[0]))
        for meta in batch.meta:
            meta["split"] = "unrelated" if ix[0] % 2 else "synced"
        return batch

    def train_dataloader(self):
        return DataLoader([0], batch_size=1, collate_fn=self._batch)

    def val_dataloader(self):
        return DataLoader(list(range(12)), batch_size=1, collate_fn=self._batch)


def test_probe_is_logged_per_validation_split(tmp_path):
    logger = RecordingLogger()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=logger,
        callbacks=[SyncProbe(times=(0.9,))],
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(ProbeModule(SyncAware()), datamodule=SplitData())
    r = logger.records
    assert r["val/sync_probe/video/synced_n"] == 24 and r["val/sync_probe/video/unrelated_n"] == 24
    assert r["val/sync_probe/video_n"] == 48
    # where the video follows the audio, the aligned audio predicts it; where it does not, no gain
    assert r["val/sync_probe/video/synced"] > 0.3
    assert abs(r["val/sync_probe/video/unrelated"]) < 0.1
    assert r["val/sync_probe/video/unrelated"] < r["val/sync_probe/video"] < r["val/sync_probe/video/synced"]
