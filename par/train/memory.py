"""What a training job holds per GPU, before it is submitted (`par plan`).

Per GPU, in bytes, for P parameters, world W = nodes × GPUs, micro-batch b, sequence length S, width d, L blocks,
vocabulary V (mixed precision: fp32 master weights, bf16 compute):

* weights 4P, gradients 4P, AdamW states 8P under DDP; each / W under FSDP, plus the bf16 copies of the block being
  computed and the one prefetched (2 · 2 · P_block) and that block's fp32 gradient before its reduce-scatter;
* activations kept for the backward pass, ≈ 34·b·S·d bytes a block in bf16 (Korthikanti et al. 2022, "Reducing
  activation recomputation", without the 5·a·S² score term: SDPA's fused kernels do not store the score matrix);
  with activation checkpointing only each block's input, 2·b·S·d, plus one block's 34·b·S·d being recomputed;
* the logits, fp32, with the softmax and gradient of the cross-entropy: 12·b·S·V;
* 10 % for the CUDA context, the allocator's fragmentation and communication buffers.

These are estimates, documented as such; `par bench train` measures the real peak on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024 ** 3
OVERHEAD = 0.10


@dataclass(frozen=True)
class Job:
    params: int
    block_params: int
    layers: int
    dim: int
    vocab: int
    seq_len: int
    world: int
    micro_batch: int
    strategy: str  # "ddp" or "fsdp"
    checkpointing: bool


def per_gpu(job: Job) -> dict[str, float]:
    """GiB per GPU by category, and their total."""
    shard = job.world if job.strategy == "fsdp" else 1
    p, pb = job.params, job.block_params
    weights = 4 * p / shard + (2 * 2 * pb if job.strategy == "fsdp" else 0)
    grads = 4 * p / shard + (4 * pb if job.strategy == "fsdp" else 0)
    optim = 8 * p / shard
    tokens = job.micro_batch * job.seq_len
    block = 34 * tokens * job.dim
    acts = (job.layers * 2 * tokens * job.dim + block) if job.checkpointing else job.layers * block
    logits = 12 * tokens * job.vocab
    parts = {"weights": weights, "gradients": grads, "optimizer": optim, "activations": acts + logits}
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


def replace(job: Job, **kw) -> Job:
    import dataclasses

    return dataclasses.replace(job, **kw)
