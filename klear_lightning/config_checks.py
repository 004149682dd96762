"""Checks of a parsed training config that run before anything is instantiated or trained.

Each failure raises `ConfigError` whose message starts with the config field at fault, e.g.
`model.task_weights.t2x: unknown task ...`. `check_config` runs first, `check_data_config` after the
demo's SyncWorld bootstrap, `check_model_matches_data` once the data module exists (codec widths
are only known then).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from klear_lightning.checkpoint import check_checkpoint_path
from klear_lightning.errors import ConfigError
from klear_lightning.models.config import ATTENTION_BACKENDS
from klear_lightning.tasks import TASKS


def _as_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if hasattr(cfg, "as_dict"):
        return cfg.as_dict()
    return dict(cfg)


def check_task_weights(weights: Mapping[str, float] | None, field: str = "model.task_weights") -> None:
    if weights is None:
        return
    if not weights:
        raise ConfigError(f"{field}: empty; give at least one task a weight > 0 (tasks: {sorted(TASKS)})")
    for name, w in weights.items():
        if name not in TASKS:
            raise ConfigError(f"{field}.{name}: unknown task {name!r}; known tasks: {sorted(TASKS)}")
        if not isinstance(w, (int, float)) or w < 0 or w != w or w == float("inf"):
            raise ConfigError(f"{field}.{name}: weight must be a finite number >= 0, got {w!r}")
    if sum(weights.values()) <= 0:
        raise ConfigError(f"{field}: all task weights are zero; at least one task must be trained")


def check_attention_backend(backend: str | None, field: str = "model.net.attention_backend") -> None:
    if backend is not None and backend not in ATTENTION_BACKENDS:
        raise ConfigError(f"{field}: unknown attention backend {backend!r}; choose one of {list(ATTENTION_BACKENDS)}")


def check_data_paths(data_args: Mapping[str, Any], prefix: str = "data.init_args") -> None:
    """The data root and every configured local model path (`<codec>.path`) exist."""
    root = data_args.get("root")
    if root is not None and not Path(root).exists():
        raise ConfigError(f"{prefix}.root: path does not exist: {root}")
    for key, value in data_args.items():
        if isinstance(value, Mapping) and value.get("path") is not None and not Path(value["path"]).exists():
            raise ConfigError(f"{prefix}.{key}.path: path does not exist: {value['path']}")


def check_config(cfg: Any) -> None:
    """Checks of a parsed LightningCLI config (a jsonargparse Namespace or a dict) that need no data:
    task weights, the attention backend and the checkpoint `model.init_from` (`ckpt_path` is checked
    by `lightning_cli.KlearCLI` as soon as it is parsed)."""
    cfg = _as_dict(cfg)
    model = cfg.get("model") or {}
    if "init_args" in model:
        model = model["init_args"]
    check_task_weights(model.get("task_weights"))
    check_attention_backend((model.get("net") or {}).get("attention_backend"))
    check_checkpoint_path(model.get("init_from"), "model.init_from")
    data = cfg.get("data") or {}
    check_split_shift(
        (model.get("timesteps") or {}).get("split_shift"), data.get("init_args", data).get("train_splits")
    )


def check_split_shift(split_shift: Mapping[str, float] | None, train_splits: Mapping[str, float] | None) -> None:
    """Every split with a timestep shift of its own is a training split (a typo would train unshifted)."""
    for split in split_shift or {}:
        if train_splits is not None and split not in train_splits:
            raise ConfigError(
                f"model.timesteps.split_shift: {split!r} is not a training split "
                f"(data.init_args.train_splits: {sorted(train_splits)})"
            )


def check_data_config(cfg: Any) -> None:
    """Checks of the data section of a parsed config (run once the data may have been generated)."""
    data = _as_dict(cfg).get("data") or {}
    check_data_paths(data.get("init_args", data))


def check_model_matches_data(model_cfg: Any, sequence: Any, text_dim: int) -> None:
    """The denoiser's input widths and latent rates equal what the codecs, the clip and the text
    encoder produce (the CLI links them; a module built in Python must set them itself, or aligned
    MixD-RoPE would place audio at the wrong times)."""
    geometry = sequence.geometry
    pairs = (
        ("model.net.video_channels", model_cfg.video_channels, "video codec channels", geometry.video_channels),
        ("model.net.audio_channels", model_cfg.audio_channels, "audio codec channels", geometry.audio_channels),
        ("model.net.text_dim", model_cfg.text_dim, "text encoder dim", text_dim),
    )
    for field, ours, what, theirs in pairs:
        if ours != theirs:
            raise ConfigError(f"{field} = {ours} does not match the {what} = {theirs}; set it to {theirs}")
    for name in ("video_latent_fps", "audio_latent_fps"):
        ours, theirs = getattr(model_cfg, name), getattr(sequence, name)
        if abs(ours - theirs) > 1e-6 * max(abs(theirs), 1.0):
            raise ConfigError(
                f"model.net.{name} = {ours} does not match the data's {name} = {theirs}; set it to {theirs}"
            )
