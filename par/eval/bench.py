"""`par bench sample`: generation latency/throughput for n ∈ {1, 4, 16} on one architecture, and ARPG beside it.

Every PAR / raster variant shares the backbone (random weights; only the n−1 transition embeddings differ), so
the measured speedup isolates the decoding schedule. The figure of merit is speedup ÷ step ratio: 1.0
means a parallel step costs no more than a sequential one (the ideal of the paper's latency claim).

ARPG (`par.core.arpg`, the peer row) is a different network (a self-decoder and a cross-decoder of n_layer/2
blocks each), so it gets its own model of the preset's size (same dim / heads / n_layer, random weights, seed
0) and is decoded with S ∈ {64, 32, 16} forward calls per image (`SamplingSettings.arpg_steps`; the tokens per
call follow `arpg_tokens_per_step`). Its speedup and step ratio are measured against the same raster n=1 row.
A preset size with an odd n_layer is rounded *up* to the next even n_layer for ARPG (never fewer layers than
the backbone), and the row says so; every row reports its parameter count. S larger than the tokens per image
is skipped with a note. ARPG's decode has a variable width per call, so `--compile` skips its rows.
Writes `sample-<preset>[-compile].json` and `.md` under `analysis/bench/`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from par.cluster import machine_info
from par.errors import UserError


@dataclass(frozen=True)
class Preset:
    size: str
    grid: tuple[int, int]
    vocab_size: int
    num_classes: int
    batch_sizes: tuple[int, ...]
    repeats: int
    device: str
    dtype: str
    cfg_scale: float = 1.5


PRESETS = {
    # CPU: the paper's 24×24 grid (576 / 147 / 51 steps) with the tiny preset's model and codebook scale.
    # At batch 1 a step is then latency-bound, as a GPU step of the paper's models is; `cpu-vocab16k` keeps the
    # paper's 16384-way head, whose n·2 rows of logits per step make a CPU step compute-bound instead.
    "cpu-tiny": Preset("tiny-S", (24, 24), 256, 10, (1, 16), 3, "cpu", "float32"),
    "cpu-vocab16k": Preset("tiny-M", (24, 24), 16384, 1000, (1, 16), 2, "cpu", "float32"),
    # The paper's latency setting (Table 2, A100, bf16): GPT-3B, 24×24 tokens, CFG.
    "paper-3b": Preset("GPT-3B", (24, 24), 16384, 1000, (1, 32), 5, "cuda", "bfloat16"),
}

# (label, order kind, n): the same backbone decoded with each schedule.
VARIANTS = [("raster n=1", "raster", 1), ("PAR n=4", "par", 4), ("PAR n=16", "par", 16), ("raster-multi n=4", "raster", 4)]
# ARPG's forward calls per image S (its own model of the same size; see the module docstring)
ARPG_STEPS = (64, 32, 16)
ARPG_SEED = 0


def _time_generation(model, batch, preset, device, step_fn, sampling=None) -> float:
    import torch

    from par.config import SamplingSettings
    from par.core.generate import generate

    sc = SamplingSettings(cfg_scale=preset.cfg_scale, **(sampling or {}))
    gen = torch.Generator(device=device).manual_seed(0)
    labels = torch.randint(0, preset.num_classes, (batch,), device=device, generator=gen)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    generate(model, labels, sc, generator=gen, step_fn=step_fn)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _build_variants(preset, device, dtype, compile_):
    """One model per schedule. They share one backbone: the first model's parameter tensors themselves, not
    copies (only the n−1 spe rows are each variant's own), so the paper-3b preset holds one 3B model in
    memory, not four."""
    import torch

    from par.core.generate import compile_decode_step
    from par.core.model import Transformer, model_config

    torch.manual_seed(0)
    models, base = [], None
    for label, kind, n in VARIANTS:
        cfg = model_config(preset.size, grid=preset.grid, order=kind, n=n,
                           vocab_size=preset.vocab_size, num_classes=preset.num_classes)
        if base is None:
            with torch.device(device):
                model = Transformer(cfg)
            torch.nn.init.normal_(model.output.weight, std=0.02)  # a zero head would make sampling degenerate
            model = base = model.to(dtype).eval()
        else:
            model = share_backbone(base, cfg, device, dtype)
        step_fn = compile_decode_step(model) if compile_ else None
        models.append((label, kind, n, model, step_fn))
    return models


def share_backbone(base, cfg, device, dtype):
    """A model for `cfg` (another order / n) whose parameters are `base`'s tensors; its own spe rows are
    drawn fresh. Built on the meta device, so no second backbone is ever allocated."""
    import torch

    from par.core.model import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    shared = {k: v for k, v in base.state_dict().items() if not k.startswith("spe_tok")}
    model.load_state_dict(shared, strict=False, assign=True)
    model.register_layout_buffers(device)
    if hasattr(model, "spe_tok_embeddings"):
        spe = model.spe_tok_embeddings.to_empty(device=device)
        torch.nn.init.normal_(spe.special_embeddings.weight, std=cfg.initializer_range)
        spe.to(dtype)
    return model.eval()


def arpg_plan(preset, steps=ARPG_STEPS) -> dict:
    """Which ARPG step counts run on this preset and which are skipped (S must lie in 1 … N), and the even
    n_layer of its model. Raises a UserError when steps were asked for and none is valid."""
    from par.core.model import model_config

    steps = tuple(int(s) for s in steps)
    if not steps:
        return {"steps": [], "skipped": [], "n_layer": None, "note": None}
    num_tokens = 1
    for g in preset.grid:
        num_tokens *= g
    valid = [s for s in steps if 1 <= s <= num_tokens]
    skipped = [{"variant": f"ARPG S={s}", "reason": f"S={s} is outside 1 … {num_tokens} (the tokens per image)"}
               for s in steps if s not in valid]
    if not valid:
        raise UserError(f"ARPG steps {list(steps)}: none lies in 1 … {num_tokens} (the tokens per image of the "
                        f"{preset.grid[0]}×{preset.grid[1]} grid); pass --arpg-steps with smaller values, or none")
    n_layer = model_config(preset.size).n_layer
    note = None
    if n_layer % 2:
        note = (f"{preset.size} has n_layer={n_layer}; ARPG splits its blocks into self-/cross-decoder halves, so "
                f"its model uses n_layer={n_layer + 1} (rounded up; same dim and heads)")
        n_layer += 1
    return {"steps": valid, "skipped": skipped, "n_layer": n_layer, "note": note}


def _build_arpg(preset, device, dtype, n_layer):
    """ARPG's own model of the preset's size (n_layer from `arpg_plan`), random weights from seed ARPG_SEED."""
    import torch

    from par.core.model import build, model_config

    cfg = model_config(preset.size, grid=preset.grid, order="arpg", n_layer=n_layer,
                       vocab_size=preset.vocab_size, num_classes=preset.num_classes)
    torch.manual_seed(ARPG_SEED)
    with torch.device(device):
        model = build(cfg)
    torch.nn.init.normal_(model.head.weight, std=0.02)  # the reference zero-initialises it; as for PAR, not here
    return model.to(dtype).eval()


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def run_sample_bench(preset_name: str, batch_sizes=None, repeats=None, compile_=False, device=None,
                     arpg_steps=ARPG_STEPS) -> dict:
    """Time every variant × batch size. Repeats are interleaved round-robin across variants (after one
    warm-up each), so slow drifts of a shared machine hit every schedule alike instead of biasing the
    ratio between them; the median per setting is reported. `arpg_steps`: ARPG's S values (() = none)."""
    import torch

    from par.core.order import arpg_tokens_per_step

    preset = PRESETS[preset_name]
    device = torch.device(device or preset.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"preset {preset_name!r} needs a CUDA GPU; none is available here (use --preset cpu-tiny)")
    dtype = getattr(torch, preset.dtype)
    batch_sizes = batch_sizes or preset.batch_sizes
    repeats = repeats or preset.repeats
    plan = arpg_plan(preset, arpg_steps)
    skipped = list(plan["skipped"])
    if compile_ and plan["steps"]:
        skipped += [{"variant": f"ARPG S={s}", "reason": "--compile: ARPG's decode (a variable number of tokens per "
                     "call) is not compiled; its eager rows are in the uncompiled bench"} for s in plan["steps"]]
        plan = {**plan, "steps": []}
    machine = machine_info(device)  # before the runs: the load average the timings started under
    # (label, order kind, n, model, step_fn, sampling overrides, extra row fields)
    variants = [(*v, None, {}) for v in _build_variants(preset, device, dtype, compile_)]
    if plan["steps"]:
        arpg = _build_arpg(preset, device, dtype, plan["n_layer"])
        schedule = "arccos"  # SamplingSettings' default, the reference sampler's
        for S in plan["steps"]:
            variants.append((f"ARPG S={S}", "arpg", None, arpg, None, {"arpg_steps": S, "arpg_schedule": schedule},
                             {"forward_calls": S, "arpg_steps": S, "arpg_schedule": schedule,
                              "tokens_per_step": arpg_tokens_per_step(arpg.num_tokens, S, schedule),
                              **({"note": plan["note"]} if plan["note"] else {})}))
    settings = [(v, b) for v in variants for b in batch_sizes]
    times = {i: [] for i in range(len(settings))}
    for r in range(repeats + 1):  # round 0 is warm-up (allocations, compilation)
        for i, ((_, _, _, model, step_fn, sampling, _), batch) in enumerate(settings):
            t = _time_generation(model, batch, preset, device, step_fn, sampling)
            if r:
                times[i].append(t)
    rows = []
    for i, ((label, kind, n, model, _, _, extra), batch) in enumerate(settings):
        med = statistics.median(times[i])
        calls = extra["forward_calls"] if kind == "arpg" else model.order.num_calls
        rows.append({"variant": label, "order": kind, "n": n, "batch": batch, "forward_calls": calls,
                     "params": _params(model), "n_layer": model.config.n_layer,
                     **{k: v for k, v in extra.items() if k != "forward_calls"}, "seconds_per_batch": med,
                     "seconds_per_image": med / batch, "images_per_second": batch / med, "runs": times[i]})
    for r in rows:
        base = next(b for b in rows if b["order"] == "raster" and b["n"] == 1 and b["batch"] == r["batch"])
        r["step_ratio"] = base["forward_calls"] / r["forward_calls"]
        r["speedup"] = base["seconds_per_batch"] / r["seconds_per_batch"]
        r["speedup_over_step_ratio"] = r["speedup"] / r["step_ratio"]
    return {"bench": "sample", "preset": preset_name, "config": {**preset.__dict__, "grid": list(preset.grid),
            "compile": compile_, "repeats": repeats, "batch_sizes": list(batch_sizes),
            "arpg": {"steps": plan["steps"], "n_layer": plan["n_layer"], "seed": ARPG_SEED, "note": plan["note"]}},
            "machine": machine, "rows": rows, "skipped": skipped, "cost_model": cost_model(rows)}


def cost_model(rows: list[dict], target: float = 0.9) -> dict:
    """Split generation time into a fixed cost per forward call F and the compute of the image C.

    Every schedule feeds the same tokens through the same layers and attends over the same (query, key)
    pairs, so their FLOPs are equal (up to the n−1 transition tokens); what differs is the number of
    calls. T = calls·F + C is fitted on raster n=1 and PAR n=16 and checked on the other schedules of that
    backbone; ARPG's rows (another network, its own weights) are left out of it.
    speedup ÷ step ratio = (N₁F + C)·N_k / ((N_kF + C)·N₁), which reaches `target` only while
    C/F ≤ N₁N_k(1 − target) / (target·N₁ − N_k): whether it does is a property of the hardware's balance
    of per-call latency against arithmetic, not of the schedule.
    """
    out = {}
    for batch in sorted({r["batch"] for r in rows}):
        at = {r["variant"]: r for r in rows if r["batch"] == batch and r.get("order") != "arpg"}
        base, fast = at.get("raster n=1"), at.get("PAR n=16")
        if base is None or fast is None:
            continue
        n1, nk = base["forward_calls"], fast["forward_calls"]
        F = (base["seconds_per_batch"] - fast["seconds_per_batch"]) / (n1 - nk)
        C = base["seconds_per_batch"] - n1 * F
        predicted = {v: (n1 * F + C) * r["forward_calls"] / ((r["forward_calls"] * F + C) * n1) for v, r in at.items()}
        out[str(batch)] = {"seconds_per_call": F, "compute_seconds": C, "compute_over_call": C / F if F > 0 else None,
                           f"max_compute_over_call_for_{target}_at_n16": n1 * nk * (1 - target) / (target * n1 - nk),
                           "predicted_speedup_over_step_ratio": predicted}
    return out


def to_markdown(result: dict) -> str:
    c = result["config"]
    arpg = c.get("arpg") or {}
    lines = [
        f"# Sampling benchmark — preset `{result['preset']}`",
        "",
        f"Model {c['size']} (random weights), grid {c['grid'][0]}×{c['grid'][1]}, vocab {c['vocab_size']}, "
        f"CFG {c['cfg_scale']}, {c['dtype']} on {c['device']}, median of {c['repeats']} runs, compile={c['compile']}.",
        f"Machine: {result['machine']}.",
    ]
    if arpg.get("steps"):
        lines += ["", f"ARPG rows: its own network (self- + cross-decoder, n_layer {arpg['n_layer']}, same dim and "
                  f"heads; random weights, seed {arpg['seed']}), S forward calls per image, arccos schedule, CFG "
                  "batch always doubled; speedup and step ratio against the raster n=1 row."]
    lines += [
        "",
        "| variant | batch | forward calls | n_layer | params | s / batch | s / image | images / s | "
        "speedup vs raster n=1 | step ratio | speedup ÷ step ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in result["rows"]:
        mark = ""
        if r.get("note"):
            if r["note"] not in notes:
                notes.append(r["note"])
            mark = "†" * (notes.index(r["note"]) + 1)
        params = f"{r['params']:,}" if "params" in r else "—"
        lines.append(f"| {r['variant']} | {r['batch']} | {r['forward_calls']} | {r.get('n_layer', '—')}{mark} | "
                     f"{params} | {r['seconds_per_batch']:.4f} | {r['seconds_per_image']:.4f} | "
                     f"{r['images_per_second']:.2f} | {r['speedup']:.2f}× | {r['step_ratio']:.2f}× | "
                     f"{r['speedup_over_step_ratio']:.2f} |")
    for i, note in enumerate(notes):
        lines += ["", f"{'†' * (i + 1)} {note}."]
    for sk in result.get("skipped") or []:
        lines += ["", f"Skipped {sk['variant']}: {sk['reason']}."]
    cm = result.get("cost_model") or {}
    if cm:
        lines += ["", "Cost model T = calls·F + C, fitted on raster n=1 and PAR n=16 (equal FLOPs, different call counts; "
                  "see `par.eval.bench.cost_model`; ARPG, another network, is not part of it):", "",
                  "| batch | F: s / call | C: compute s / batch | C / F | C / F allowed for ≥ 0.9 at n=16 | "
                  "predicted ÷ ratio, PAR n=4 (measured) |", "|---:|---:|---:|---:|---:|---:|"]
        for batch, m in cm.items():
            meas = next((r["speedup_over_step_ratio"] for r in result["rows"]
                         if r["batch"] == int(batch) and r["variant"] == "PAR n=4"), float("nan"))
            pred = m["predicted_speedup_over_step_ratio"].get("PAR n=4", float("nan"))
            limit = next(v for k, v in m.items() if k.startswith("max_compute_over_call"))
            ratio = "—" if m["compute_over_call"] is None else f"{m['compute_over_call']:.1f}"
            lines.append(f"| {batch} | {m['seconds_per_call'] * 1e3:.3f} ms | {m['compute_seconds'] * 1e3:.1f} ms | "
                         f"{ratio} | {limit:.1f} | {pred:.2f} ({meas:.2f}) |")
    return "\n".join(lines) + "\n"


def cmd_bench_sample(args) -> int:
    from pathlib import Path

    from par import io

    if args.preset not in PRESETS:
        raise UserError(f"--preset {args.preset!r}: choose one of {sorted(PRESETS)}")
    batches = tuple(int(b) for b in args.batch_sizes.split(",")) if args.batch_sizes else None
    steps = ARPG_STEPS if args.arpg_steps is None else _parse_steps(args.arpg_steps)
    result = run_sample_bench(args.preset, batches, args.repeats, args.compile, args.device, steps)
    out, stem = Path(args.out), f"sample-{args.preset}" + ("-compile" if args.compile else "")
    io.write_json(out / f"{stem}.json", result)
    md = to_markdown(result)
    io.write_text(out / f"{stem}.md", md)
    print(md)
    return 0


def _parse_steps(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("none", ""):
        return ()
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise UserError(f"--arpg-steps {text!r}: comma-separated integers (e.g. 64,32,16) or none") from None


def register(sub):
    p = sub.add_parser("bench", help="benchmarks (writes JSON + markdown under analysis/bench/)")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    s = bsub.add_parser("sample", help="generation latency and throughput: n = 1 / 4 / 16, ARPG S = 64 / 32 / 16")
    s.add_argument("--preset", default="cpu-tiny", help=f"one of {sorted(PRESETS)}")
    s.add_argument("--batch-sizes", help="comma-separated batch sizes (default: the preset's latency + throughput)")
    s.add_argument("--repeats", type=int, help="timed runs per setting (median reported)")
    s.add_argument("--device", help="override the preset's device (e.g. cuda:1)")
    s.add_argument("--arpg-steps", help="ARPG's forward calls per image, comma-separated, or none "
                   f"(default {','.join(map(str, ARPG_STEPS))}; values above the tokens per image are skipped)")
    s.add_argument("--compile", action="store_true", help="torch.compile the decode step (CUDA graphs on GPU)")
    s.add_argument("--out", default="analysis/bench", help="output directory")
    s.set_defaults(func=cmd_bench_sample)
    from par.train import bench as train_bench

    train_bench.register(bsub)
