"""`par train`: one training entry point for every size × order × n × ablation (paper §4 recipe).

Single process, multi-process DDP on one node and multi-node DDP share this loop; the cluster launch
(submitit, requeue on timeout/preemption, re-attach) and the `par train` command live in `par/train/launch.py`.

Exact resumption is designed in, not bolted on: the global batch of step s (which images, which of
the ten crops) is a pure function of (seed, s), independent of the world size, and every rank's RNG
state is checkpointed with the model and optimizer. A run killed at any step and resumed therefore
ends bit-identical to an uninterrupted run (on CPU; cuDNN/atomics may differ on GPU).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from par import io
from par.config import TrainJob, TrainSettings
from par.core.model import ModelConfig, Transformer, model_config
from par.errors import UserError

# Peak dense bf16 tensor-core FLOP/s, for MFU.
PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}


def build_model_config(cfg: TrainSettings, grid, vocab_size: int, num_classes: int) -> ModelConfig:
    """The network of a training run: its model settings plus what the token data fixes (grid, vocabulary, classes)."""
    return model_config(
        cfg.size, grid=tuple(grid), order=cfg.order, n=cfg.n, initial_sequential=cfg.initial_sequential,
        group_attention=cfg.group_attention, regions=cfg.regions, vocab_size=vocab_size, num_classes=num_classes,
        token_dropout_p=cfg.dropout, resid_dropout_p=cfg.dropout, ffn_dropout_p=cfg.dropout,
        class_dropout_prob=cfg.class_dropout,
    )


# -- data ------------------------------------------------------------------------------------------


@dataclass
class TokenArrays:
    """All ten-crop codes in memory: codes (num_images, crops, N) int16, labels (num_images,)."""

    codes: torch.Tensor
    labels: torch.Tensor
    grid: tuple[int, ...]
    vocab_size: int
    num_classes: int

    @classmethod
    def load(cls, data_dir: str | Path) -> "TokenArrays":
        from par.data.tokenize import load_token_arrays

        codes, labels, manifest = load_token_arrays(data_dir)
        return cls(torch.from_numpy(codes), torch.from_numpy(labels), tuple(manifest["grid"]),
                   int(manifest["codebook_size"]), int(manifest["num_classes"]))

    def batch(self, step: int, global_batch: int, seed: int, rank: int = 0, world: int = 1):
        """This rank's share of the global batch of `step`: epoch-wise shuffle (drop_last) and a uniformly
        drawn crop per sample (paper §8.2), both pure functions of (seed, step)."""
        num = self.codes.shape[0]
        per_epoch = num // global_batch
        epoch, j = divmod(step, per_epoch)
        perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        idx = perm[j * global_batch:(j + 1) * global_batch]
        crops = torch.randint(0, self.codes.shape[1], (global_batch,),
                              generator=torch.Generator().manual_seed(seed * 1_000_003 + 7919 * step + 1))
        idx, crops = idx[rank::world], crops[rank::world]
        return self.codes[idx, crops].long(), self.labels[idx].long()


# -- optimisation ----------------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, cfg: TrainSettings, device) -> torch.optim.AdamW:
    """AdamW; weight decay on every ≥ 2-D tensor (linears, embeddings incl. spe/class tables), none on norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model over parameters (the reference's update; decay 0 copies).
    Two fused multi-tensor kernels per step instead of two launches per parameter tensor."""
    e = list(ema.parameters())
    torch._foreach_mul_(e, decay)
    torch._foreach_add_(e, [p.detach() for p in model.parameters()], alpha=1 - decay)


def lr_at(step: int, total: int, steps_per_epoch: int, cfg: TrainSettings) -> float:
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule != "cosine":
        raise UserError(f"schedule={cfg.schedule!r}: use 'cosine' or 'constant'")
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


# -- distributed -----------------------------------------------------------------------------------


def dist_setup() -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun/submitit environment variables; inits the process group."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", 0)), world, int(os.environ.get("LOCAL_RANK", 0))


def _all_gather_objects(obj, world):
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint saved at a step boundary; run the same command again to resume


class PreemptionGuard:
    """Defers the stop signal to the next step boundary, so the checkpoint written then is consistent.

    Under submitit, Slurm's timeout/preemption signal is USR2 (SIGTERM is ignored, as submitit does) and
    after saving we hand over to submitit's handler, which requeues the job. Elsewhere (torchrun, a
    terminal, Snakemake's own Slurm jobs) USR2 and TERM both stop the run with EXIT_PREEMPTED."""

    def __init__(self):
        self.under_submitit = "SUBMITIT_EXECUTOR" in os.environ
        self.signals = (signal.SIGUSR2,) if self.under_submitit else (signal.SIGUSR2, signal.SIGTERM)
        self.caught: int | None = None
        self.frame = None
        self.previous = {}

    def __enter__(self):
        for s in self.signals:
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): signals stay as they are
                pass
        return self

    def _handle(self, signum, frame):
        self.caught, self.frame = signum, frame

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)

    def should_stop(self, world: int) -> bool:
        flag = torch.tensor([int(self.caught is not None)])
        if world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def forward_signal(self):
        """After the checkpoint: submitit's checkpoint-and-requeue handler, or exit with EXIT_PREEMPTED."""
        handler = self.previous.get(self.caught or signal.SIGUSR2)
        if self.under_submitit and callable(handler):
            handler(self.caught or signal.SIGUSR2, self.frame)
        raise SystemExit(EXIT_PREEMPTED)


