"""KlearModule under a Lightning Trainer: training, validation, non-finite skip, init_from, media logging,
test and predict loops."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from klear_lightning.checkpoint import CheckpointError
from klear_lightning.module import KlearModule
from klear_lightning.optim import OptimConfig
from klear_lightning.sampling import SamplerConfig
from klear_lightning.streams import AVBatch
from tests.helpers.tiny import SEQUENCE, RandomAVData, quiet_trainer, tiny_config, tiny_module


def test_training_reduces_loss_and_logs_breakdown(tmp_path):
    module = tiny_module(
        task_weights={"t2av": 1.0, "t2v": 1.0, "t2a": 1.0}, caption_dropout=0.0, optim=OptimConfig(lr=3e-3)
    )
    data = RandomAVData(batch_size=4)
    fixed = data.val[0]
    gen = (torch.Generator().manual_seed(5), torch.Generator().manual_seed(5))
    before = module._loss(fixed, gen, 0.0)[0].total.item()
    data.train_dataloader = lambda: DataLoader([fixed] * 200, batch_size=None)
    trainer = quiet_trainer(tmp_path, steps=40)
    trainer.fit(module, datamodule=data)
    logged = trainer.logged_metrics
    assert "train/loss" in logged and "train/loss_video" in logged and "train/loss_audio" in logged
    assert any(k.startswith("train/loss_task/") for k in logged)
    assert any(k.startswith("train/loss_t/") for k in logged)
    gen = (torch.Generator().manual_seed(5), torch.Generator().manual_seed(5))
    after = module._loss(fixed, gen, 0.0)[0].total.item()
    assert after < 0.92 * before  # fresh noise every step: the floor is the noise variance


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
    assert {k for k in before if k.startswith("val/loss_task/")} == {
        f"val/loss_task/{t}" for t in ("t2v", "t2a", "t2av", "a2v")
    }
    module.task_sampler.set_weights({"t2v": 0.97, "t2a": 0.01, "t2av": 0.01, "a2v": 0.01})
    after = _validate(module, data, tmp_path)
    assert after == before


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

    quiet_trainer(tmp_path, steps=4, callbacks=[Snap()]).fit(module, datamodule=data)
    assert module.nonfinite_total == 1 and module.nonfinite_in_row == 0
    assert all(torch.equal(seen[1][k], seen[2][k]) for k in seen[1])
    assert not all(torch.equal(seen[2][k], seen[3][k]) for k in seen[2])
    assert all(torch.isfinite(v).all() for v in seen[-1].values())

    module = _NanAfter(net=tiny_config(), max_nonfinite=3)
    module.configure_model()
    module.nan_steps = set(range(100))
    with pytest.raises(RuntimeError, match="3 non-finite losses in a row"):
        quiet_trainer(tmp_path, steps=10).fit(module, datamodule=RandomAVData())


def test_init_from_previous_stage_checkpoint(tmp_path):
    module = tiny_module()
    trainer = quiet_trainer(tmp_path, steps=2)
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
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_steps=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        val_check_interval=1,
        check_val_every_n_epoch=None,
        callbacks=[media],
    )
    trainer.fit(tiny_module(), datamodule=RandomAVData())
    client = MlflowClient(logger._tracking_uri)
    names = [f.path for f in client.list_artifacts(logger.run_id, "media/step_0000001/t2av")]
    assert len(client.list_artifacts(logger.run_id, "media/reference")) == 3
    assert sorted(p.rsplit("/", 1)[1] for p in names) == [
        "panel.png",
        "t2av_0.mp4",
        "t2av_0.wav",
        "t2av_0_spectrogram.png",
    ]
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
