"""EMA callback: the average follows its formula, validation swaps weights in and out, state round-trips."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from klear_lightning.callbacks.ema import EMA


class _Holder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = nn.Linear(3, 2)


class _Steps:
    """The trainer as the EMA sees it: its optimizer-step count."""

    def __init__(self) -> None:
        self.global_step = 0


def test_ema_follows_formula_and_swaps():
    module, trainer = _Holder(), _Steps()
    ema = EMA(decay=0.9)
    ema.on_fit_start(trainer, module)
    start = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    expected = {n: v.clone() for n, v in start.items()}
    for step in range(3):
        with torch.no_grad():
            for p in module.model.parameters():
                p.add_(1.0 + step)
        trainer.global_step += 1
        ema.on_train_batch_end(trainer, module, torch.tensor(1.0), None, step)
        for n, p in module.model.named_parameters():
            expected[n] = 0.9 * expected[n] + 0.1 * p.detach()
    for n in expected:
        torch.testing.assert_close(ema.shadow[n], expected[n])
    trained = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    ema.on_validation_start(None, module)
    for n, p in module.model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n])
    ema.on_validation_end(None, module)
    for n, p in module.model.named_parameters():
        assert torch.equal(p.detach(), trained[n])


def test_skipped_step_does_not_update_and_state_round_trips():
    module, trainer = _Holder(), _Steps()
    ema = EMA(decay=0.5, warmup_steps=0)
    ema.on_fit_start(trainer, module)
    before = {n: t.clone() for n, t in ema.shadow.items()}
    with torch.no_grad():
        module.model.weight.add_(10.0)
    ema.on_train_batch_end(trainer, module, torch.tensor(0.0), None, 0)  # no optimizer step yet: no update
    trainer.global_step += 1
    ema.on_train_batch_end(trainer, module, None, None, 1)  # a skipped (non-finite) step: no update
    assert all(torch.equal(before[n], ema.shadow[n]) for n in before) and ema.updates == 0
    trainer.global_step += 1
    ema.on_train_batch_end(trainer, module, torch.tensor(0.0), None, 2)
    state = ema.state_dict()
    restored = EMA(decay=0.5)
    restored.load_state_dict(state)
    restored.on_fit_start(trainer, module)
    assert restored.updates == 1
    assert all(torch.equal(restored.shadow[n], ema.shadow[n]) for n in ema.shadow)


def test_warmup_decay_and_bad_decay():
    ema = EMA(decay=0.999, warmup_steps=100)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.updates = 1000
    assert ema.current_decay() == 0.999
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.0)
