"""Run under `torchrun --nproc-per-node N` (gloo, CPU) by tests/integration/test_sharded_build.py.

Builds the denoiser the way `KlearModule.configure_model` does under FSDP2 (meta device ->
`parallelize` -> `materialize`) and writes what the test checks to `<out>/rank<r>.pt`:
- `rss_growth` / `model_bytes`: growth of this process's peak RSS while building a model of
  `model_bytes` fp32 bytes (the big config, built first so the peak is the build's);
- `init`: the tiny model's gathered initial weights (seed `--seed`);
- `init_from_file` / `init_from_folder`: gathered weights after `load_model_weights` from a
  `.ckpt` file and from a sharded folder (written by the test);
- `bytes` / `estimate`: per-rank bytes of the sharded parameters, gradients and AdamW state after
  one step, and what `klear summary`'s estimate says for this rank.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from klear_lightning.checkpoint import load_model_weights
from klear_lightning.models import ModelConfig, build_model, materialize
from klear_lightning.models.inputs import InputShape, random_inputs
from klear_lightning.parallelize import ParallelConfig, parallelize
from klear_lightning.summary import sharded_bytes
from klear_lightning.tasks import TaskBatch


def tiny(**overrides) -> ModelConfig:
    base = dict(
        dim=32,
        depth=2,
        heads=2,
        text_dim=24,
        video_channels=4,
        audio_channels=3,
        video_patch=2,
        audio_patch=1,
        attention_backend="reference",
    )
    return ModelConfig.preset("tiny", **{**base, **overrides})


def sharded(cfg: ModelConfig, mesh, parallel: ParallelConfig) -> torch.nn.Module:
    with torch.device("meta"):
        model = build_model(cfg)
    parallelize(model, parallel, mesh)
    materialize(model, "cpu")
    return model


def gathered(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.full_tensor().clone() for k, v in model.state_dict().items()}  # a copy: with one rank it is a view


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def local_bytes(tensors) -> int:
    return sum(t.to_local().nbytes if hasattr(t, "to_local") else t.nbytes for t in tensors)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--big_dim", type=int, default=384)
    p.add_argument("--big_depth", type=int, default=6)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
    parallel = ParallelConfig(activation_checkpointing=True, param_dtype="float32")
    result: dict = {}

    if args.big_dim:
        big = tiny(dim=args.big_dim, depth=args.big_depth, heads=args.big_dim // 64)
        with torch.device("meta"):
            result["model_bytes"] = sum(p.numel() * 4 for p in build_model(big).parameters())
        dist.barrier()
        before = peak_rss_bytes()
        model = sharded(big, mesh, parallel)
        result["rss_growth"] = peak_rss_bytes() - before
        result["local_param_bytes"] = local_bytes(model.parameters())
        del model

    torch.manual_seed(args.seed)
    model = sharded(tiny(), mesh, parallel)
    result["init"] = gathered(model)
    result["rng_after"] = torch.rand(4)
    for key in ("file", "folder"):
        path = args.out / f"init_from.{'ckpt' if key == 'file' else 'dcp'}"
        if path.exists():
            load_model_weights(path, model)
            result[f"init_from_{key}"] = gathered(model)

    for null in (model.null_video_text, model.null_audio_text):  # as without caption dropout: frozen, so no
        null.requires_grad_(False)  # gradient nor optimizer state
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
    shape = InputShape(video_frames=3, video_hw=(4, 4), audio_frames=12, text_tokens=5)
    x = random_inputs(tiny(), TaskBatch.from_names(["t2av", "t2av"]), shape, torch.Generator().manual_seed(rank))
    out = model(x)
    (out.video.square().mean() + out.audio.square().mean()).backward()
    opt.step()
    trainable = [q for q in model.parameters() if q.requires_grad]
    result["bytes"] = {
        "parameters": local_bytes(model.parameters()),
        "gradients": local_bytes(q.grad for q in trainable),
        "optimizer": local_bytes(t for s in opt.state.values() for t in s.values()),
    }
    with torch.device("meta"):
        meta = build_model(tiny())
    meta.null_video_text.requires_grad_(False)
    meta.null_audio_text.requires_grad_(False)
    result["estimate"] = sharded_bytes(meta, world, rank)
    torch.save(result, args.out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
