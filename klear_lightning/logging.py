"""MLflow tracking in a sqlite database inside the run directory.

Default layout for `run_dir = runs`: the database `runs/mlflow.db` (URI `sqlite:///runs/mlflow.db`,
relative to where `klear` is started; the logger stores it as an absolute path) and artifacts
under `runs/mlartifacts/`. Browse with `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`.
The run id is stored in every checkpoint (`checkpoint["mlflow_run_id"]`), so `--ckpt_path last`
continues the same MLflow run.
"""

from __future__ import annotations

import fcntl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger

from klear_lightning.checkpoint import RUN_ID_KEY
from klear_lightning.errors import ConfigError


def sqlite_uri(run_dir: str | Path) -> str:
    """The sqlite URI of the tracking database of `run_dir` (absolute path)."""
    return f"sqlite:///{(Path(run_dir).resolve() / 'mlflow.db').as_posix()}"


class KlearMLFlowLogger(MLFlowLogger):
    """`MLFlowLogger` whose default store is `<run_dir>/mlflow.db` with artifacts in `<run_dir>/mlartifacts`.

    Args:
        run_dir: directory holding the database and artifacts (created).
        experiment_name: MLflow experiment (one per project or study).
        run_name: shown in the MLflow UI.
        tags: run tags; the CLI adds `stage` and `ablation` from the config.
        tracking_uri: another tracking server or database, instead of `<run_dir>/mlflow.db`.
        run_id: continue this existing run (the CLI sets it from a resumed checkpoint).
        step_offset: added to every logged step, so that a later curriculum stage logging into the
            run of an earlier one (`klear sweep`'s staged arms) continues its step axis instead of
            overwriting it (a stage's own global step starts at 0).
    """

    def __init__(
        self,
        run_dir: str = "runs",
        experiment_name: str = "klear",
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        tracking_uri: str | None = None,
        run_id: str | None = None,
        step_offset: int = 0,
    ) -> None:
        if step_offset < 0:
            raise ConfigError(f"trainer.logger.init_args.step_offset: must be >= 0, got {step_offset}")
        root = Path(run_dir)
        root.mkdir(parents=True, exist_ok=True)
        # Every rank of a multi-process run builds this logger (only rank 0 logs), and MLflow creates
        # or migrates the sqlite database as its client starts: one process at a time.
        with open(root / ".mlflow.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            super().__init__(
                experiment_name=experiment_name,
                run_name=run_name,
                tracking_uri=tracking_uri or sqlite_uri(root),
                tags=dict(tags or {}),
                artifact_location=(root.resolve() / "mlartifacts").as_uri(),
                run_id=run_id,
            )
        self.run_dir = root
        self.step_offset = step_offset

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, (step or 0) + self.step_offset)

    def continue_run(self, run_id: str) -> None:
        """Log into an existing run instead of starting a new one (before any logging happens)."""
        if self._initialized and self._run_id != run_id:
            raise RuntimeError("continue_run must be called before the logger starts its run")
        self._run_id = run_id

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.experiment.set_tag(self.run_id, key, str(value))

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.experiment.log_artifact(self.run_id, str(path), artifact_path)


class RunIdInCheckpoint(L.Callback):
    """Stores the MLflow run id in every checkpoint, for `--ckpt_path last` to continue the run."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                checkpoint[RUN_ID_KEY] = logger.run_id


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"} (lists and tuples as their string form)."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat
