"""Curriculum rebalancing: the documented rule on known inputs, and the callback wiring."""

from __future__ import annotations

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

    def __init__(self, metrics):
        self.callback_metrics = metrics
        self.datamodule = _Data()
        self.loggers = []


def test_callback_moves_task_and_split_weights_and_restores():
    trainer = _Trainer({"val/loss_task/t2v": torch.tensor(2.0), "val/loss_task/t2a": torch.tensor(1.0),
                        "val/loss_split/sound": torch.tensor(0.5), "val/loss_split/speech_single": torch.tensor(1.5)})
    module = _Module()
    cb = Rebalance(rate=0.5)
    cb.on_fit_start(trainer, module)
    cb.on_validation_end(trainer, module)
    assert module.task_sampler.weights["t2v"] > 0.5 > module.task_sampler.weights["t2a"]
    assert trainer.datamodule.weights["speech_single"] > 0.5
    state = cb.state_dict()
    fresh, trainer2 = Rebalance(rate=0.5), _Trainer({})
    fresh.load_state_dict(state)
    fresh.on_fit_start(trainer2, _Module())
    assert trainer2.datamodule.weights == pytest.approx(trainer.datamodule.weights)
