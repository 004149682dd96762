"""`KlearModule`: the LightningModule that trains the KLEAR denoiser with flow matching.

One training step: draw a task per sample (random modality masking), drop captions to the learned
null embeddings, noise the generated streams, predict velocities, take the masked per-modality loss.
All randomness of a step (tasks, caption dropout, t, noise) comes from two generators owned by the
module (CPU for task draws, device for the rest) whose states are stored in every checkpoint,
so a resumed run repeats the same steps.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor
from torch.distributed.fsdp import FSDPModule

from klear_lightning.checkpoint import check_weights_fit, load_model_weights
from klear_lightning.codecs import Decoders
from klear_lightning.config_checks import check_model_matches_data
from klear_lightning.errors import ConfigError
from klear_lightning.flow import FlowMatching, FlowSample, LossTerms, TimestepSampler, drop_captions, flow_loss
from klear_lightning.keys import SPLIT_LOSS, TASK_LOSS
from klear_lightning.media import MediaClip
from klear_lightning.models import ModelConfig, build_model, materialize
from klear_lightning.optim import OptimConfig, build_optimizer
from klear_lightning.parallelize import ParallelConfig, parallelize
from klear_lightning.sampling import SamplerConfig, sample
from klear_lightning.streams import AVBatch
from klear_lightning.tasks import PAPER_TASKS, Role, TaskBatch, TaskSampler, get_task

T_BUCKETS = 4


class KlearModule(L.LightningModule):
    """Flow-matching trainer for the KLEAR single-tower (or dual-tower ablation) denoiser.

    Args:
        net: the denoiser's architecture (`ModelConfig`; channels, text width and latent fps are
            linked from the data by the CLI); the network is `KlearModule.model`.
        task_weights: relative weight per task name (see `klear_lightning.tasks.TASKS`).
        timesteps: training timestep distribution.
        independent_t: draw t per modality instead of one t per sample.
        lambda_video: weight of the video loss (mean squared error over generated video frames).
        lambda_audio: weight of the audio loss (mean squared error over generated audio frames).
        caption_dropout: probability of replacing a caption by the learned null embedding.
        optim: AdamW and learning-rate schedule.
        parallel: FSDP2 / activation checkpointing / compile (used under `ModelParallelStrategy`).
        val_sampler: sampler used by `generate` when none is passed.
        max_nonfinite: this many non-finite losses in a row stop the run.
        init_from: a previous stage's checkpoint (`.ckpt` file or sharded folder) whose model
            weights initialise this run (optimizer, EMA and step start fresh).
        predict_task: the task `klear predict` generates for each batch.
        seed: seed of the step generators (offset by the global rank).
    """

    def __init__(
        self,
        net: ModelConfig,
        task_weights: dict[str, float] | None = None,
        timesteps: TimestepSampler = TimestepSampler(),
        independent_t: bool = False,
        lambda_video: float = 1.0,
        lambda_audio: float = 1.0,
        caption_dropout: float = 0.1,
        optim: OptimConfig = OptimConfig(),
        parallel: ParallelConfig = ParallelConfig(),
        val_sampler: SamplerConfig = SamplerConfig(),
        max_nonfinite: int = 8,
        init_from: str | None = None,
        predict_task: str = "t2av",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model_config = net
        self.task_sampler = TaskSampler(task_weights or {t: 1.0 for t in PAPER_TASKS})
        self.flow = FlowMatching(timesteps=timesteps, independent=independent_t, audio_patch=net.audio_patch)
        self.lambda_video = lambda_video
        self.lambda_audio = lambda_audio
        if not 0.0 <= caption_dropout <= 1.0:
            raise ConfigError(f"model.caption_dropout: must be in [0, 1], got {caption_dropout}")
        self.caption_dropout = caption_dropout
        self.optim = optim
        self.parallel = parallel
        self.val_sampler = val_sampler
        if max_nonfinite < 1:
            raise ConfigError(f"model.max_nonfinite: must be >= 1, got {max_nonfinite}")
        self.max_nonfinite = max_nonfinite
        self.init_from = init_from
        get_task(predict_task)
        self.predict_task = predict_task
        self.seed = seed
        self.model: torch.nn.Module | None = None
        self.decoders: Decoders | None = None
        self.nonfinite_total = 0
        self.nonfinite_in_row = 0
        self._generators: tuple[torch.Generator, torch.Generator] | None = None
        self._val_groups: dict[str, list[float]] = {}
        self._pending_states: tuple[Tensor, Tensor] | None = None

    # ----------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        strategy = self._trainer.strategy if self._trainer else None
        sharded = isinstance(strategy, ModelParallelStrategy)
        # Under FSDP2 the model is built on the meta device, parallelized, then materialised shard by
        # shard (torchtitan's order): no rank ever holds the whole model.
        with torch.device("meta") if sharded else nullcontext():
            self.model = build_model(self.model_config)
        if self.caption_dropout == 0:
            # Only caption dropout trains the null captions; without it they would get no gradient.
            self.model.null_video_text.requires_grad_(False)
            self.model.null_audio_text.requires_grad_(False)
        if sharded:
            parallelize(self.model, self.parallel, self.device_mesh)
            materialize(self.model, strategy.root_device)
        if self.init_from:
            load_model_weights(self.init_from, self.model)

    def _unshard_root(self) -> None:
        """Under FSDP2, gather the root's parameters before the null captions are used outside the
        model's forward (caption dropout, guidance); they stay gathered through forward and backward."""
        if isinstance(self.model, FSDPModule):
            self.model.unshard()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "sequence") and hasattr(dm, "text_dim"):
            check_model_matches_data(self.model_config, dm.sequence, dm.text_dim)

    # -------------------------------------------------------------- randomness
    def generators(self) -> tuple[torch.Generator, torch.Generator]:
        """(CPU generator for task draws, device generator for dropout, t and noise)."""
        if self._generators is None or self._generators[1].device != self.device:
            tasks = torch.Generator().manual_seed(self.seed + self.global_rank)
            noise = torch.Generator(device=self.device).manual_seed(self.seed + self.global_rank + 7919)
            if self._pending_states is not None:
                tasks.set_state(self._pending_states[0])
                noise.set_state(self._pending_states[1])
                self._pending_states = None
            self._generators = (tasks, noise)
        return self._generators

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        tasks, noise = self.generators()
        checkpoint["klear"] = {
            "task_generator": self._per_rank(tasks.get_state()),
            "noise_generator": self._per_rank(noise.get_state()),
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_row": self.nonfinite_in_row,
            "task_weights": self.task_sampler.weights,
            "model_config": asdict(self.model_config),
        }

    def _per_rank(self, state: Tensor) -> Tensor:
        """Generator states of every rank stacked (W, S): a sharded checkpoint keeps rank 0's dict only."""
        if self.trainer.world_size == 1:
            return state[None]
        gathered = self.all_gather(state.to(self.device))
        return gathered.cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state_dict = checkpoint.get("state_dict")
        if state_dict and self.model is not None and not isinstance(self.trainer.strategy, ModelParallelStrategy):
            # a checkpoint of another model fails with one line naming what differs, before Lightning loads it
            weights = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
            check_weights_fit(
                weights, self.model.state_dict(), checkpoint, self.model_config, self.trainer.ckpt_path, "ckpt_path"
            )
        state = checkpoint.get("klear")
        if state is None:
            return
        rank = self.global_rank
        if rank >= len(state["task_generator"]):
            raise RuntimeError(
                f"checkpoint holds generator states of {len(state['task_generator'])} ranks; this run has "
                f"rank {rank}: resume with the same number of processes"
            )
        # clone: Generator.set_state crashes on a view with a storage offset (torch 2.13)
        self._pending_states = (state["task_generator"][rank].clone(), state["noise_generator"][rank].clone())
        self._generators = None
        self.nonfinite_total = state["nonfinite_total"]
        self.nonfinite_in_row = state["nonfinite_in_row"]
        self.task_sampler.set_weights(state["task_weights"])

    # --------------------------------------------------------------- training
    def _loss(
        self,
        batch: AVBatch,
        generators: tuple[torch.Generator, torch.Generator],
        drop: float,
        names: list[str] | None = None,
    ) -> tuple[LossTerms, FlowSample, TaskBatch]:
        """Flow loss of `batch` with one task per sample: `names`, or drawn from the task sampler."""
        task_gen, generator = generators
        if names is None:
            names = self.task_sampler.sample(batch.batch_size, generator=task_gen)
        tasks = TaskBatch.from_names(names, device=self.device)
        fs = self.flow.make_inputs(batch, tasks, generator)
        self._unshard_root()
        if drop > 0:
            fs.inputs = drop_captions(fs.inputs, self.model, drop, generator)
        pred = self.model(fs.inputs)
        terms = flow_loss(pred, fs, self.lambda_video, self.lambda_audio)
        return terms, fs, tasks

    def training_step(self, batch: AVBatch, batch_idx: int) -> Tensor | None:
        terms, fs, tasks = self._loss(batch, self.generators(), self.caption_dropout)
        finite = bool(torch.isfinite(terms.total).item())
        all_finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not all_finite:
            self.nonfinite_total += 1
            self.nonfinite_in_row += 1
            self.log("train/nonfinite_total", float(self.nonfinite_total), on_step=True, on_epoch=False)
            if self.nonfinite_in_row >= self.max_nonfinite:
                raise RuntimeError(
                    f"{self.nonfinite_in_row} non-finite losses in a row (max_nonfinite="
                    f"{self.max_nonfinite}) at global step {self.global_step}: stopping. Lower "
                    "model.optim.lr, check the data's latent statistics, or resume from an earlier checkpoint."
                )
            return None
        self.nonfinite_in_row = 0
        bs = batch.batch_size
        self.log("train/loss", terms.total, prog_bar=True, on_step=True, on_epoch=False, batch_size=bs)
        self.log("train/loss_video", terms.video, on_step=True, on_epoch=False, batch_size=bs)
        self.log("train/loss_audio", terms.audio, on_step=True, on_epoch=False, batch_size=bs)
        self.log("train/nonfinite_total", float(self.nonfinite_total), on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        for key, value in self._breakdown(terms, fs, tasks.names).items():
            self.log(f"train/{key}", value, on_step=True, on_epoch=False)
        return terms.total

    def _breakdown(self, terms: LossTerms, fs: FlowSample, names: list[str]) -> dict[str, float]:
        """Mean per-sample loss by task and by t bucket ([0, 1/4), ..., [3/4, 1]); a sample's t is its
        video t when it generates video, else its audio t."""
        per_sample = self.lambda_video * terms.video_per_sample + self.lambda_audio * terms.audio_per_sample
        t = torch.where(terms.video_count > 0, fs.t_video, fs.t_audio)
        buckets = (t.detach().float() * T_BUCKETS).long().clamp(0, T_BUCKETS - 1).tolist()
        groups: dict[str, list[float]] = defaultdict(list)
        for value, name, bucket in zip(per_sample.detach().float().tolist(), names, buckets):
            groups[TASK_LOSS.format(task=name)].append(value)
            groups[f"loss_t/{bucket / T_BUCKETS:.2f}-{(bucket + 1) / T_BUCKETS:.2f}"].append(value)
        return {k: sum(v) / len(v) for k, v in groups.items()}

    def on_validation_epoch_start(self) -> None:
        self._val_groups: dict[str, list[float]] = {}

    def validation_step(self, batch: AVBatch, batch_idx: int) -> Tensor:
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: AVBatch, batch_idx: int) -> Tensor:
        # `klear test` logs under the name of the partition it scores: `test/...`, or e.g. `ood/...`
        # with `data.init_args.test_partition: ood`, so both can go into one MLflow run.
        return self._eval_step(batch, batch_idx, getattr(self.trainer.datamodule, "test_partition", "test"))

    def predict_step(self, batch: AVBatch, batch_idx: int) -> list[MediaClip]:
        """`predict_task` sampled with `val_sampler` and decoded (write them with a prediction writer)."""
        return self.generate(batch, self.predict_task)

    def _eval_generators(self, batch_idx: int) -> tuple[torch.Generator, torch.Generator]:
        """Generators of validation / test draws, fixed by (seed, global rank, batch index): the same
        at every validation, different on every rank (each rank sees its own clips)."""
        seed = (self.seed * 1_000_003 + batch_idx) * 65_537 + self.global_rank
        return torch.Generator().manual_seed(seed), torch.Generator(device=self.device).manual_seed(seed)

    def _eval_step(self, batch: AVBatch, batch_idx: int, prefix: str) -> Tensor:
        """Flow loss of EVERY task of the stage (`task_weights`' names, whatever their weights) on
        every clip of the batch, with the same t and noise for each task: a fixed assignment, so the
        per-task and per-split losses the curriculum reads compare across validations."""
        bs = batch.batch_size
        video = torch.zeros(2, dtype=torch.float64, device=self.device)  # squared-error sum, count
        audio = torch.zeros(2, dtype=torch.float64, device=self.device)
        for name in self.task_sampler.names:
            terms, _, _ = self._loss(batch, self._eval_generators(batch_idx), drop=0.0, names=[name] * bs)
            video += torch.stack([(terms.video_per_sample * terms.video_count).sum(), terms.video_count.sum()])
            audio += torch.stack([(terms.audio_per_sample * terms.audio_count).sum(), terms.audio_count.sum()])
            if prefix == "val":
                self._accumulate(terms, name, batch)
        loss_video = (video[0] / video[1].clamp(min=1)).float()
        loss_audio = (audio[0] / audio[1].clamp(min=1)).float()
        total = self.lambda_video * loss_video + self.lambda_audio * loss_audio
        self.log(f"{prefix}/loss", total, prog_bar=True, sync_dist=True, batch_size=bs)
        self.log(f"{prefix}/loss_video", loss_video, sync_dist=True, batch_size=bs)
        self.log(f"{prefix}/loss_audio", loss_audio, sync_dist=True, batch_size=bs)
        return total

    def _accumulate(self, terms: LossTerms, task: str, batch: AVBatch) -> None:
        """Add each sample's loss under `task` to its task's and its split's validation sums."""
        per_sample = self.lambda_video * terms.video_per_sample + self.lambda_audio * terms.audio_per_sample
        for i, value in enumerate(per_sample.tolist()):
            split = batch.meta[i].get("split") if i < len(batch.meta) else None
            for key in (TASK_LOSS.format(task=task), SPLIT_LOSS.format(split=split) if split else None):
                if key is not None:
                    acc = self._val_groups.setdefault(key, [0.0, 0.0])
                    acc[0] += value
                    acc[1] += 1

    def on_validation_epoch_end(self) -> None:
        """Per-task and per-split validation loss (the curriculum rebalancer reads these): a split's is
        the mean over its clips and every task."""
        dm = getattr(self.trainer, "datamodule", None)
        splits = sorted(set(getattr(dm, "val_splits", None) or []))
        keys = [TASK_LOSS.format(task=t) for t in self.task_sampler.names] + [
            SPLIT_LOSS.format(split=sp) for sp in splits
        ]
        sums = torch.tensor(
            [self._val_groups.get(k, [0.0, 0.0]) for k in keys], dtype=torch.float64, device=self.device
        )
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum") if self.trainer.world_size > 1 else sums
        for key, (total, count) in zip(keys, sums.tolist()):
            if count > 0:
                self.log(f"val/{key}", total / count, sync_dist=False, rank_zero_only=True)
        if dm is not None and hasattr(dm, "skipped_counts"):
            for reason, n in dm.skipped_counts().items():
                self.log(f"data/skipped/{reason}", float(n), rank_zero_only=True)

    def configure_optimizers(self) -> dict[str, Any]:
        total = self.optim.total_steps
        if total is None:
            total = int(self.trainer.estimated_stepping_batches)
            if total <= 0 or total == float("inf"):
                raise ConfigError("model.optim.total_steps: required when trainer.max_steps is not set")
        params = (p for p in self.model.parameters() if p.requires_grad)
        opt, schedule = build_optimizer(params, self.optim, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------- generation
    def on_fit_start(self) -> None:
        self._attach_decoders()

    def on_validation_start(self) -> None:
        self._attach_decoders()

    def on_test_start(self) -> None:
        self._attach_decoders()

    def on_predict_start(self) -> None:
        self._attach_decoders()

    def _attach_decoders(self) -> None:
        if self.decoders is None and self._trainer is not None:
            dm = getattr(self.trainer, "datamodule", None)
            if dm is not None and hasattr(dm, "decoders"):
                self.decoders = dm.decoders()

    @torch.no_grad()
    def generate(self, batch: AVBatch, task: str, sampler: SamplerConfig | None = None) -> list[MediaClip]:
        """Sample `task` for every item of `batch` and decode to media (conditions pass through)."""
        recipe = get_task(task)
        tasks = TaskBatch.from_names([task] * batch.batch_size, device=self.device)
        self._unshard_root()
        out = sample(self.model, batch.to(self.device), tasks, sampler or self.val_sampler)
        video = out.video if recipe.video is not Role.ABSENT else None
        audio = out.audio if recipe.audio is not Role.ABSENT else None
        return self._decode(video, audio, batch.meta, batch.batch_size)

    @torch.no_grad()
    def reference_media(self, batch: AVBatch) -> list[MediaClip]:
        """The batch's own clean latents decoded the same way as generated ones."""
        return self._decode(batch.video, batch.audio, batch.meta, batch.batch_size)

    def _decode(self, video: Tensor | None, audio: Tensor | None, meta: list[dict], n: int) -> list[MediaClip]:
        if self.decoders is None:
            raise RuntimeError(
                "KlearModule.generate needs decoders: attach them with `module.decoders = Decoders(...)` "
                "or use a datamodule that provides `decoders()`"
            )
        d = self.decoders
        frames = d.video(video).cpu() if video is not None else None
        waves = d.audio(audio).cpu() if audio is not None else None
        return [
            MediaClip(
                video=frames[i] if frames is not None else None,
                fps=d.fps,
                audio=waves[i].clamp(-1, 1) if waves is not None else None,
                sample_rate=d.sample_rate,
                meta=meta[i] if i < len(meta) else {},
            )
            for i in range(n)
        ]
