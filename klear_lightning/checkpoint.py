"""Checkpoints: writing them atomically and reading them back (weights, EMA, MLflow run id).

A checkpoint is a Lightning `.ckpt` file (read with `weights_only=True`) or, under FSDP2, the
sharded folder `torch.distributed.checkpoint` writes (`.metadata`, the shards, and `meta.pt` with
everything that is not a sharded tensor: callback states such as the EMA, the MLflow run id).
The denoiser's weights sit under `model.` in the state dict; the EMA callback's state under a
callback key starting with `EMA` holds the averaged weights as `shadow`.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from klear_lightning.errors import ConfigError
from klear_lightning.models.layers import write_full
from klear_lightning.safe_pickle import SafeFileSystemReader, load_dcp_metadata

RUN_ID_KEY = "mlflow_run_id"
# `--ckpt_path` values Lightning resolves itself (no file to check beforehand)
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


class CheckpointError(ConfigError):
    """A checkpoint file or folder is missing, damaged or not one this model can load; the message
    starts with the setting that named it (`ckpt_path`, `model.init_from`)."""


def read_checkpoint(path: str | Path, what: str = "ckpt_path") -> dict[str, Any]:
    """A checkpoint file's contents, read with `weights_only=True` (memory-mapped): one
    `CheckpointError` naming `what` for a missing, truncated, foreign or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: no checkpoint file at {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{what}: {path} is not a checkpoint written by torch.save (truncated, or another format)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{what}: {path} holds objects other than tensors and plain containers; refused "
            "(checkpoints are read with weights_only=True)"
        ) from err
    except Exception as err:  # noqa: BLE001 - any failure to read an outside file is the file's fault
        raise CheckpointError(f"{what}: {path} is damaged: {str(err).splitlines()[0]}") from err
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{what}: {path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return dict(ckpt)


def model_weights(ckpt: Mapping[str, Any], path: Path, what: str) -> dict[str, torch.Tensor]:
    """The denoiser's weights of a checkpoint dict (keys under `model.` in its state dict, prefix removed)."""
    state = ckpt.get("state_dict", ckpt)
    weights = {k.removeprefix("model."): v for k, v in state.items() if isinstance(k, str) and k.startswith("model.")}
    if not weights:
        raise CheckpointError(f"{what}: {path} holds no `model.*` weights: not a checkpoint of a klear model")
    return weights


def check_weights_fit(
    weights: Mapping[str, Any],
    expected: Mapping[str, torch.Tensor],
    ckpt: Mapping[str, Any],
    net: Any,
    path: Path | str,
    what: str,
) -> None:
    """Every tensor of `expected` (a model's state dict) has a counterpart of the same shape in
    `weights`, and nothing else is there. A mismatch names the `model.net` field that differs when the
    checkpoint stores its model config (`net` is this run's `ModelConfig`), else the first tensor."""
    wrong = sorted(set(weights) ^ set(expected)) or sorted(
        k for k in expected if tuple(getattr(weights[k], "shape", ())) != tuple(expected[k].shape)
    )
    if not wrong:
        return
    stored = (ckpt.get("klear") or {}).get("model_config") or {}
    ours = vars(net) if net is not None else {}
    fields = [
        f"model.net.{k} = {stored[k]!r} there, {ours[k]!r} here"
        for k in stored
        if k in ours
        and stored[k] != ours[k]
        and k != "attention_backend"
        and not (k == "rope_sections" and tuple(stored[k] or ()) == tuple(ours[k] or ()))
    ]
    if fields:
        raise CheckpointError(f"{what}: {path} was written for another model: {'; '.join(fields)}")
    key = wrong[0]
    if key in weights and key in expected:
        raise CheckpointError(
            f"{what}: {path} does not fit this model: model.{key} has shape "
            f"{tuple(weights[key].shape)} there, {tuple(expected[key].shape)} here"
        )
    found = (
        "this model has model.{key}, the checkpoint does not"
        if key in expected
        else "the checkpoint has model.{key}, this model does not"
    )
    raise CheckpointError(f"{what}: {path} does not fit this model: " + found.format(key=key))


def check_checkpoint_path(path: str | Path | None, what: str = "ckpt_path") -> None:
    """Before any work: a checkpoint named in the config exists and holds a klear model's weights
    (a sharded folder must hold `.metadata`). Lightning's own names (`last`, `best`, ...) pass."""
    if path is None or str(path) in SPECIAL_CKPT_PATHS:
        return
    path = Path(path)
    if path.is_dir():
        if not (path / ".metadata").is_file():
            raise CheckpointError(f"{what}: {path} is not a sharded checkpoint (no .metadata)")
        return
    model_weights(read_checkpoint(path, what), path, what)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the target folder, then renames it into place
    (a crash never leaves a truncated `.ckpt`); reads with `weights_only=True`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        read_checkpoint(path)  # one line naming what is wrong with a bad file, before Lightning reads it
        return torch.load(Path(path), map_location=map_location or "cpu", weights_only=True)


def load_model_weights(path: str | Path, model: torch.nn.Module, what: str = "model.init_from") -> None:
    """Load the denoiser's weights (keys under `model.`) from a Lightning `.ckpt` file (read with
    weights_only) or from a sharded FSDP2 checkpoint folder (torch.distributed.checkpoint, its
    metadata read with an allow-list) into `model`, whole or sharded (FSDP2). A sharded model never
    holds a whole copy: the folder's shards load straight into each rank's parts, and a file is
    memory-mapped with each rank copying only its part. `what` names the setting in errors."""
    path = Path(path)
    targets = model.state_dict()
    if path.is_dir():
        import torch.distributed.checkpoint as dcp

        if not (path / ".metadata").is_file():
            raise CheckpointError(f"{what}: {path} is not a sharded checkpoint (no .metadata)")
        load_dcp_metadata(path)  # refuses a planted metadata with a clear error before torch reads it
        state = {f"model.{k}": v for k, v in targets.items()}
        dcp.load({"state_dict": state}, storage_reader=SafeFileSystemReader(path))  # in place
        return
    ckpt = read_checkpoint(path, what)
    weights = model_weights(ckpt, path, what)
    check_weights_fit(weights, targets, ckpt, getattr(model, "config", None), path, what)
    for name, target in targets.items():
        try:
            write_full(target, weights[name])
        except ValueError as e:
            raise CheckpointError(f"{what}: {path}: model.{name}: {e}") from None


def _unsharded(path: Path) -> dict[str, Any]:
    """What a checkpoint holds besides sharded tensors: the `.ckpt` itself, or a folder's `meta.pt`
    (empty when there is none)."""
    meta = path / "meta.pt" if path.is_dir() else path
    return read_checkpoint(meta) if meta.is_file() else {}


def load_for_inference(path: str | Path, model: torch.nn.Module, use_ema: bool = True) -> None:
    """Load a checkpoint's weights into the not yet parallelized `model`, then its EMA weights over
    them when the checkpoint stores them and `use_ema` (without them it says so on stderr). `path`: a `.ckpt` file or the sharded folder
    an FSDP2 run writes (weights from its shards, the EMA weights from its `meta.pt`)."""
    path = Path(path)
    load_model_weights(path, model, what="ckpt_path")
    callbacks = _unsharded(path).get("callbacks", {})
    shadow = next((v["shadow"] for k, v in callbacks.items() if k.startswith("EMA") and "shadow" in v), None)
    if use_ema and shadow is not None:
        model.load_state_dict({**model.state_dict(), **shadow})
    elif use_ema:
        print(f"{path} holds no EMA weights; using its training weights", file=sys.stderr)


def run_id_from_checkpoint(path: str | Path) -> str | None:
    """The MLflow run id stored in a checkpoint file or a sharded checkpoint directory (meta.pt)."""
    return _unsharded(Path(path)).get(RUN_ID_KEY)
