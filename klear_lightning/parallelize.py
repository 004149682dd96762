"""All parallelism of the denoiser in one function (torchtitan style).

Order: activation checkpointing per block, then `torch.compile` per block, then FSDP2
`fully_shard` per block (the last block is not resharded after forward: its parameters are
needed again at once by backward), then the root (never resharded after forward). bf16 mixed precision keeps fp32 master
weights and reduces gradients in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


@dataclass(frozen=True)
class ParallelConfig:
    """How the model is laid out under `ModelParallelStrategy` (ignored by other strategies).

    Args:
        activation_checkpointing: recompute each block's activations in backward.
        compile: `torch.compile` each block.
        param_dtype: dtype of the gathered parameters in forward / backward (fp32 master weights).
        reshard_after_forward: free each block's gathered parameters after forward (ZeRO-3).
    """

    activation_checkpointing: bool = True
    compile: bool = False
    param_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    reshard_after_forward: bool = True


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a KLEAR model: every entry of its ModuleLists named `blocks`."""
    blocks: list[nn.Module] = []
    for name, child in model.named_modules():
        if name.split(".")[-1] == "blocks" and isinstance(child, nn.ModuleList):
            blocks.extend(child)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no `blocks` ModuleList to shard")
    return blocks


def parallelize(model: nn.Module, cfg: ParallelConfig, mesh: DeviceMesh | None) -> nn.Module:
    """Apply activation checkpointing, compile and FSDP2 to `model` in place; returns it."""
    for parent_name, parent in list(model.named_modules()):
        if parent_name.split(".")[-1] != "blocks" or not isinstance(parent, nn.ModuleList):
            continue
        for i, block in enumerate(parent):
            if cfg.activation_checkpointing:
                block = checkpoint_wrapper(block, preserve_rng_state=False)
            if cfg.compile:
                block = torch.compile(block)
            parent[i] = block
    if mesh is None:
        return model
    dp_mesh = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
    policy = MixedPrecisionPolicy(param_dtype=getattr(torch, cfg.param_dtype), reduce_dtype=torch.float32)
    blocks = model_blocks(model)
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        fully_shard(block, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=cfg.reshard_after_forward and not last)
    # The root (embeddings, final layers, null captions) stays gathered from forward to backward:
    # the null captions are also used outside forward (caption dropout, guidance).
    fully_shard(model, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=False)
    return model
