"""Lightning callbacks that configs of subprocess tests name by class path (`tests.helpers.callbacks.X`)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L


class KillAt(L.Callback):
    """SIGKILLs its own process at the end of global step `step` (before that step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class LossRecorder(L.Callback):
    """Appends (global step, loss) of every step on this rank to `<path>.rank<r>.jsonl`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(f"{self.path}.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps([trainer.global_step, float(outputs["loss"])]) + "\n")


class KillOnceAt(L.Callback):
    """SIGKILLs its own process at the end of global step `step` (before that step's checkpoint) in a
    run that did not start from a checkpoint, so the same command resumed with `--ckpt_path` runs
    through. Every rank decides alone from its own state (a per-rank marker file raced: a rank that
    torchrun stopped before its own kill had no marker and killed the resumed run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getpid(), signal.SIGKILL)


class KillSweepOnce(L.Callback):
    """SIGKILLs its whole process group (the sweep and every run it started) at the end of step
    `step` of the run with model seed `seed`, once (a marker file remembers)."""

    def __init__(self, seed: int, step: int, marker: str) -> None:
        self.seed, self.step, self.marker = seed, step, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.seed == self.seed and trainer.global_step == self.step and not self.marker.exists():
            self.marker.touch()
            os.killpg(os.getpgid(0), signal.SIGKILL)


class LogStartWeights(L.Callback):
    """Logs the sum of the model's weights when a stage starts training from step 0: the weights it
    starts from, which `model.init_from` sets."""

    def on_train_start(self, trainer, pl_module):
        if trainer.global_step == 0:
            total = sum(v.double().sum().item() for v in pl_module.model.state_dict().values())
            trainer.logger.log_metrics({"marker/start_weight_sum": total}, step=0)
