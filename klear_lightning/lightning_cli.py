"""The LightningCLI behind `klear fit / validate / test / predict`, and parsing a training config.

`KlearCLI` links the denoiser's input widths to the data module's codecs, runs the config checks
(and the demo's SyncWorld bootstrap) before anything is instantiated, writes checkpoints atomically
and logs the resolved config to MLflow. `instantiate_model_and_data` builds the model and data
modules of a config without a trainer, for `klear summary` and `klear generate`;
`instantiate_callbacks` builds a config's trainer callbacks, so `klear sweep` finds a bad one before any run.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies import ModelParallelStrategy

from klear_lightning.checkpoint import AtomicCheckpointIO, check_checkpoint_path, run_id_from_checkpoint
from klear_lightning.codecs import AudioCodecConfig, TextEncoderConfig, VideoCodecConfig
from klear_lightning.config_checks import check_config, check_data_config
from klear_lightning.data.syncworld.bootstrap import bootstrap_syncworld
from klear_lightning.data.syncworld.clip import SceneScale
from klear_lightning.errors import ConfigError
from klear_lightning.logging import KlearMLFlowLogger, RunIdInCheckpoint, flatten_config
from klear_lightning.module import KlearModule
from klear_lightning.safe_pickle import load_dcp_metadata
from klear_lightning.sequence import ClipSpec


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


def _scene(value: Any) -> SceneScale:
    """`--syncworld_scene` as a SceneScale (a Namespace before instantiation)."""
    return SceneScale(**value.as_dict()) if isinstance(value, Namespace) else (value or SceneScale())


def bootstrap_from_config(config: Namespace) -> None:
    """`bootstrap_syncworld` with the settings of a parsed training config: the splits the data
    config names (train, val and test), its clip, resolution buckets and codecs."""
    clips = config.get("syncworld_clips_per_split") or 0
    root = config.get("data.init_args.root")
    if clips <= 0 or root is None:
        return
    train = list(config.get("data.init_args.train_splits") or {})
    splits = list(
        dict.fromkeys(
            train
            + list(config.get("data.init_args.val_splits") or [])
            + list(config.get("data.init_args.test_splits") or [])
        )
    )
    bootstrap_syncworld(
        Path(root),
        clips,
        splits,
        clip=_init_value(config, "clip", ClipSpec),
        resolutions=[tuple(r) for r in config.get("data.init_args.resolutions") or []],
        video_codec=_init_value(config, "video_codec", VideoCodecConfig),
        audio_codec=_init_value(config, "audio_codec", AudioCodecConfig),
        text_encoder=_init_value(config, "text_encoder", TextEncoderConfig),
        seed=config.get("data.init_args.seed") or 0,
        workers=max(1, min(2, config.get("data.init_args.num_workers") or 1)),
        scene=_scene(config.get("syncworld_scene")),
    )


class KlearCLI(LightningCLI):
    """LightningCLI with the project's links, config checks, checkpointing and MLflow wiring."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--stage", type=str, default="pretrain", help="curriculum stage (MLflow tag)")
        parser.add_argument("--ablation", type=str, default="baseline", help="ablation name (MLflow tag)")
        parser.add_argument(
            "--syncworld_clips_per_split",
            type=int,
            default=0,
            help="when > 0 and data.init_args.root has no shards yet, generate SyncWorld there first "
            "(this many clips per split; the demo's self-bootstrap)",
        )
        parser.add_argument(
            "--syncworld_scene",
            type=SceneScale,
            default=SceneScale(),
            help="how large SyncWorld draws faces, mouths and sound objects when it is generated",
        )
        links = {
            "model.net.video_channels": _data_attr("video_channels"),
            "model.net.audio_channels": _data_attr("audio_channels"),
            "model.net.text_dim": _text_dim,
            "model.net.video_latent_fps": _video_fps,
            "model.net.audio_latent_fps": _audio_fps,
        }
        for target, fn in links.items():
            parser.link_arguments("data", target, compute_fn=fn, apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """A bad `--ckpt_path` fails here with one line, before LightningCLI reads the file for hparams."""
        if self.config.get("subcommand"):
            check_checkpoint_path(self.config[self.config.subcommand].get("ckpt_path"), "ckpt_path")
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_config(config)
        bootstrap_from_config(config)
        check_data_config(config)

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
        parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


class ParseOnlyCLI(KlearCLI):
    """Parses a training config without checking or instantiating anything (for `klear summary`)."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def parse_config(*args: str) -> ParseOnlyCLI:
    """The `fit` arguments `args` (e.g. `--config a.yaml --config b.yaml --model.seed 1`) parsed,
    defaults filled in, without checks or instantiation (`.config` is the parsed namespace)."""
    with warnings.catch_warnings():  # explicit args beside a command line are the point here
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return ParseOnlyCLI(
            KlearModule,
            LightningDataModule,
            subclass_mode_data=True,
            args=list(args),
            run=False,
            save_config_callback=None,
            auto_configure_optimizers=False,
            seed_everything_default=False,
            parser_kwargs={"exit_on_error": False},
        )


def instantiate_model_and_data(config: Path) -> tuple[KlearModule, LightningDataModule]:
    """The model and data modules of a training config (no trainer, no checks of data paths)."""
    cli = parse_config("--config", str(config))
    init = cli.parser.instantiate_classes(Namespace(model=cli.config.model, data=cli.config.data))
    return init.model, init.data


def instantiate_callbacks(config: Namespace) -> list[Callback]:
    """The trainer callbacks of a parsed config, built as `klear fit` builds them. A callback whose
    arguments are rejected raises `ConfigError("trainer.callbacks[i] (<class>): <why>")`."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callback", type=Callback)
    built = []
    for i, callback in enumerate(config.trainer.callbacks or []):
        if not isinstance(callback, Namespace):
            built.append(callback)
            continue
        try:
            built.append(parser.instantiate(parser.parse_object({"callback": callback.as_dict()})).callback)
        except ValueError as err:
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, ConfigError):
                cause = cause.__cause__
            reason = str(cause) if cause is not None else str(err).splitlines()[0]
            raise ConfigError(f"trainer.callbacks[{i}] ({callback.class_path}): {reason}") from err
    return built
