"""How a training run spreads over its ranks, and how its checkpoints survive a change of world size.

* **DDP** (small models): every rank holds the whole model, gradients and AdamW states (16 bytes a parameter in
  fp32) and all-reduces the gradients.
* **FSDP2** (`torch.distributed.fsdp.fully_shard`, XXL / 3B): every transformer block and the root are sharded, so a
  rank holds 1/world of the parameters, gradients and optimizer states and gathers one block at a time; on a GPU the
  blocks compute in bf16 and reduce in fp32 (`MixedPrecisionPolicy`). 3.1B parameters need ~50 GB of fp32 weights,
  gradients and AdamW states: they do not fit one 80 GB GPU beside activations under DDP, and do under FSDP on 8.
* **Activation checkpointing** recomputes each block's activations in the backward pass, keeping only its input.
* **Gradient accumulation** (`micro_batch`): a rank runs its share of the global batch in micro-batches, so the
  global batch — and with it the recipe — holds at any GPU count.

Checkpoints of an FSDP run go through `torch.distributed.checkpoint` (`ckpt.dcp/`, one file per rank plus metadata),
which reshards on load: a run requeued onto another number of GPUs (or resumed in one process) continues from it.
`par plan` (par/train/plan.py) estimates what each choice holds per GPU and picks the `auto` strategy.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn

from par.errors import UserError
from par.train import comm

STRATEGIES = ("auto", "ddp", "fsdp")
FSDP_MIN_PARAMS = 1_000_000_000  # `auto`: FSDP from GPT-XXL (1.4B) up, as `par plan`'s memory estimate asks


def blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: the units of sharding and of activation checkpointing (PAR/LlamaGen: `layers`;
    ARPG: its self- and cross-decoder blocks)."""
    layers = model.layers
    if isinstance(layers, nn.ModuleList):
        return list(layers)
    return [*layers.self_dec, *layers.cross_dec]


def strategy(requested: str, num_params: int, world: int) -> str:
    """The strategy of a run: as requested, or for `auto` FSDP for ≥ 1B parameters on several ranks."""
    if requested not in STRATEGIES:
        raise UserError(f"parallel={requested!r}: use one of {', '.join(STRATEGIES)}")
    if requested == "auto":
        return "fsdp" if world > 1 and num_params >= FSDP_MIN_PARAMS else "ddp"
    return requested


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute every block's activations in the backward pass (parameter names unchanged, so checkpoints and
    the released key manifests still match)."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks(model):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def shard(model: nn.Module, bf16: bool, mesh=None) -> nn.Module:
    """FSDP2 in place: each block, then the root (embeddings, norm, head). `mesh` (`comm.shard_mesh`): 1-D shards
    over every rank; 2-D ("replicate", "shard") is hybrid sharding, whose reduce-scatter stays inside a node."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def wrap(model: nn.Module, kind: str, world: int, local_rank: int, device: torch.device, bf16: bool) -> nn.Module:
    """The forward callable of the training step: the model itself (one process, or FSDP, which shards in place)
    or its DDP wrapper."""
    if kind == "fsdp":
        return shard(model, bf16)
    if world > 1 or comm.initialized():  # a group of one too (the GPU acceptance suite's NCCL run)
        return nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    return model


def sync_gradients(fwd: nn.Module, model: nn.Module, enabled: bool):
    """A context in which backward passes accumulate locally (all but the last micro-batch) or synchronise."""
    import contextlib

    if isinstance(fwd, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if enabled else fwd.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm; under FSDP the norm is a DTensor over the shards, returned as a full tensor."""
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


# -- checkpoints that reshard ------------------------------------------------------------------------------------


def full_state_dict(model: nn.Module) -> dict:
    """The whole model's state dict on CPU (a collective under FSDP: every rank calls it; rank 0 keeps it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(path: Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict, rank: int) -> None:
    """`path` (a folder): weights and optimizer states through torch.distributed.checkpoint, and `meta.pt` (step,
    RNG states, world size) from rank 0. Written into `<path>.tmp` and renamed, so a kill leaves the old one whole."""
    import shutil

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from par import io

    tmp = path.with_name(path.name + ".tmp")
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    comm.barrier()
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    if rank == 0:
        io.torch_save(meta, tmp / "meta.pt")
        old = path.with_name(path.name + ".old")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        if old.exists():
            shutil.rmtree(old)
    comm.barrier()


def load_sharded(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Load a `save_sharded` folder into this run, whatever its world size and strategy now; returns its meta."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from par.io import torch_load

    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return torch_load(path / "meta.pt")
