"""`par bench train`: the training step on this device — step time, tokens/s, MFU and peak memory.

Training is where the compute goes (`par plan`: ~49k A100-hours for the paper preset), so its speed is measured,
not assumed. One step is the loop's: forward over the training layout (the parallel-group mask through SDPA),
cross-entropy, backward, gradient clipping and AdamW (fused on a GPU). MFU counts `par plan`'s model FLOPs,
6 · parameters · tokens per step, against the device's dense bf16 peak (`PEAK_FLOPS`; none on a CPU). On a GPU
the peak memory is printed beside `par plan`'s estimate for the same job (`par.train.memory`), which checks it.
Writes `train-<preset>.json` and `.md` under `analysis/bench/`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from par.errors import UserError


@dataclass(frozen=True)
class Preset:
    size: str
    order: str
    n: int
    grid: tuple[int, int]
    vocab_size: int
    micro_batch: int
    steps: int
    device: str
    precision: str
    compile: bool = False


PRESETS = {
    # the tiny preset's model on the paper's 24×24 grid (a CPU smoke test of the measurement)
    "cpu-tiny": Preset("tiny-S", "par", 4, (24, 24), 256, 8, 10, "cpu", "fp32"),
    # the small preset's S model at its real shape (16×16 Fashion-MNIST tokens, batch 64): where its minutes go
    "cpu-small": Preset("small-S", "par", 4, (16, 16), 512, 64, 20, "cpu", "fp32"),
    "cpu-small-raster": Preset("small-S", "raster", 1, (16, 16), 512, 64, 20, "cpu", "fp32"),
    # the paper's PAR-L n=4 on one GPU: the target is MFU ≥ 40 % in bf16
    "paper-L": Preset("GPT-L", "par", 4, (24, 24), 16384, 32, 20, "cuda", "bf16", compile=True),
}


def run_train_bench(name: str, device=None, steps=None, compile_=None, checkpointing=False) -> dict:
    import torch

    from par.config import TrainSettings
    from par.core.model import build, model_config
    from par.cluster import machine_info
    from par.train import memory, parallel
    from par.train.train import PEAK_FLOPS, make_optimizer

    p = PRESETS[name]
    dev = torch.device(device or p.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"preset {name} runs on a GPU and none is available; pass --device cpu or --preset cpu-tiny")
    compile_ = p.compile if compile_ is None else compile_
    steps = steps or p.steps
    torch.manual_seed(0)
    cfg = model_config(p.size, order=p.order, n=p.n, grid=p.grid, vocab_size=p.vocab_size, num_classes=1000)
    model = build(cfg).to(dev).train()
    if checkpointing:
        parallel.checkpoint_activations(model)
    opt = make_optimizer(model, TrainSettings(), dev)
    fwd = torch.compile(model) if compile_ else model
    bf16 = p.precision == "bf16"
    z = torch.randint(0, p.vocab_size, (p.micro_batch, model.num_tokens), device=dev)
    y = torch.randint(0, 1000, (p.micro_batch,), device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = fwd(z, y, targets=z)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(3):  # warm-up: compilation, allocator, optimizer states
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    seq = model.seq_len if p.order != "arpg" else model.num_tokens
    tokens = p.micro_batch * seq
    params = model.num_params
    sec = statistics.median(times)
    flops = 6 * params * tokens
    peak = next((v for k, v in PEAK_FLOPS.items() if dev.type == "cuda" and k in torch.cuda.get_device_name(dev)), None)
    blocks = parallel.blocks(model)
    acts = memory.measure(p.size, p.vocab_size, 1000, arpg=p.order == "arpg", dropout=cfg.resid_dropout_p,
                          precision="autocast" if bf16 else "fp32")
    plan = memory.per_gpu(memory.Job(params, max(sum(q.numel() for q in b.parameters()) for b in blocks), len(blocks),
                                     acts, seq, 1, p.micro_batch, "ddp", checkpointing))
    return {"preset": name, "size": p.size, "order": p.order, "n": p.n, "grid": list(p.grid), "vocab": p.vocab_size,
            "micro_batch": p.micro_batch, "precision": p.precision, "compile": compile_, "checkpointing": checkpointing,
            "params": params, "tokens_per_step": tokens, "steps_timed": steps, "seconds_per_step": sec,
            "step_times": times, "tokens_per_s": tokens / sec, "model_flops_per_step": flops,
            "mfu": flops / sec / peak if peak else None,
            "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / memory.GiB if dev.type == "cuda" else None,
            "planned_memory_gb": plan["total"], "machine": machine_info(dev)}


def to_markdown(r: dict) -> str:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "– (no bf16 peak for this device)"
    mem = (f"{r['peak_memory_gb']:.1f} GB measured, {r['planned_memory_gb']:.1f} GB by `par plan`"
           if r["peak_memory_gb"] is not None else f"{r['planned_memory_gb']:.2f} GB by `par plan` (not measured on CPU)")
    return "\n".join([
        f"# Training-step benchmark — preset `{r['preset']}`", "",
        f"{r['size']} ({r['params']:,} parameters), {r['order']} n={r['n']}, grid {r['grid'][0]}×{r['grid'][1]}, "
        f"vocabulary {r['vocab']}, micro-batch {r['micro_batch']}, {r['precision']}, compile={r['compile']}, "
        f"activation checkpointing={r['checkpointing']}; median of {r['steps_timed']} steps after 3 warm-up steps.",
        f"Machine: {r['machine']}.", "",
        "| s / step | tokens / s | model TFLOP / step | MFU | memory |", "|---:|---:|---:|---:|---|",
        f"| {r['seconds_per_step']:.4f} | {r['tokens_per_s']:,.0f} | {r['model_flops_per_step'] / 1e12:.3f} | {mfu} "
        f"| {mem} |", ""])


def cmd_bench_train(args) -> int:
    from pathlib import Path

    from par import io

    if args.preset not in PRESETS:
        raise UserError(f"--preset {args.preset!r}: choose one of {sorted(PRESETS)}")
    r = run_train_bench(args.preset, args.device, args.steps, True if args.compile else None, args.checkpointing)
    stem = Path(args.out) / f"train-{args.preset}"
    io.write_json(stem.with_suffix(".json"), r)
    md = to_markdown(r)
    io.write_text(stem.with_suffix(".md"), md)
    print(md)
    return 0


def register(bsub) -> None:
    t = bsub.add_parser("train", help="training step: s/step, tokens/s, MFU, peak memory against `par plan`")
    t.add_argument("--preset", default="cpu-tiny", help=f"one of {sorted(PRESETS)}")
    t.add_argument("--device", help="override the preset's device (e.g. cuda:1)")
    t.add_argument("--steps", type=int, help="timed steps (median reported)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (the paper-L preset does)")
    t.add_argument("--checkpointing", action="store_true", help="activation checkpointing (memory for compute)")
    t.add_argument("--out", default="analysis/bench", help="output directory")
    t.set_defaults(func=cmd_bench_train)
