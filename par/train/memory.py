"""What a training job holds per GPU, before it is submitted (`par plan`).

Per GPU, in bytes, for P parameters, a shard group of G GPUs (FSDP; 1 under DDP), micro-batch b and sequence
length S (mixed precision: fp32 master weights, bf16 compute):

* weights 4P, gradients 4P, AdamW states 8P, each / G under FSDP, plus the bf16 copies of the block being
  computed and the one prefetched (2 · 2 · P_block) and that block's fp32 gradient before its reduce-scatter;
* activations: what autograd keeps for the backward pass, **counted, not assumed** (`measure`): one training
  forward of the repository's own network at the job's width, vocabulary, dropout and precision (fp32 weights
  under bf16 autocast for DDP, bf16 weights for FSDP), on the CPU at a short sequence, through
  `torch.autograd.graph.saved_tensors_hooks`, each storage counted once, parameters excluded. Two batch sizes and
  two depths separate bytes per token per block from bytes per token outside the blocks (embeddings, final norm,
  fp32 logits and the cross-entropy), so b·S·(L·block + other) scales to any job; SDPA's fused kernels keep no
  S² score matrix, so both are per token. With activation checkpointing a block keeps its input (counted the same
  way) and one block's full set is alive while it is recomputed;
* 10 % for the CUDA context, the allocator's fragmentation and communication buffers.

The textbook 34·d bytes per token per block (Korthikanti et al. 2022) misses SwiGLU's 2.7·d hidden, the fp32
copies inside RMSNorm and q/k kept again after RoPE: the count gives ~54·d for GPT-3B. The GPU acceptance suite
(tests/gpu) compares the plan with `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

GiB = 1024 ** 3
OVERHEAD = 0.10


@dataclass(frozen=True)
class Activations:
    """Bytes per token that a training forward keeps for the backward pass (see `measure`)."""

    block: float  # one block, without checkpointing
    block_checkpointed: float  # one block under activation checkpointing: its input
    other: float  # outside the blocks: embeddings, final norm, logits and loss

    def total(self, tokens: int, layers: int, checkpointing: bool) -> float:
        if checkpointing:  # every block's input, plus one block's full set while it is recomputed
            return tokens * (layers * self.block_checkpointed + self.block + self.other)
        return tokens * (layers * self.block + self.other)


@dataclass(frozen=True)
class Job:
    params: int
    block_params: int
    layers: int
    acts: Activations
    seq_len: int
    world: int
    micro_batch: int
    strategy: str  # "ddp" or "fsdp"
    checkpointing: bool
    shard_group: int = 0  # FSDP: GPUs one copy is sharded over (0 = the world: full sharding)


def per_gpu(job: Job) -> dict[str, float]:
    """GiB per GPU by category, and their total."""
    shard = (job.shard_group or job.world) if job.strategy == "fsdp" else 1
    p, pb = job.params, job.block_params
    weights = 4 * p / shard + (2 * 2 * pb if job.strategy == "fsdp" else 0)
    grads = 4 * p / shard + (4 * pb if job.strategy == "fsdp" else 0)
    optim = 8 * p / shard
    acts = job.acts.total(job.micro_batch * job.seq_len, job.layers, job.checkpointing)
    parts = {"weights": weights, "gradients": grads, "optimizer": optim, "activations": acts}
    total = sum(parts.values()) * (1 + OVERHEAD)
    return {k: v / GiB for k, v in parts.items()} | {"total": total / GiB}


def fix(job: Job, gpu_gb: float, max_world: int = 1024) -> str:
    """The cheapest change that makes `job` fit a `gpu_gb` GPU, in words ('' when it fits): activation
    checkpointing, then FSDP (on several GPUs), then a smaller micro-batch, then more GPUs."""
    def fits(j: Job) -> bool:
        return per_gpu(j)["total"] <= gpu_gb

    if fits(job):
        return ""
    if not job.checkpointing and fits(replace(job, checkpointing=True)):
        return "activation_checkpointing: true"
    shardable = job.world > 1 and job.strategy == "ddp"
    if shardable:
        for ck in sorted({job.checkpointing, True}):
            if fits(replace(job, strategy="fsdp", checkpointing=ck)):
                return "parallel: fsdp" + (", activation_checkpointing: true" if ck and not job.checkpointing else "")
    base = replace(job, strategy="fsdp" if job.world > 1 else job.strategy, checkpointing=True)
    prefix = ("parallel: fsdp, " if shardable else "") + ("activation_checkpointing: true, " * (not job.checkpointing))
    b = next((b for b in range(job.micro_batch - 1, 0, -1) if fits(replace(base, micro_batch=b))), 0)
    if b:
        return f"{prefix}micro_batch: {b}"
    w = job.world
    while w < max_world and not fits(replace(base, world=w, strategy="fsdp", micro_batch=1)):
        w *= 2
    if fits(replace(base, world=w, strategy="fsdp", micro_batch=1)):
        return f"parallel: fsdp, activation_checkpointing: true, micro_batch: 1 on {w} GPUs"
    return "nothing fits: a GPU with more memory"


# -- counting what autograd keeps -------------------------------------------------------------------------------


def saved_bytes(model, tokens, labels, amp: bool) -> int:
    """Bytes of the tensors autograd saves in one training forward (loss included): each storage once,
    parameters and buffers excluded (they exist anyway)."""
    import torch

    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(tokens, labels, targets=tokens)
    return sum(seen.values())


GRID = (2, 2)  # the counting network's token grid: per-token bytes do not depend on it, compute does


def _cache_key(size: str, *args) -> str:
    """What a count depends on: the arguments, the size's shape, the network's source and torch's version."""
    import hashlib

    import torch

    from par.core import arpg, layers, model

    src = b"".join(Path(m.__file__).read_bytes() for m in (model, layers, arpg))
    spec = json.dumps([size, model.SIZES.get(size), *args, torch.__version__], sort_keys=True)
    return hashlib.sha256(spec.encode() + src).hexdigest()[:16]


