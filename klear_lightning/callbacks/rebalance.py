"""Stage II curriculum: move task and data-split weights toward the abilities validation shows weakest.

Rule, applied after every validation (not the sanity check), separately to tasks and to splits.
Each item k (a task, a split) has a validation value v_k read from `task_metric` / `split_metric`,
turned into a gap g_k >= 0 (0 = nothing left to learn):

    g_k = v_k                      for a loss (lower is better)
    g_k = max(ceiling - v_k, 0)    with `maximize` (a higher-is-better metric whose best is `ceiling`;
                                   a metric <= 0 has a gap >= ceiling, so the worst item gains most)

and a score on a common scale: with `relative` (default) s_k = g_k / g_k(ref), the gap relative to
its value at the stage's first validation (the reference, kept in the checkpoint), so a task or
split with an intrinsically higher loss does not draw weight for that alone: weight flows to what
has improved least. Without `relative`, s_k = g_k (for a metric already on one scale). Then

    target_k = base_k * (s_k / mean_j s_j) ** power        (normalised to the items' share)
    w_k     <- (1 - rate) * w_k + rate * target_k, then floored at min_weight and renormalised

`base_k` are the weights the stage started with, so an item that stops being weak drifts back to
its configured share. Validation scores every task on every clip with fixed draws
(`KlearModule._eval_step`), so the values compare across validations. An item whose key is
missing keeps its weight, and the key is reported once (a log line naming it). The new weights go
to `KlearModule.task_sampler.set_weights` and the DataModule's `set_split_weights`, are logged as
`rebalance/task/<name>` and `rebalance/split/<name>`, and are saved in the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L

from klear_lightning.errors import ConfigError
from klear_lightning.keys import VAL_SPLIT_LOSS, VAL_TASK_LOSS

log = logging.getLogger(__name__)


def rebalance(
    weights: Mapping[str, float],
    base: Mapping[str, float],
    scores: Mapping[str, float],
    rate: float,
    power: float,
    min_weight: float,
) -> dict[str, float]:
    """One step of the rule above from scores s_k >= 0 (pure; see the module docstring)."""
    total = sum(weights.values())
    w = {k: v / total for k, v in weights.items()}
    scored = {k: s for k, s in scores.items() if k in w and s >= 0}
    mean = sum(scored.values()) / len(scored) if scored else 0.0
    if mean <= 0:
        return w
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
    """Curriculum rebalancing of task and split weights from validation metrics (rule above).

    Args:
        task_metric: metric key per task, `{task}` is replaced (default: the module's per-task val loss;
            e.g. `val/{task}/lipsync_corr` from the benchmark callback, with `maximize`).
        split_metric: metric key per split, `{split}` replaced; None leaves split weights alone.
        maximize: the metrics are higher-is-better; their gap is `ceiling - value`.
        ceiling: the best value of a maximized metric (1 for correlations, accuracies, cosines).
        relative: score each gap relative to its value at the stage's first validation.
        rate: step size toward the target in (0, 1].
        power: how strongly weakness is favoured (0 = back to the base weights).
        min_weight: floor for every weight (no task or split is ever dropped).
    """

    def __init__(
        self,
        task_metric: str = VAL_TASK_LOSS,
        split_metric: str | None = VAL_SPLIT_LOSS,
        maximize: bool = False,
        ceiling: float = 1.0,
        relative: bool = True,
        rate: float = 0.5,
        power: float = 1.0,
        min_weight: float = 0.02,
    ) -> None:
        if not 0.0 < rate <= 1.0:
            raise ConfigError(f"Rebalance.rate: must be in (0, 1], got {rate}")
        if power < 0 or not 0.0 <= min_weight < 1.0:
            raise ConfigError("Rebalance.power: power must be >= 0 and min_weight in [0, 1)")
        self.task_metric, self.split_metric = task_metric, split_metric
        self.maximize, self.ceiling, self.relative = maximize, ceiling, relative
        self.rate, self.power, self.min_weight = rate, power, min_weight
        self.base_tasks: dict[str, float] | None = None
        self.base_splits: dict[str, float] | None = None
        self.split_weights: dict[str, float] | None = None
        self.reference: dict[str, float] = {}  # metric key -> its gap at the stage's first validation
        self._reported: set[str] = set()

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

    def _report(self, trainer: L.Trainer, key: str, message: str) -> None:
        if key not in self._reported and trainer.is_global_zero:
            log.warning("Rebalance: %s %s", key, message)
        self._reported.add(key)

    def _scores(self, trainer: L.Trainer, pattern: str, key: str, names: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in names:
            metric = pattern.replace("{" + key + "}", name)
            value = trainer.callback_metrics.get(metric)
            if value is None:
                self._report(trainer, metric, "is not among the logged metrics; that item keeps its weight")
                continue
            value = float(value)
            gap = max(self.ceiling - value, 0.0) if self.maximize else value
            if not self.relative:
                out[name] = gap
                continue
            reference = self.reference.setdefault(metric, gap)
            if reference <= 0:
                self._report(
                    trainer,
                    metric,
                    "was at its best at the stage's first validation (no gap to score "
                    "relative to); that item keeps its weight",
                )
                continue
            out[name] = gap / reference
        return out

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.base_tasks is None:
            return
        logged: dict[str, float] = {}
        sampler = pl_module.task_sampler
        scores = self._scores(trainer, self.task_metric, "task", sampler.names)
        new = rebalance(sampler.weights, self.base_tasks, scores, self.rate, self.power, self.min_weight)
        sampler.set_weights(new)
        logged.update({f"rebalance/task/{k}": v for k, v in new.items()})
        dm = trainer.datamodule
        if self.split_metric is not None and self.base_splits is not None:
            scores = self._scores(trainer, self.split_metric, "split", list(self.base_splits))
            self.split_weights = rebalance(
                dm.split_weights(), self.base_splits, scores, self.rate, self.power, self.min_weight
            )
            dm.set_split_weights(self.split_weights)
            logged.update({f"rebalance/split/{k}": v for k, v in self.split_weights.items()})
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "base_tasks": self.base_tasks,
            "base_splits": self.base_splits,
            "split_weights": self.split_weights,
            "reference": self.reference,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_tasks = state_dict["base_tasks"]
        self.base_splits = state_dict["base_splits"]
        self.split_weights = state_dict["split_weights"]
        self.reference = dict(state_dict.get("reference") or {})
