"""Curriculum rebalancing: the documented rule on known inputs, and the callback wiring."""

from __future__ import annotations

import logging

import pytest
import torch

from klear_lightning.callbacks.rebalance import Rebalance, rebalance


def test_rule_matches_formula_on_known_inputs():
    w = {"a": 0.5, "b": 0.5}
    base = {"a": 0.5, "b": 0.5}
    got = rebalance(w, base, {"a": 3.0, "b": 1.0}, rate=0.5, power=1.0, min_weight=0.0)
    # mean score 2: target a = 0.5 * 1.5 = 0.75, b = 0.5 * 0.5 = 0.25 (already sums to 1)
    assert got["a"] == pytest.approx(0.5 * 0.5 + 0.5 * 0.75)
    assert got["b"] == pytest.approx(0.5 * 0.5 + 0.5 * 0.25)
    assert sum(got.values()) == pytest.approx(1.0)


def test_weakest_gains_unscored_keeps_share_floor_holds():
    w = {"t2v": 0.4, "t2a": 0.4, "t2av": 0.2}
    got = rebalance(w, w, {"t2v": 10.0, "t2a": 0.001}, rate=1.0, power=2.0, min_weight=0.05)
    assert got["t2v"] > 0.4 > got["t2a"]
    assert got["t2a"] >= 0.05 / (1 + 0.05)
    assert got["t2av"] == pytest.approx(0.2, rel=0.1)
    same = rebalance(w, w, {"t2v": 1.0, "t2a": 1.0, "t2av": 1.0}, rate=0.5, power=1.0, min_weight=0.0)
    assert same == pytest.approx({k: v for k, v in w.items()})
    with pytest.raises(ValueError, match="rate"):
        Rebalance(rate=0.0)


class _Module:
    def __init__(self):
        from klear_lightning.tasks import TaskSampler

        self.task_sampler = TaskSampler({"t2v": 1.0, "t2a": 1.0})


class _Data:
    def __init__(self):
        self.weights = {"sound": 0.5, "speech_single": 0.5}
        self.calls = []

    def split_weights(self):
        return dict(self.weights)

    def set_split_weights(self, w):
        self.calls.append(dict(w))
        self.weights = dict(w)


class _Trainer:
    sanity_checking = False
    global_step = 7
    is_global_zero = True

    def __init__(self, metrics):
        self.callback_metrics = metrics
        self.datamodule = _Data()
        self.loggers = []


def _validations(cb: Rebalance, trainer: _Trainer, module: _Module, *metrics: dict[str, float]) -> None:
    for m in metrics:
        trainer.callback_metrics = {k: torch.tensor(v) for k, v in m.items()}
        cb.on_validation_end(trainer, module)


def test_callback_moves_task_and_split_weights_and_restores():
    trainer, module = _Trainer({}), _Module()
    cb = Rebalance(rate=0.5)
    cb.on_fit_start(trainer, module)
    start = {
        "val/loss_task/t2v": 2.0,
        "val/loss_task/t2a": 1.0,
        "val/loss_split/sound": 1.0,
        "val/loss_split/speech_single": 1.0,
    }
    later = {
        "val/loss_task/t2v": 1.8,
        "val/loss_task/t2a": 0.5,
        "val/loss_split/sound": 0.5,
        "val/loss_split/speech_single": 0.9,
    }
    _validations(cb, trainer, module, start, later)
    assert module.task_sampler.weights["t2v"] > 0.5 > module.task_sampler.weights["t2a"]
    assert trainer.datamodule.weights["speech_single"] > 0.5
    state = cb.state_dict()
    fresh, trainer2 = Rebalance(rate=0.5), _Trainer({})
    fresh.load_state_dict(state)
    fresh.on_fit_start(trainer2, _Module())
    assert trainer2.datamodule.weights == pytest.approx(trainer.datamodule.weights)
    assert fresh.reference == cb.reference  # the stage's first validation stays the reference on resume


def test_score_is_each_loss_relative_to_the_stages_first_validation():
    """t2v's loss is intrinsically higher but halved since the stage started; t2a's fell by 10 %:
    t2a is the weaker ability now and gains weight (the raw losses would favour t2v)."""
    trainer, module = _Trainer({}), _Module()
    cb = Rebalance(rate=1.0, split_metric=None)
    cb.on_fit_start(trainer, module)
    _validations(cb, trainer, module, {"val/loss_task/t2v": 2.0, "val/loss_task/t2a": 0.5})
    assert module.task_sampler.weights == pytest.approx({"t2v": 0.5, "t2a": 0.5})  # the reference: no move
    _validations(cb, trainer, module, {"val/loss_task/t2v": 1.0, "val/loss_task/t2a": 0.45})
    w = module.task_sampler.weights
    # scores 0.5 and 0.9, mean 0.7: targets 0.5 * 0.5 / 0.7 and 0.5 * 0.9 / 0.7
    assert w["t2a"] == pytest.approx(0.9 / 1.4) and w["t2v"] == pytest.approx(0.5 / 1.4)


def test_maximize_gives_the_worst_item_more_weight_even_below_zero():
    """lip-sync correlations -0.3 (worst), 0.2, 0.6: the weights follow the gap to the ceiling 1,
    so the negative one gains the most; none is dropped."""
    module = _Module()
    module.task_sampler.set_weights({"t2v": 1.0, "t2a": 1.0, "t2av": 1.0})
    trainer = _Trainer({})
    cb = Rebalance(task_metric="val/{task}/lipsync_corr", split_metric=None, maximize=True, relative=False, rate=1.0)
    cb.on_fit_start(trainer, module)
    _validations(
        cb, trainer, module, {"val/t2v/lipsync_corr": -0.3, "val/t2a/lipsync_corr": 0.2, "val/t2av/lipsync_corr": 0.6}
    )
    w = module.task_sampler.weights
    assert w["t2v"] > 1 / 3 and w["t2v"] > w["t2a"] > w["t2av"]
    assert w["t2v"] == pytest.approx(1.3 / (1.3 + 0.8 + 0.4))


def test_a_missing_metric_key_is_reported_once_by_name(caplog):
    trainer, module = _Trainer({}), _Module()
    cb = Rebalance(split_metric=None)
    cb.on_fit_start(trainer, module)
    with caplog.at_level(logging.WARNING):
        _validations(cb, trainer, module, {"val/loss_task/t2v": 1.0}, {"val/loss_task/t2v": 0.5})
    lines = [r.getMessage() for r in caplog.records if "val/loss_task/t2a" in r.getMessage()]
    assert len(lines) == 1, caplog.text
