"""EMA under a real Trainer: validation media come from the EMA weights; one update per optimizer step."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from klear_lightning.callbacks.ema import EMA


@pytest.mark.parametrize("ema_first", [True, False], ids=["ema_listed_first", "ema_listed_last"])
def test_validation_media_are_generated_with_the_ema_weights(tmp_path, ema_first: bool):
    """Under a real Trainer, whatever the callback order: the clip MediaLogger writes at validation
    is the EMA weights' generation, not the training weights' (the two differ here)."""
    import soundfile as sf

    from klear_lightning.callbacks.benchmark import head
    from klear_lightning.callbacks.media_logger import MediaLogger
    from klear_lightning.logging import KlearMLFlowLogger
    from klear_lightning.optim import OptimConfig
    from klear_lightning.sampling import SamplerConfig
    from tests.helpers.tiny import RandomAVData, tiny_module

    sampler = SamplerConfig(steps=2)
    ema = EMA(decay=0.5)
    media = MediaLogger(tasks=["t2a"], clips=1, sampler=sampler)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_steps=3,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=KlearMLFlowLogger(run_dir=str(tmp_path), experiment_name="ema"),
        callbacks=[ema, media] if ema_first else [media, ema],
    )
    module = tiny_module(optim=OptimConfig(lr=3e-2), task_weights={"t2a": 1.0})
    data = RandomAVData()
    trainer.fit(module, datamodule=data)
    logged, _ = sf.read(tmp_path / "media" / "step_0000003" / "t2a" / "t2a_0.wav", dtype="int16")

    def generated() -> torch.Tensor:
        clip = module.generate(head(data.val[0], 1), "t2a", sampler)[0]
        return torch.from_numpy((clip.audio.numpy() * 32767).round().astype("int16"))

    training = generated()
    ema.swap_in(module)
    with_ema = generated()
    ema.swap_out(module)
    assert (with_ema - training).abs().max() > 100  # the weights differ enough to tell apart
    assert (torch.from_numpy(logged) - with_ema).abs().max() <= 1


def test_ema_updates_once_per_optimizer_step_under_gradient_accumulation(tmp_path):
    """accumulate_grad_batches 4, 3 optimizer steps (12 micro-batches): 3 EMA updates, and the
    average is the formula over the weights after each optimizer step."""
    from tests.helpers.tiny import RandomAVData, tiny_module

    seen: dict[int, dict[str, torch.Tensor]] = {}  # weights after each optimizer step, by step

    class AfterStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[trainer.global_step] = {
                n: p.detach().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad
            }

    ema = EMA(decay=0.5)
    module = tiny_module()
    start = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_steps=3,
        accumulate_grad_batches=4,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[AfterStep(), ema],
    )
    trainer.fit(module, datamodule=RandomAVData())
    assert trainer.global_step == 3 and ema.updates == 3
    assert sorted(seen) == [0, 1, 2, 3]
    expected = start
    for step in (1, 2, 3):
        expected = {n: 0.5 * expected[n] + 0.5 * seen[step][n] for n in expected}
    for n, value in expected.items():
        torch.testing.assert_close(ema.shadow[n], value)
