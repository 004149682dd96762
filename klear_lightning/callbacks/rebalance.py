"""Stage II curriculum: move task and data-split weights toward what validation shows weakest.

Rule, applied after every validation (not the sanity check), separately to tasks and to splits.
For each item k with current weight w_k (normalised) and validation score s_k (lower is better;
a metric to maximise is used as 1 / s_k):

    target_k = base_k * (s_k / mean_j s_j) ** power        (normalised to sum 1)
    w_k     <- (1 - rate) * w_k + rate * target_k, then floored at min_weight and renormalised

`base_k` are the weights the stage started with, so an item that stops being weak drifts back to
its configured share. Items without a score keep their weight. The new weights go to
`KlearModule.task_sampler.set_weights` and the DataModule's `set_split_weights`, are logged as
`rebalance/task/<name>` and `rebalance/split/<name>`, and are saved in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L


def rebalance(
    weights: Mapping[str, float],
    base: Mapping[str, float],
    scores: Mapping[str, float],
    rate: float,
    power: float,
    min_weight: float,
) -> dict[str, float]:
    """One step of the rule above (pure; see the module docstring)."""
    total = sum(weights.values())
    w = {k: v / total for k, v in weights.items()}
    scored = {k: s for k, s in scores.items() if k in w and s > 0}
    if not scored:
        return w
    mean = sum(scored.values()) / len(scored)
    base_total = sum(base.get(k, 0.0) for k in scored)
    raw = {k: (base.get(k, 0.0) / base_total) * (scored[k] / mean) ** power for k in scored} if base_total > 0 else {}
    raw_total = sum(raw.values())
    share = sum(w[k] for k in scored)
    new = dict(w)
    for k in scored:
        target = share * raw[k] / raw_total if raw_total > 0 else w[k]
        new[k] = (1 - rate) * w[k] + rate * target
    new = {k: max(v, min_weight) for k, v in new.items()}
    total = sum(new.values())
    return {k: v / total for k, v in new.items()}


class Rebalance(L.Callback):
    """Curriculum rebalancing of task and split weights from validation metrics.

    Args:
        task_metric: metric key per task, `{task}` is replaced (default: the module's per-task val loss;
            e.g. `val/{task}/fd_panns` from the benchmark callback).
        split_metric: metric key per split, `{split}` replaced; None leaves split weights alone.
        maximize: the metrics are higher-is-better (scores are inverted).
        rate: step size toward the target in (0, 1].
        power: how strongly weakness is favoured (0 = back to the base weights).
        min_weight: floor for every weight (no task or split is ever dropped).
    """

    def __init__(
        self,
        task_metric: str = "val/loss_task/{task}",
        split_metric: str | None = "val/loss_split/{split}",
        maximize: bool = False,
        rate: float = 0.5,
        power: float = 1.0,
        min_weight: float = 0.02,
    ) -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"Rebalance.rate must be in (0, 1], got {rate}")
        if power < 0 or not 0.0 <= min_weight < 1.0:
            raise ValueError("Rebalance: power must be >= 0 and min_weight in [0, 1)")
        self.task_metric, self.split_metric = task_metric, split_metric
        self.maximize, self.rate, self.power, self.min_weight = maximize, rate, power, min_weight
        self.base_tasks: dict[str, float] | None = None
        self.base_splits: dict[str, float] | None = None
        self.split_weights: dict[str, float] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.base_tasks is None:
            self.base_tasks = pl_module.task_sampler.weights
        dm = trainer.datamodule
        if self.split_metric is None or dm is None or not hasattr(dm, "set_split_weights"):
            return
        if self.base_splits is None:
            self.base_splits = dm.split_weights()
        if self.split_weights is not None:
            dm.set_split_weights(self.split_weights)

    def _scores(self, metrics: Mapping[str, Any], pattern: str, key: str, names: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in names:
            value = metrics.get(pattern.replace("{" + key + "}", name))
            if value is None:
                continue
            value = float(value)
            if self.maximize:
                value = 1.0 / value if value > 0 else 0.0
            out[name] = value
        return out

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.base_tasks is None:
            return
        metrics = trainer.callback_metrics
        logged: dict[str, float] = {}
        sampler = pl_module.task_sampler
        scores = self._scores(metrics, self.task_metric, "task", sampler.names)
        new = rebalance(sampler.weights, self.base_tasks, scores, self.rate, self.power, self.min_weight)
        sampler.set_weights(new)
        logged.update({f"rebalance/task/{k}": v for k, v in new.items()})
        dm = trainer.datamodule
        if self.split_metric is not None and self.base_splits is not None:
            scores = self._scores(metrics, self.split_metric, "split", list(self.base_splits))
            self.split_weights = rebalance(dm.split_weights(), self.base_splits, scores, self.rate, self.power, self.min_weight)
            dm.set_split_weights(self.split_weights)
            logged.update({f"rebalance/split/{k}": v for k, v in self.split_weights.items()})
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"base_tasks": self.base_tasks, "base_splits": self.base_splits, "split_weights": self.split_weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_tasks = state_dict["base_tasks"]
        self.base_splits = state_dict["base_splits"]
        self.split_weights = state_dict["split_weights"]
