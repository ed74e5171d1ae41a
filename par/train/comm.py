"""Every collective of a training run, in one place, on the process group's device.

NCCL takes CUDA tensors only: a CPU tensor handed to an NCCL group fails on the first step of a multi-GPU run, which
no gloo-on-CPU test sees (ecosystem notes §9). So no module but this one calls `torch.distributed` collectives
(tests/test_comm.py greps for it), and every tensor this module hands to the group goes through `on_group`, which
puts it on the device the group's backend serves (`group_device`). Guards such as "world > 1" live here too, so the
GPU acceptance suite can call each helper on a real NCCL group of one rank (NCCL allows one rank per GPU).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def init(device: torch.device, single_group: bool = False) -> tuple[int, int, int]:
    """(rank, world, local_rank) from the torchrun/submitit environment variables; inits the process group on the
    backend of `device` (NCCL for CUDA, gloo for the CPU). With `single_group` a group is made for one process too:
    FSDP shards over a process group even when it has one member."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not initialized():
        if world > 1:
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        elif single_group:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return int(os.environ.get("RANK", 0)), world, int(os.environ.get("LOCAL_RANK", 0))


def shard_mesh(device: torch.device, shard_group: int = 0):
    """The device mesh FSDP shards over: 1-D (full sharding) when the shard group is the whole world, else 2-D
    ("replicate", "shard") — hybrid sharding. `shard_group` 0 = the GPUs of one node (LOCAL_WORLD_SIZE)."""
    from torch.distributed.device_mesh import init_device_mesh

    from par.errors import UserError

    world = world_size()
    shard = shard_group or int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if shard <= 0 or world % shard:
        raise UserError(f"fsdp_shard_group={shard_group}: the world size {world} is not a multiple of the shard "
                        f"group ({shard}); use a divisor of {world}, or 0 for one node")
    if shard == world:
        return init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    return init_device_mesh(device.type, (world // shard, shard), mesh_dim_names=("replicate", "shard"))


def group_device() -> torch.device:
    """The device whose tensors the default group's backend takes: the CPU when any of its backends serves the CPU
    (gloo), else the accelerator (NCCL: this process's current CUDA device)."""
    served = {entry.split(":")[0].strip() for entry in dist.get_backend_config().split(",")}
    if "cpu" in served:
        return torch.device("cpu")
    kind = sorted(served)[0]
    module = getattr(torch, kind, None)
    available = module is not None and hasattr(module, "is_available") and module.is_available()
    index = module.current_device() if available else None
    return torch.device(kind, index)


def on_group(t: torch.Tensor) -> torch.Tensor:
    """`t` on the group's device (a copy when it lives elsewhere): the one way a tensor reaches a collective."""
    return t.to(group_device())


def _host(t: torch.Tensor) -> torch.Tensor:
    return t.cpu()


def any_flag(flag: bool) -> bool:
    """Whether any rank raised `flag` (e.g. a stop signal caught): every rank must call it at the same point."""
    if not initialized():
        return flag
    t = on_group(torch.tensor([int(flag)], dtype=torch.int32))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(_host(t).item())


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over ranks (a metric for the log), returned on `t`'s device. Sum / world rather than
    ReduceOp.AVG, which gloo lacks."""
    if not initialized():
        return t
    g = on_group(t.detach().float().clone())
    dist.all_reduce(g, op=dist.ReduceOp.SUM)
    g = g / dist.get_world_size()
    return g if g.device == t.device else _host(g).to(t.device)


def barrier() -> None:
    """Wait for every rank. NCCL's barrier runs on this process's current device (set by `setup_device`)."""
    if initialized():
        dist.barrier()


def all_gather_objects(obj) -> list:
    """`obj` of every rank, in rank order (picklable objects, e.g. RNG states). For NCCL torch serialises them into
    tensors on the current CUDA device, which `setup_device` sets."""
    if not initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank `src`'s `t` on every rank, returned on `t`'s device."""
    if not initialized():
        return t
    g = on_group(t.clone())
    dist.broadcast(g, src)
    return _host(g).to(t.device) if g.device != t.device else g


def destroy() -> None:
    if initialized():
        dist.destroy_process_group()