# -- the loop --------------------------------------------------------------------------------------


def _rng_state():
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_log(path: Path, step: int):
    """Drop log lines written after the checkpoint we resume from (they will be recomputed)."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
        io.write_text(path, "".join(ln + "\n" for ln in keep))


def train(cfg: TrainJob) -> Path:
    """Train (or resume) the run in `cfg.out`; returns the path of the final model file."""
    rank, world, local_rank = dist_setup()
    out = Path(cfg.out)
    final = out / "model.pt"
    if final.exists():
        return final
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    amp = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")

    data = TokenArrays.load(cfg.data)
    if cfg.global_batch % world:
        raise UserError(f"global_batch={cfg.global_batch} is not divisible by the world size {world}")
    per_epoch = data.codes.shape[0] // cfg.global_batch
    if per_epoch == 0:
        raise UserError(f"{cfg.data}: {data.codes.shape[0]} images < global_batch={cfg.global_batch}; lower the batch")
    total = cfg.max_steps or int(cfg.epochs * per_epoch)

    mcfg = build_model_config(cfg, data.grid, data.vocab_size, data.num_classes)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = Transformer(mcfg).to(device)
    opt = make_optimizer(model, cfg, device)
    step = 0
    # fp32 EMA on rank 0 only: it is the one that saves, and other ranks need not hold a second model copy
    ema = copy.deepcopy(model).requires_grad_(False).eval() if cfg.ema and rank == 0 else None
    ckpt_path = out / "ckpt.pt"
    if ckpt_path.exists():
        ck = io.torch_load(ckpt_path)
        model.load_state_dict(ck["model"])
        if ema is not None:
            if "ema" not in ck:
                raise UserError(f"{ckpt_path}: written without --ema; resume without it or start a new --out")
            ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        _set_rng_state(ck["rng"][rank])
        if rank == 0:
            _truncate_log(out / "log.jsonl", step)
    else:
        torch.manual_seed(cfg.seed * world + rank)  # per-rank dropout streams
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None) \
        if world > 1 else model
    fwd = torch.compile(ddp) if cfg.compile else ddp
    order = model.order
    nparams = model.num_params
    peak = next((v for k, v in PEAK_FLOPS.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), None)

    def save(step_done: int):
        states = _all_gather_objects(_rng_state(), world)
        if rank == 0:
            io.torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step_done,
                           "config": {"train": dataclasses.asdict(cfg), "model": mcfg.to_dict()}, "rng": states,
                           **({"ema": ema.state_dict()} if ema is not None else {})}, ckpt_path)
        if world > 1:
            dist.barrier()

    pbar = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        io.write_json(out / "config.json", {"train": dataclasses.asdict(cfg), "model": mcfg.to_dict(),
                                             "world_size": world, "steps": total, "params": nparams})
        from tqdm import tqdm

        pbar = tqdm(total=total, initial=step, desc=f"train {out.name}", dynamic_ncols=True)
    model.train()
    t_last, tokens_since = time.perf_counter(), 0
    with PreemptionGuard() as guard:
        while step < total:
            lr = lr_at(step, total, per_epoch, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            codes, labels = data.batch(step, cfg.global_batch, cfg.seed, rank, world)
            z, labels = order.to_order(codes).to(device), labels.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                _, loss = fwd(z, labels, targets=z)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                update_ema(ema, model, cfg.ema_decay)
            step += 1
            tokens_since += z.numel() * world
            if step % cfg.log_every == 0 or step == total:
                lv = loss.detach().float()
                if world > 1:
                    dist.all_reduce(lv, op=dist.ReduceOp.AVG)
                dt = time.perf_counter() - t_last
                rec = {"step": step, "epoch": step / per_epoch, "loss": lv.item(), "lr": lr,
                       "grad_norm": float(gnorm), "tokens_per_s": tokens_since / dt}
                if peak:
                    rec["mfu"] = 6 * nparams * rec["tokens_per_s"] / (peak * world)
                if rank == 0:
                    with open(out / "log.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    pbar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}")
                t_last, tokens_since = time.perf_counter(), 0
            if pbar:
                pbar.update(1)
            if step % cfg.ckpt_every == 0 and step < total:
                save(step)
            if guard.should_stop(world):
                save(step)
                guard.forward_signal()
    if pbar:
        pbar.close()
    save(step)
    if rank == 0:
        io.torch_save({"model": model.state_dict(), "config": mcfg.to_dict(), "step": step,
                       **({"ema": ema.state_dict()} if ema is not None else {})}, final)
    if world > 1:
        dist.barrier()
    return final
