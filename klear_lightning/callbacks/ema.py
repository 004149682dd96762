"""Exponential moving average of the denoiser's weights, as a callback.

After every optimizer step (once per step under gradient accumulation; never for a skipped
step): ema <- decay * ema + (1 - decay) * param (fp32 copies, on the parameters' device and
sharding). With `validate_with_ema`, validation / test / predict run with the EMA weights swapped
in and the training weights restored afterwards. The EMA is saved in the checkpoint (callback
state) so a resumed run continues the same average.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.distributed.fsdp import FSDPModule

from klear_lightning.errors import ConfigError


class EMA(L.Callback):
    """EMA of `pl_module.model`'s trainable parameters.

    Args:
        decay: per-step decay in [0, 1).
        warmup_steps: for the first steps the decay is min(decay, (1 + step) / (10 + step)).
        validate_with_ema: swap the EMA weights in for validation, test and predict.
    """

    def __init__(self, decay: float = 0.9999, warmup_steps: int = 0, validate_with_ema: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA.decay: must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.validate_with_ema = validate_with_ema
        self.shadow: dict[str, Tensor] = {}
        self.updates = 0
        self._pending: dict[str, Tensor] | None = None
        self._backup: dict[str, Tensor] | None = None
        self._last_step: int | None = None  # trainer.global_step at the last update (or fit start)

    def _params(self, pl_module: L.LightningModule) -> dict[str, torch.nn.Parameter]:
        # Under FSDP2 a module an evaluation forward left gathered (the root never reshards after
        # forward; no backward follows) exposes whole tensors in place of its shards: reshard first,
        # so the EMA always reads and writes the sharded parameters it was built from.
        for m in pl_module.model.modules():
            if isinstance(m, FSDPModule):
                m.reshard()
        return {_clean(n): p for n, p in pl_module.model.named_parameters() if p.requires_grad}

    def _ensure(self, pl_module: L.LightningModule) -> None:
        if self.shadow:
            return
        params = self._params(pl_module)
        source = self._pending or {}
        missing = sorted(set(source) - set(params))
        if missing:
            raise ValueError(f"EMA state has parameters the model lacks: {missing[:5]}")
        self.shadow = {
            n: (_like(source[n], p) if n in source else p.detach().float().clone()) for n, p in params.items()
        }
        self._pending = None

    def current_decay(self) -> float:
        if self.updates < self.warmup_steps:
            return min(self.decay, (1 + self.updates) / (10 + self.updates))
        return self.decay

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ensure(pl_module)
        self._last_step = trainer.global_step

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # global_step counts optimizer steps: unchanged after an accumulating micro-batch or a skipped step.
        if trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        if outputs is None:  # the module skipped the step (non-finite loss): no weight changed
            return
        self._ensure(pl_module)
        params = self._params(pl_module)
        names = list(self.shadow)
        torch._foreach_lerp_(
            [self.shadow[n] for n in names], [params[n].detach().float() for n in names], 1.0 - self.current_decay()
        )
        self.updates += 1

    @torch.no_grad()
    def swap_in(self, pl_module: L.LightningModule) -> None:
        """Put the EMA weights into the model, keeping the training weights aside."""
        self._ensure(pl_module)
        params = self._params(pl_module)
        self._backup = {n: p.detach().clone() for n, p in params.items()}
        for n, p in params.items():
            p.copy_(self.shadow[n].to(p.dtype))

    @torch.no_grad()
    def swap_out(self, pl_module: L.LightningModule) -> None:
        """Restore the training weights after `swap_in`."""
        if self._backup is None:
            return
        for n, p in self._params(pl_module).items():
            p.copy_(self._backup[n])
        self._backup = None

    def _start(self, pl_module: L.LightningModule) -> None:
        if self.validate_with_ema:
            self.swap_in(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.swap_out(pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.swap_out(pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.swap_out(pl_module)

    def state_dict(self) -> dict[str, Any]:
        shadow = {n: _local(t) for n, t in self.shadow.items()}
        return {"shadow": shadow, "updates": self.updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = int(state_dict["updates"])
        self._pending = dict(state_dict["shadow"])
        self.shadow = {}


def _local(t: Tensor) -> Tensor:
    """A DTensor (FSDP2 shard) as a plain tensor in its full form, so checkpoints stay portable."""
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


def _like(full: Tensor, param: Tensor) -> Tensor:
    """A saved full EMA tensor laid out like `param` (sharded again when `param` is a DTensor)."""
    mesh = getattr(param, "device_mesh", None)
    if mesh is None:
        return full.to(param.device, torch.float32)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(param.device, torch.float32), mesh, param.placements)


def _clean(name: str) -> str:
    """A parameter name without activation-checkpointing / compile wrapper prefixes, so EMA keys
    match the plain model's state dict however the model was parallelized."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")