def measure(size: str, vocab: int, classes: int, arpg: bool = False, dropout: float = 0.1,
            precision: str = "autocast") -> Activations:
    """`count_activations`, remembered in ~/.cache/par/activations.json (keyed by the network's source and torch's
    version, so an edit of the model recounts): `par plan` then answers at once."""
    key = _cache_key(size, vocab, classes, arpg, dropout, precision)
    cache = Path(os.environ.get("PAR_CACHE", Path.home() / ".cache" / "par")) / "activations.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = dataclasses.asdict(count_activations(size, vocab, classes, arpg, dropout, precision))
        try:
            from par import io

            cache.parent.mkdir(parents=True, exist_ok=True)
            io.write_json(cache, known)
        except OSError:  # a read-only home: count again next time
            pass
    return Activations(**known[key])


@functools.lru_cache(maxsize=None)
def count_activations(size: str, vocab: int, classes: int, arpg: bool = False, dropout: float = 0.1,
                      precision: str = "autocast") -> Activations:
    """Count the activations of `size` (its real width and heads) on the CPU: a 2×2 token grid, batch 1 and 2, one
    and two block units (ARPG: a self- and a cross-decoder block each). `precision`: "autocast" (fp32 weights, bf16
    autocast: DDP), "bf16" (bf16 weights: FSDP's compute) or "fp32". Weights are left uninitialised (only shapes
    and dtypes matter), so even GPT-3B counts in seconds."""
    import torch

    from par.core.model import build, model_config
    from par.train.parallel import blocks, checkpoint_activations

    unit = 2 if arpg else 1

    def count(batch: int, units: int, checkpointing: bool) -> int:
        with torch.device("meta"):
            model = build(model_config(size, grid=GRID, order="arpg" if arpg else "raster", n=1,
                                       n_layer=units * unit, vocab_size=vocab, num_classes=classes,
                                       token_dropout_p=dropout, resid_dropout_p=dropout, ffn_dropout_p=dropout))
        model = model.to_empty(device="cpu")
        model.register_layout_buffers("cpu") if hasattr(model, "register_layout_buffers") else None
        if precision == "bf16":
            model = model.to(torch.bfloat16)
        if checkpointing:
            checkpoint_activations(model)
        model.train()
        tokens = torch.zeros(batch, model.num_tokens, dtype=torch.long)
        return saved_bytes(model, tokens, torch.zeros(batch, dtype=torch.long), amp=precision == "autocast")

    def per_token(units: int, checkpointing: bool) -> float:
        return (count(2, units, checkpointing) - count(1, units, checkpointing)) / seq

    with torch.device("meta"):
        probe = build(model_config(size, grid=GRID, order="arpg" if arpg else "raster", n=1, n_layer=2 * unit,
                                   vocab_size=vocab, num_classes=classes))
    seq = probe.num_tokens if arpg else probe.seq_len
    del probe
    one, two = per_token(1, False), per_token(2, False)
    one_ck, two_ck = per_token(1, True), per_token(2, True)
    block, block_ck = (two - one) / unit, (two_ck - one_ck) / unit
    return Activations(block=block, block_checkpointed=block_ck, other=one - unit * block)


def replace(job: Job, **kw) -> Job:
    return dataclasses.replace(job, **kw)
