"""The `klear` command: LightningCLI (fit / validate / test / predict) plus project subcommands.

Project subcommands (dispatched before LightningCLI): `summary`, `syncworld`, `prepare`,
`cache`, `generate`, `compare`, `sweep`, and `test --prompts` (a Verse-Bench prompt folder,
`versebench.py`). Each is a typed function exposed through jsonargparse, so `--help` lists its arguments.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from klear_lightning.config_checks import check_config
from klear_lightning.logging import KlearMLFlowLogger, RunIdInCheckpoint, flatten_config, run_id_from_checkpoint
from klear_lightning.module import KlearModule, load_model_weights
from klear_lightning.safe_pickle import load_dcp_metadata
from klear_lightning.sequence import ClipSpec, SequenceSpec

PROJECT_COMMANDS = ("summary", "syncworld", "prepare", "cache", "generate", "compare", "sweep")


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

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class MLflowConfigLogger(SaveConfigCallback):
    """Logs the resolved config to MLflow: params (flattened), tags (stage, ablation), the yaml as artifact.

    Once per run, when it starts: a run continued later (`--ckpt_path` resume, or `klear test` into
    it with `--trainer.logger.init_args.run_id`) keeps the config it was trained with."""

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
        self.already_saved = trainer.strategy.broadcast(True)

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, KlearMLFlowLogger) or logger.experiment.get_run(logger.run_id).data.params:
                continue
            cfg = self.config.as_dict()
            params = flatten_config({k: v for k, v in cfg.items() if k not in ("config", "ckpt_path")})
            logger.log_hyperparams(params)
            logger.set_tags({"stage": cfg.get("stage", ""), "ablation": cfg.get("ablation", "")})
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "config.yaml"
                path.write_text(self.parser.dump(self.config, skip_none=False))
                logger.log_file(path)


def _data_attr(name: str) -> Any:
    def get(data: LightningDataModule) -> Any:
        return getattr(data.sequence.geometry, name)

    return get


def _text_dim(data: LightningDataModule) -> int:
    return data.text_dim


def _video_fps(data: LightningDataModule) -> float:
    return data.sequence.video_latent_fps


def _audio_fps(data: LightningDataModule) -> float:
    return data.sequence.audio_latent_fps


def _init_value(config: Namespace, key: str, cls: type) -> Any:
    """A data init argument as `cls` (a parsed dataclass value is a Namespace before instantiation)."""
    value = config.get(f"data.init_args.{key}")
    if value is None:
        return cls()
    return cls(**value.as_dict()) if isinstance(value, Namespace) else value


def bootstrap_syncworld(config: Namespace) -> None:
    """Generate SyncWorld into the data root when asked (`syncworld_clips_per_split` > 0) and absent
    (single-process runs such as the demo; multi-process runs should run `klear syncworld` first):
    the splits the data config names, at its clip's duration, fps, sample rate and (square clips)
    size, drawn at `syncworld_scene`; then cache latents and caption embeddings for train / val / test / ood
    with its codecs, so training and testing read the cached path. A root that already holds SyncWorld
    generated with another geometry, scene or clip count is an error (never silently trained on)."""
    clips = config.get("syncworld_clips_per_split") or 0
    root = config.get("data.init_args.root")
    if clips <= 0 or root is None:
        return
    from klear_lightning.codecs import AudioCodecConfig, TextEncoderConfig, VideoCodecConfig
    from klear_lightning.data.cache import cache_latents
    from klear_lightning.data.syncworld import SPLITS, SceneScale, generate_syncworld

    clip = _init_value(config, "clip", ClipSpec)
    scene = config.get("syncworld_scene")
    scene = SceneScale(**scene.as_dict()) if isinstance(scene, Namespace) else (scene or SceneScale())
    size = {"size": clip.height} if clip.height == clip.width else {}
    wanted = {"duration": clip.duration, "fps": int(clip.fps), "sample_rate": clip.sample_rate, **size,
              "scene": asdict(scene)}
    if (Path(root) / "train").is_dir():
        _check_existing_syncworld(Path(root), wanted, clips)
        return
    train = list(config.get("data.init_args.train_splits") or {})
    splits = list(dict.fromkeys(train + list(config.get("data.init_args.val_splits") or [])
                                + list(config.get("data.init_args.test_splits") or []))) or list(SPLITS)
    print(f"SyncWorld not found in {root}: generating {clips} clips per split (once)", flush=True)
    generate_syncworld(Path(root), clips_per_split=clips, seed=config.get("data.init_args.seed") or 0, splits=splits,
                       duration=clip.duration, fps=int(clip.fps), sample_rate=clip.sample_rate, scene=scene, **size)
    print(f"caching latents and caption embeddings in {root}", flush=True)
    cache_latents(
        Path(root), splits, partitions=["train", "val", "test", "ood"], clip=clip,
        resolutions=[tuple(r) for r in config.get("data.init_args.resolutions") or []],
        video_codec=_init_value(config, "video_codec", VideoCodecConfig),
        audio_codec=_init_value(config, "audio_codec", AudioCodecConfig),
        text_encoder=_init_value(config, "text_encoder", TextEncoderConfig),
        workers=max(1, min(2, config.get("data.init_args.num_workers") or 1)),
    )


def _check_existing_syncworld(root: Path, wanted: dict[str, Any], clips: int) -> None:
    """The SyncWorld summary in `root` must match the requested geometry, scene and train clip count."""
    from klear_lightning.data.syncworld import SceneScale
    from klear_lightning.data.syncworld.generate import SUMMARY

    path = root / SUMMARY
    if not path.is_file():
        return  # not SyncWorld (e.g. `klear prepare` shards): nothing to compare
    summary = json.loads(path.read_text())
    have = {**summary["config"]}
    have["scene"] = {**asdict(SceneScale()), **have.get("scene", {})}  # summaries from before the scene knobs
    have = {k: have.get(k) for k in wanted}
    train_clips = max(summary.get("clips", {}).get("train", {}).values(), default=None)
    if have != wanted or train_clips != clips:
        raise ValueError(
            f"{root} holds SyncWorld generated with {have} and {train_clips} train clips per split, but this "
            f"config asks for {wanted} and syncworld_clips_per_split = {clips}: delete {root} (it is regenerated) "
            "or point data.init_args.root elsewhere"
        )


class KlearCLI(LightningCLI):
    """LightningCLI with the project's links, config checks, checkpointing and MLflow wiring."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--stage", type=str, default="pretrain", help="curriculum stage (MLflow tag)")
        parser.add_argument("--ablation", type=str, default="baseline", help="ablation name (MLflow tag)")
        parser.add_argument(
            "--syncworld_clips_per_split", type=int, default=0,
            help="when > 0 and data.init_args.root has no shards yet, generate SyncWorld there first "
            "(this many clips per split; the demo's self-bootstrap)",
        )
        from klear_lightning.data.syncworld import SceneScale

        parser.add_argument(
            "--syncworld_scene", type=SceneScale, default=SceneScale(),
            help="how large SyncWorld draws faces, mouths and sound objects when it is generated",
        )
        links = {
            "model.model.video_channels": _data_attr("video_channels"),
            "model.model.audio_channels": _data_attr("audio_channels"),
            "model.model.text_dim": _text_dim,
            "model.model.video_latent_fps": _video_fps,
            "model.model.audio_latent_fps": _audio_fps,
        }
        for target, fn in links.items():
            parser.link_arguments("data", target, compute_fn=fn, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        bootstrap_syncworld(config)
        check_config(config)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if not isinstance(trainer.strategy, ModelParallelStrategy):  # it writes sharded folders itself
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _check_sharded_checkpoint(self) -> None:
        """Lightning reads a sharded (FSDP2) checkpoint folder's `.metadata` with plain pickle: read
        it first with the allow-list, so a planted one is refused before anything of it runs."""
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt is not None and ckpt != "last" and Path(ckpt).is_dir():
            load_dcp_metadata(ckpt)
        if ckpt == "last":
            cb = self.trainer.checkpoint_callback
            last = cb and cb.dirpath and Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
            if last and Path(last).is_dir():
                load_dcp_metadata(last)

    def before_validate(self) -> None:
        self._check_sharded_checkpoint()

    def before_test(self) -> None:
        self._check_sharded_checkpoint()

    def before_predict(self) -> None:
        self._check_sharded_checkpoint()

    def _resume_mlflow_run(self) -> None:
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt is None:
            return
        if ckpt == "last":
            cb = self.trainer.checkpoint_callback
            ckpt = cb and cb.dirpath and Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
            if not ckpt or not Path(ckpt).exists():
                return
        run_id = run_id_from_checkpoint(ckpt)
        if run_id is None:
            return
        for logger in self.trainer.loggers:
            if isinstance(logger, KlearMLFlowLogger):
                logger.continue_run(run_id)

    def before_fit(self) -> None:
        self._check_sharded_checkpoint()
        self._resume_mlflow_run()


def cli_main(args: list[str] | None = None, run: bool = True) -> KlearCLI:
    """Build the LightningCLI (used by `main` and by tests with explicit `args`)."""
    return KlearCLI(
        KlearModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_callback=MLflowConfigLogger,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {"class_path": "klear_lightning.logging.KlearMLFlowLogger"},
            "callbacks": [RunIdInCheckpoint()],
        },
        parser_kwargs={"parser_mode": "omegaconf"},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


class _ParseOnlyCLI(KlearCLI):
    """Parses a training config without checking or instantiating anything (for `klear summary`)."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def _parse_only(config: Path) -> _ParseOnlyCLI:
    """A training config parsed, nothing instantiated."""
    return _ParseOnlyCLI(KlearModule, LightningDataModule, subclass_mode_data=True, args=["--config", str(config)],
                         run=False, save_config_callback=None, auto_configure_optimizers=False,
                         seed_everything_default=False)


def _parse(config: Path) -> tuple[KlearModule, LightningDataModule]:
    """The model and data modules of a training config (no trainer, no checks of data paths)."""
    cli = _parse_only(config)
    init = cli.parser.instantiate_classes(Namespace(model=cli.config.model, data=cli.config.data))
    return init.model, init.data


def load_for_inference(config: Path, ckpt_path: Path, use_ema: bool = True) -> tuple[KlearModule, LightningDataModule]:
    """KlearModule with a checkpoint's weights (EMA weights when stored and `use_ema`; without them it
    says so on stderr and uses the training weights) and its data module set up for decoding, both on
    CPU. `ckpt_path`: a `.ckpt` file or the sharded folder an FSDP2 run writes (weights from its
    shards, the EMA weights from its `meta.pt`)."""
    module, data = _parse(config)
    module.configure_model()
    ckpt_path = Path(ckpt_path)
    load_model_weights(ckpt_path, module.model, what="checkpoint")
    meta = ckpt_path / "meta.pt" if ckpt_path.is_dir() else ckpt_path
    extra = torch.load(meta, map_location="cpu", weights_only=True, mmap=True) if meta.is_file() else {}
    callbacks = extra.get("callbacks", {})
    shadow = next((v["shadow"] for k, v in callbacks.items() if k.startswith("EMA") and "shadow" in v), None)
    if use_ema and shadow is not None:
        module.model.load_state_dict({**module.model.state_dict(), **shadow})
    elif use_ema:
        print(f"{ckpt_path} holds no EMA weights; using its training weights", file=sys.stderr)
    module.eval()
    data.setup("predict")
    return module, data


def summary(config: Path, world_size: int = 1) -> None:
    """Print parameters per component, tokens per stream, training FLOPs and memory per rank of a training config.

    The model is built on the meta device. Stream shapes come from the data module: the codecs'
    geometry and the caption encoder's width it declares (`data.init_args.geometry`, `text_dim`; the
    paper config does, so no weights need to be on this machine), else from its codecs. Memory per
    rank is for FSDP2 over `world_size` ranks with the config's batch size, caption length
    (`text_encoder.max_tokens`), EMA callback and `model.parallel` settings (those apply under
    ModelParallelStrategy only; otherwise fp32 compute without activation checkpointing).

    Args:
        config: a training config (e.g. configs/pretrain.yaml).
        world_size: the number of ranks the model and optimizer state are sharded over.
    """
    from klear_lightning.summary import TrainingLayout, summarize

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    cli = _parse_only(config)
    cfg = cli.config
    init = cli.parser.instantiate_classes(Namespace(model=cfg.model, data=cfg.data))
    module, data = init.model, init.data
    # Counting on the meta device runs no attention: a CUDA-only backend must not stop it on a CPU machine.
    model_cfg = replace(module.model_config, attention_backend="reference")
    seq = data.sequence
    data_args = cfg.data.get("init_args") or Namespace()
    text_encoder = data_args.get("text_encoder")
    strategy = cfg.trainer.get("strategy")
    fsdp = "ModelParallelStrategy" in str(getattr(strategy, "class_path", strategy))
    layout = TrainingLayout(
        world_size=world_size,
        batch_size=int(data_args.get("batch_size") or 1),
        param_dtype=module.parallel.param_dtype if fsdp else "float32",  # model.parallel applies under FSDP2 only
        activation_checkpointing=module.parallel.activation_checkpointing and fsdp,
        ema=any(str(getattr(cb, "class_path", "")).rsplit(".", 1)[-1] == "EMA" for cb in cfg.trainer.get("callbacks") or []),
    )
    print(summarize(
        model_cfg, SequenceSpec(seq.clip, seq.geometry, model_cfg.video_patch, model_cfg.audio_patch),
        text_tokens=int(text_encoder.get("max_tokens") or 128) if text_encoder else 128, layout=layout,
        trainable_null_captions=module.caption_dropout > 0,
    ))


def _project_command(name: str) -> Any:
    if name == "summary":
        return summary
    if name == "syncworld":
        from klear_lightning.data.syncworld import generate_syncworld

        return generate_syncworld
    if name == "prepare":
        from klear_lightning.data.prepare import prepare

        return prepare
    if name == "cache":
        from klear_lightning.data.cache import cache_latents

        return cache_latents
    if name == "generate":
        from klear_lightning.generate import generate

        return generate
    if name == "sweep":
        from klear_lightning.sweep import sweep

        return sweep
    from klear_lightning.compare import compare

    return compare


def run_function(name: str, fn: Any, args: list[str]) -> Any:
    """Parse `args` into `fn`'s typed parameters (a plain parser: `--config` is a parameter here,
    not jsonargparse's config-file option) and call it."""
    parser = ArgumentParser(prog=f"klear {name}", description=(fn.__doc__ or "").split("\n")[0])
    parser.add_function_arguments(fn, as_positional=False)
    init = parser.instantiate_classes(parser.parse_args(args))
    return fn(**{k: v for k, v in vars(init).items() if not k.startswith("__")})


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "test" and any(a == "--prompts" or a.startswith("--prompts=") for a in args):
        from klear_lightning.versebench import run_prompts

        run_function("test", run_prompts, args[1:])
        return
    if args and args[0] in PROJECT_COMMANDS:
        result = run_function(args[0], _project_command(args[0]), args[1:])
        if args[0] == "cache":
            print(json.dumps(asdict(result), indent=1))
        if args[0] == "sweep" and result.failed:
            sys.exit(1)
        return
    cli_main(argv)


if __name__ == "__main__":
    main()
