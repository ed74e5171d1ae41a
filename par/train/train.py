"""`par train`: one training entry point for every size × order × n × ablation (paper §4 recipe).

Single process, DDP and FSDP2 (one node or several; par/train/parallel.py) share this loop; the cluster launch
(submitit, requeue on timeout/preemption, re-attach) and the `par train` command live in `par/train/launch.py`.

Exact resumption is designed in, not bolted on: the global batch of step s (which images, which of
the ten crops) is a pure function of (seed, s), independent of the world size, and every rank's RNG
state is checkpointed with the model and optimizer. A run killed at any step and resumed therefore
ends bit-identical to an uninterrupted run (on CPU; cuDNN/atomics may differ on GPU).

With `--curve-tokens`, rank 0 scores the held-out NLL of a fixed draw of held-out images at every checkpoint and at
the last step into log.jsonl (the learning curve, #24), without touching the training's RNG stream or weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from par import io
from par.config import TrainJob, TrainSettings
from par.core.model import ModelConfig, Transformer, build, model_config
from par.train import comm, parallel
from par.errors import UserError
from par.progress import Progress

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
    """All ten-crop codes: codes (num_images, crops, N) int16, memory-mapped (`par.data.packed`: the ranks of a
    node share one page-cache copy), labels (num_images,)."""

    codes: np.ndarray
    labels: torch.Tensor
    grid: tuple[int, ...]
    vocab_size: int
    num_classes: int

    def __post_init__(self):
        if isinstance(self.codes, torch.Tensor):
            self.codes = self.codes.numpy()

    @classmethod
    def load(cls, data_dir: str | Path) -> "TokenArrays":
        from par.data.packed import packed

        codes, labels, shards = packed(data_dir)
        return cls(codes, torch.from_numpy(labels), shards.grid, shards.codebook_size, shards.num_classes)

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
        rows = np.asarray(self.codes[idx.numpy(), crops.numpy()])  # reads just these rows of the map
        return torch.from_numpy(rows).long(), self.labels[idx].long()


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
    cos = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * cos


# -- distributed -----------------------------------------------------------------------------------


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal, ready to resume: run the same command again
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class PreemptionGuard:
    """Turns a stop signal (TERM, USR2, INT) into a clean stop: exit with EXIT_PREEMPTED, ready to resume.

    * Until the first step of this process has run (start-up: data loading, model building, resuming, and that
      first step with its compilation) there is nothing to save: the checkpoint on disk (or none) already is the
      resume point, so a single-process run stops at once, however long compiling would take. (DDP ranks defer
      from the start, so that they all stop at the same step boundary.)
    * From then on the signal is deferred to the next step boundary, where the loop saves `ckpt.pt` and stops
      (`stop`); a signal during the last step lets the run finish instead.
    * A second signal stops at once: the last checkpoint on disk is the resume point.

    Under submitit, Slurm's timeout signal is USR2 (submitit asks for it ahead of the time limit) and a preemption
    sends TERM (then KILL after the partition's GraceTime), which submitit's own handler merely logs: both are
    caught here, and after saving we hand over to submitit's USR2 handler, which requeues the job (INT stays
    submitit's). Elsewhere (a terminal, Snakemake, torchrun, a Slurm job of Snakemake's own) TERM, USR2 and INT all
    stop the run with EXIT_PREEMPTED."""

    def __init__(self):
        self.under_submitit = "SUBMITIT_EXECUTOR" in os.environ
        self.signals = (signal.SIGUSR2, signal.SIGTERM) if self.under_submitit else STOP_SIGNALS
        self.report = True  # rank 0 prints the one-line message
        self.caught: int | None = None
        self.frame = None
        self.previous = {}
        self.deferring = False  # True once there is progress a checkpoint must keep

    def __enter__(self):
        for s in self.signals:
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): signals stay as they are
                pass
        return self

    def _handle(self, signum, frame):
        again = self.caught is not None
        self.caught, self.frame = signum, frame
        if not self.deferring:
            self.stop("before its first step: nothing new to save")
        elif again:
            self.stop("by a second signal, without saving (the last checkpoint is the resume point)")

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)

    def should_stop(self) -> bool:
        """Whether any rank caught a stop signal (a collective: every rank asks at the same step boundary)."""
        return comm.any_flag(self.caught is not None)

    def stop(self, how: str):
        """Report the stop in one line, then hand over to submitit's checkpoint-and-requeue handler, or exit with
        EXIT_PREEMPTED."""
        for s in self.signals:  # from here on a signal must not interrupt the exit
            if s in self.previous:
                signal.signal(s, signal.SIG_IGN)
        name = signal.Signals(self.caught).name if self.caught else "a stop signal"
        if self.report:
            print(f"par train: stopped by {name} {how}; run the same command again to resume", file=sys.stderr,
                  flush=True)
        handler = self.previous.get(signal.SIGUSR2)  # submitit's checkpoint-and-requeue, whichever signal came
        if self.under_submitit and callable(handler):
            handler(signal.SIGUSR2, self.frame)
        raise SystemExit(EXIT_PREEMPTED)


# -- the loop --------------------------------------------------------------------------------------


def _rng_state():
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_log(path: Path, step: int):
    """Cut `log.jsonl` back to `step`, the step this start resumes from (0: no checkpoint, an empty log): lines
    written after the checkpoint are recomputed, and a line a kill cut short is dropped."""
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    keep = []
    for ln in lines:
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            keep.append(ln.rstrip("\n") + "\n")
    if keep != lines:
        io.write_text(path, "".join(keep))


# what a training run writes into its folder (atomically: through `.<name>.<random>.tmp` files)
RUN_FILES = ("ckpt.pt", "model.pt", "log.jsonl", "config.json")


def remove_leftovers(out: Path) -> list[Path]:
    """Remove the temporary files a killed run left in `out` (a checkpoint's can be as large as the checkpoint)."""
    return [p for name in RUN_FILES for p in io.remove_stale_temps(out / name)]


@dataclass
class Run:
    """One training run as the loop sees it: settings, placement, data, networks and the step reached."""

    cfg: TrainJob
    out: Path
    rank: int
    world: int
    local_rank: int
    device: torch.device
    amp: bool
    data: TokenArrays
    per_epoch: int
    total: int
    mcfg: ModelConfig
    model: Transformer
    opt: torch.optim.Optimizer
    ema: Transformer | None
    kind: str = "ddp"  # "ddp" (also a single process) or "fsdp"
    fwd: torch.nn.Module | None = None
    step: int = 0
    curve: "Curve | None" = None

    @property
    def ckpt_path(self) -> Path:
        """`ckpt.pt` (one file, DDP / one process) or `ckpt.dcp/` (FSDP: sharded, reshards on load)."""
        return self.out / ("ckpt.dcp" if self.kind == "fsdp" else "ckpt.pt")


def setup_device(local_rank: int, precision: str) -> tuple[torch.device, bool]:
    """(device, whether to autocast to bf16): this process's GPU (TF32 matmuls) or the CPU."""
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    return device, precision == "bf16" or (precision == "auto" and device.type == "cuda")


def load_data(cfg: TrainJob, world: int) -> tuple[TokenArrays, int, int]:
    """(token arrays, steps per epoch, total steps)."""
    data = TokenArrays.load(cfg.data)
    if cfg.global_batch % world:
        raise UserError(f"global_batch={cfg.global_batch} is not divisible by the world size {world}")
    per_epoch = data.codes.shape[0] // cfg.global_batch
    if per_epoch == 0:
        raise UserError(f"{cfg.data}: {data.codes.shape[0]} images < global_batch={cfg.global_batch}; lower the batch")
    return data, per_epoch, cfg.max_steps or int(cfg.epochs * per_epoch)


def build_model(cfg: TrainJob, mcfg: ModelConfig, device, rank: int, kind: str = "ddp", amp: bool = False):
    """(model, optimizer, EMA copy or None), initialised from `cfg.seed` alone: identical on every rank. Under FSDP
    the model is sharded before the optimizer is made, so AdamW's states are sharded too."""
    torch.manual_seed(cfg.seed)
    model = build(mcfg).to(device)
    if cfg.attention == "flex" and device.type != "cuda":
        raise UserError("--attention flex: FlexAttention has no backward pass on the CPU; use --attention auto or sdpa")
    if hasattr(model, "attention_kernel"):  # PAR / LlamaGen (ARPG has its own attention)
        model.attention_kernel = ("flex" if device.type == "cuda" else "sdpa") if cfg.attention == "auto" else cfg.attention
    if kind == "fsdp" and cfg.ema:
        raise UserError("--ema with FSDP: the EMA copy is kept unsharded on rank 0, which is what FSDP avoids; train "
                        "with --parallel ddp, or without --ema")
    if cfg.activation_checkpointing:
        parallel.checkpoint_activations(model)
    if kind == "fsdp":
        parallel.shard(model, amp, comm.shard_mesh(device, cfg.fsdp_shard_group))
    opt = make_optimizer(model, cfg, device)
    # fp32 EMA on rank 0 only: it is the one that saves, and other ranks need not hold a second model copy
    ema = copy.deepcopy(model).requires_grad_(False).eval() if cfg.ema and rank == 0 else None
    return model, opt, ema


def newest_checkpoint(out: Path) -> tuple[str | None, int, dict | None]:
    """(format, step, loaded `ckpt.pt` or None) of the newest checkpoint in `out`, across both formats: a run
    resumed once under another strategy leaves both, and the older one must never win (that would roll back)."""
    found = []
    if (out / "ckpt.dcp" / "meta.pt").exists():
        found.append(("dcp", int(io.torch_load(out / "ckpt.dcp" / "meta.pt")["step"]), None))
    if (out / "ckpt.pt").exists():
        ck = io.torch_load(out / "ckpt.pt")
        found.append(("pt", int(ck["step"]), ck))
    return max(found, key=lambda f: f[1]) if found else (None, 0, None)


def resume(run: Run) -> int:
    """Load the newest checkpoint if there is one (weights, EMA, optimizer, this rank's RNG state) and return its
    step; else seed this rank's dropout stream and return 0. `log.jsonl` is cut back to that step.

    A sharded checkpoint (`ckpt.dcp/`, FSDP) loads into any world size and strategy. When the world size changed
    since it was written, the ranks' RNG streams restart from (seed, step, rank): the weights and optimizer
    continue exactly, dropout and ARPG's orders do not repeat the uninterrupted run's draws."""
    fmt, step, ck = newest_checkpoint(run.out)
    if fmt == "dcp":
        meta = parallel.load_sharded(run.out / "ckpt.dcp", run.model, run.opt)
        step, states = int(meta["step"]), meta["rng"]
    elif fmt == "pt":
        if run.kind == "fsdp":
            raise UserError(f"{run.out / 'ckpt.pt'}: the newest checkpoint (step {step}) was written by a DDP run; "
                            "resume it with --parallel ddp")
        run.model.load_state_dict(ck["model"])
        if run.ema is not None:
            if "ema" not in ck:
                raise UserError(f"{run.out / 'ckpt.pt'}: written without --ema; resume without it or start a new --out")
            run.ema.load_state_dict(ck["ema"])
        run.opt.load_state_dict(ck["optimizer"])
        states = ck["rng"]
    else:
        torch.manual_seed(run.cfg.seed * run.world + run.rank)  # per-rank dropout streams
        if run.rank == 0:
            _truncate_log(run.out / "log.jsonl", 0)
        return 0
    if len(states) == run.world:
        _set_rng_state(states[run.rank])
    else:
        torch.manual_seed(run.cfg.seed * 1_000_003 + 7919 * step + run.rank)
    if run.rank == 0:
        _truncate_log(run.out / "log.jsonl", step)
    return step


def wrap_model(run: Run) -> torch.nn.Module:
    """The forward callable: DDP across ranks when world > 1 (FSDP is already in place), compiled with --compile."""
    fwd = run.model if run.kind == "fsdp" else parallel.wrap(run.model, "ddp", run.world, run.local_rank, run.device,
                                                              run.amp)
    return torch.compile(fwd) if run.cfg.compile else fwd


def save_checkpoint(run: Run) -> None:
    """The checkpoint at `run.step`, with every rank's RNG state (a collective: all ranks call it)."""
    states = comm.all_gather_objects(_rng_state())
    if run.kind == "fsdp":
        parallel.save_sharded(run.ckpt_path, run.model, run.opt, {"step": run.step, "rng": states, "world": run.world,
                              "config": {"train": dataclasses.asdict(run.cfg), "model": run.mcfg.to_dict()}}, run.rank)
        return
    if run.rank == 0:
        io.torch_save({"model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "step": run.step,
                       "config": {"train": dataclasses.asdict(run.cfg), "model": run.mcfg.to_dict()}, "rng": states,
                       **({"ema": run.ema.state_dict()} if run.ema is not None else {})}, run.ckpt_path)
    comm.barrier()


def save_final(run: Run) -> Path:
    """`model.pt`: weights (and EMA) with the model config, loadable with `load_checkpoint`."""
    final = run.out / "model.pt"
    weights = parallel.full_state_dict(run.model) if run.kind == "fsdp" else run.model.state_dict()
    if run.rank == 0:
        io.torch_save({"model": weights, "config": run.mcfg.to_dict(), "step": run.step,
                       **({"ema": run.ema.state_dict()} if run.ema is not None else {})}, final)
    comm.barrier()
    return final


def start_log(run: Run) -> Progress:
    """Write `config.json` and open the progress report (rank 0; other ranks report nothing)."""
    if run.rank == 0:
        from par.provenance import git_commit  # the commit that trained this run (runs.csv: train_commit)

        run.out.mkdir(parents=True, exist_ok=True)
        io.write_json(run.out / "config.json", {"train": dataclasses.asdict(run.cfg), "model": run.mcfg.to_dict(),
                                                 "world_size": run.world, "steps": run.total,
                                                 "train_images": int(run.data.codes.shape[0]),
                                                 "params": run.model.num_params, "commit": git_commit()})
    return Progress(run.total, f"train {run.out.name}", initial=run.step, enable=run.rank == 0)


# -- learning curve (#24) -------------------------------------------------------------------------


@dataclass
class Curve:
    """The learning curve's held-out images: the centre crops of a fixed draw, scored at every `every` steps and at
    the last, so that every run of a preset is scored on the same images (differences between models are paired)."""

    codes: np.ndarray
    labels: np.ndarray
    every: int

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total


def load_curve(cfg: TrainJob, model) -> Curve | None:
    """The learning curve of `cfg` (`--curve-tokens`, `--curve-images`), checked against the model at start-up so
    that wrong tokens fail now, not at the first checkpoint; None without one."""
    if not (cfg.curve_tokens and cfg.curve_images):
        return None
    from par.config import NLLSettings
    from par.eval.nll import check_heldout, heldout_draw

    codes, labels = heldout_draw(cfg.curve_tokens, cfg.curve_images, NLLSettings().seed)  # `par nll`'s draw
    try:
        check_heldout(model, codes, labels)
    except UserError as e:
        raise UserError(f"--curve-tokens {cfg.curve_tokens}: {e}") from None
    return Curve(codes, labels, cfg.curve_every or cfg.ckpt_every)


def score_curve(run: Run) -> tuple[float, float] | None:
    """Held-out NLL per token ± SE of the weights at `run.step` (`par.eval.nll.heldout_nll`); on rank 0, or on
    every rank under FSDP (its forward gathers the shards), None elsewhere. Training goes on bit-identical: no
    gradients, train mode restored, and the RNG state restored (ARPG's forward draws label-dropout noise even when
    it drops nothing). ARPG: one random order per image, an unbiased draw of `par nll`'s mean over orders."""
    from par.eval.nll import heldout_nll, mean_se

    if run.rank != 0 and run.kind != "fsdp":
        return None
    batch = run.cfg.micro_batch or run.cfg.global_batch // run.world  # what a training forward holds, and more
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        per_image = heldout_nll(run.model, run.curve.codes, run.curve.labels, batch)
    run.model.train()
    return mean_se(per_image)


def log_curve(run: Run, meter: "Throughput") -> None:
    """Append the learning-curve point of `run.step` to log.jsonl: held-out NLL ± SE against tokens seen (steps ×
    global batch × tokens per image, as runs.csv counts them). Its time is left out of the throughput."""
    t0 = time.perf_counter()
    scored = score_curve(run)
    if scored is not None and run.rank == 0:
        rec = {"step": run.step, "epoch": run.step / run.per_epoch,
               "tokens_seen": run.step * run.cfg.global_batch * run.model.num_tokens, "heldout_nll": scored[0],
               "heldout_nll_se": scored[1], "heldout_images": len(run.curve.codes),
               "seconds": time.perf_counter() - t0}
        with open(run.out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
    meter.skip(time.perf_counter() - t0)


def train_step(run: Run) -> tuple[float, torch.Tensor, torch.Tensor, int]:
    """One optimizer step on this rank's share of the global batch of `run.step`; advances `run.step`.
    Returns (learning rate, loss, gradient norm, tokens processed by all ranks)."""
    cfg = run.cfg
    lr = lr_at(run.step, run.total, run.per_epoch, cfg)
    for g in run.opt.param_groups:
        g["lr"] = lr
    codes, labels = run.data.batch(run.step, cfg.global_batch, cfg.seed, run.rank, run.world)
    # PAR: codes in the model's order; ARPG: raster codes, permuted per sample inside its forward
    z, labels = run.model.order.to_order(codes).to(run.device), labels.to(run.device)
    size = cfg.micro_batch or len(z)
    chunks = list(zip(z.split(size), labels.split(size)))
    total = 0.0
    for i, (zi, yi) in enumerate(chunks):  # gradient accumulation: the global batch at any GPU count
        with parallel.sync_gradients(run.fwd, run.model, i == len(chunks) - 1):
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp and run.kind != "fsdp"):
                _, loss = run.fwd(zi, yi, targets=zi)
            (loss * len(zi) / len(z)).backward()
        total = total + loss.detach() * len(zi) / len(z)
    loss = total
    gnorm = parallel.grad_norm(run.model, cfg.grad_clip)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    if run.ema is not None:
        update_ema(run.ema, run.model, cfg.ema_decay)
    run.step += 1
    return lr, loss, gnorm, z.numel() * run.world


class Throughput:
    """Tokens per second since the last log line."""

    def __init__(self):
        self.t, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        return self.tokens / (time.perf_counter() - self.t)

    def reset(self) -> None:
        self.t, self.tokens = time.perf_counter(), 0

    def skip(self, seconds: float) -> None:
        """Leave out `seconds` spent on something else than training (the learning curve's scoring)."""
        self.t += seconds


def log_step(run: Run, lr: float, loss: torch.Tensor, gnorm, meter: Throughput, bar: Progress, peak) -> None:
    """Append the step's record (loss averaged over ranks, lr, grad norm, throughput, MFU) to log.jsonl."""
    lv = comm.mean(loss.detach().float())
    rec = {"step": run.step, "epoch": run.step / run.per_epoch, "loss": lv.item(), "lr": lr,
           "grad_norm": float(gnorm), "tokens_per_s": meter.rate()}
    if peak:
        rec["mfu"] = 6 * run.model.num_params * rec["tokens_per_s"] / (peak * run.world)
    if run.rank == 0:
        with open(run.out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}")
    meter.reset()


def _peak_flops(device) -> float | None:
    if device.type != "cuda":
        return None
    return next((v for k, v in PEAK_FLOPS.items() if k in torch.cuda.get_device_name()), None)


def train(cfg: TrainJob) -> Path:
    """Train (or resume) the run in `cfg.out`; returns the path of the final model file. A stop signal ends it
    with SystemExit(EXIT_PREEMPTED), after saving `ckpt.pt` when there was progress to keep (PreemptionGuard)."""
    with PreemptionGuard() as guard:
        device, amp = setup_device(int(os.environ.get("LOCAL_RANK", 0)), cfg.precision)
        rank, world, local_rank = comm.init(device)
        guard.report = rank == 0
        guard.deferring = world > 1  # ranks must agree on the stop: at a step boundary (should_stop), never at once
        out = Path(cfg.out)
        if rank == 0:
            remove_leftovers(out)
        if (out / "model.pt").exists():
            return out / "model.pt"
        data, per_epoch, total = load_data(cfg, world)
        mcfg = build_model_config(cfg, data.grid, data.vocab_size, data.num_classes)
        with torch.device("meta"):
            num_params = build(mcfg).num_params
        kind = parallel.strategy(cfg.parallel, num_params, world)
        if kind == "fsdp":
            comm.init(device, single_group=True)
        model, opt, ema = build_model(cfg, mcfg, device, rank, kind, amp)
        run = Run(cfg, out, rank, world, local_rank, device, amp, data, per_epoch, total, mcfg, model, opt, ema, kind)
        run.step = resume(run)
        run.curve = load_curve(cfg, model)
        run.fwd = wrap_model(run)
        peak = _peak_flops(device)
        with start_log(run) as bar:
            model.train()
            meter = Throughput()
            while run.step < total:
                lr, loss, gnorm, tokens = train_step(run)
                guard.deferring = True  # from here on a stop saves a checkpoint first
                meter.add(tokens)
                if run.step % cfg.log_every == 0 or run.step == total:
                    log_step(run, lr, loss, gnorm, meter, bar, peak)
                if run.curve is not None and run.curve.due(run.step, total):  # before the checkpoint: a resume
                    log_curve(run, meter)  # from it never loses the point (log.jsonl is cut back to its step)
                bar.update(1)
                saved = run.step % cfg.ckpt_every == 0 and run.step < total
                if saved:
                    save_checkpoint(run)
                if run.step < total and guard.should_stop():
                    if not saved:
                        save_checkpoint(run)
                    bar.close()
                    guard.stop(f"at step {run.step}/{total}; checkpoint saved to {run.ckpt_path}")
        save_checkpoint(run)
        return save_final(run)
