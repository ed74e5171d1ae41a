"""`par plan`: the compute bill of a preset before anything is submitted.

Training FLOPs ≈ 6 · params · tokens (tokens = steps · global batch · sequence length); sampling FLOPs ≈
2 · params · tokens generated, doubled by classifier-free guidance (always for ARPG, whose sampler doubles the
batch even at scale 1; its content and query streams each pass half the blocks, so N tokens count once).
Released weights and `trained_as` entries cost no training. GPU-hours follow from the peak bf16
throughput of an A100 / H100 at an assumed model-FLOPs utilisation (MFU).

Per GPU, each training job is also given what it will hold (`par.train.memory`): weights, gradients, AdamW states
and activations under its strategy (DDP or FSDP), micro-batch and activation checkpointing, on the GPUs of its
`resources` entry. A job that does not fit `gpu_mem_gb` is refused, naming the setting that makes it fit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from par.errors import UserError
from par.train.train import PEAK_FLOPS

IMAGENET_TRAIN_IMAGES = 1_281_167
UCF101_TRAIN_VIDEOS = 9_537  # trainlist01: one random clip of every train video per epoch


def _video_data(preset: dict, results: Path) -> tuple[int, tuple, int, int]:
    """(clips per epoch, token grid (t, h, w), vocabulary, classes) of a preset's video models: from the video token
    manifest once it exists, else from the clip and tokenizer settings."""
    from par.config import VideoStage, check
    from par.data.video_tokenizer import config_from_settings

    manifest = Path(results) / "video" / "tokens" / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        return m["num_images"], tuple(m["grid"]), m["codebook_size"], m["num_classes"]
    v = check(VideoStage, preset.get("video", {}), "video")
    cfg = config_from_settings(v.tokenizer.train)
    size = v.clips.size or (128 if v.clips.source == "ucf101" else 64)
    clips, classes = ((v.clips.num_videos or UCF101_TRAIN_VIDEOS), 101) if v.clips.source == "ucf101" else \
        ((v.clips.num_videos or 60_000), 10)
    return clips, cfg.latent_shape(v.clips.frames, size, size), cfg.vocab_size, classes


def _network(size: str, order: str, n: int, grid, vocab: int, classes: int, regions: int = 0):
    """(parameters, parameters of one block, blocks, width) of a model, built on the meta device."""
    import torch

    from par.core.model import build, model_config
    from par.train.parallel import blocks

    with torch.device("meta"):
        model = build(model_config(size, grid=tuple(grid), order=order, n=n, vocab_size=vocab, num_classes=classes,
                                   regions=regions))
    parts = blocks(model)
    return model.num_params, max(sum(p.numel() for p in b.parameters()) for b in parts), len(parts), model.config.dim


def plan(config_path, preset_name: str, results: str | Path, mfu: float) -> list[dict]:
    from dataclasses import asdict

    from par.config import SampleSettings, TrainSettings
    from par.core.order import Order
    from par.config import load_config

    cfg, preset = load_config(config_path, preset_name)
    manifest = Path(results) / "tokens" / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        images, grid, vocab, classes = m["num_images"], m["grid"], m["codebook_size"], m["num_classes"]
    elif preset_name.startswith("paper") or preset.get("data", {}).get("source") == "none":  # ImageNet, VQ-16
        images, grid, vocab, classes = IMAGENET_TRAIN_IMAGES, (24, 24), 16384, 1000
    else:
        d = preset["data"].get("tinyset", {})
        images, classes, vocab = 10 * d.get("images_per_class", 400), 10, preset["tokenizer"]["train"]["codebook_size"]
        side = preset["tokenize"]["image_size"] // 2 ** (len(preset["tokenizer"]["train"]["ch_mult"].split(",")) - 1)
        grid = (side, side)
    def is_video(m: dict) -> bool:  # its own modality, or that of the entry it is `trained_as`
        return "video" in (m.get("modality"), preset["models"].get(m.get("trained_as") or "", {}).get("modality"))

    video = _video_data(preset, results) if any(is_video(m) for m in preset["models"].values()) else None
    rows = []
    for name, m in sorted(preset["models"].items()):
        train = {**asdict(TrainSettings()), **preset.get("train", {}), **m}  # defaults under what is written
        arpg = m["order"] == "arpg"
        released = bool(m.get("checkpoint") or m.get("checkpoint_url"))
        g = (16, 16) if arpg and released else tuple(grid)  # ARPG's released weights: 16×16 tokens (256 px)
        items, vocab_m, classes_m = images, vocab, classes
        if is_video(m):  # a clip is a (t, h, w) grid of the video tokenizer's codes
            items, g, vocab_m, classes_m = video
        num_tokens = math.prod(g)
        seq_len = num_tokens if arpg else Order(g, m["order"], m["n"], m.get("initial_sequential", True),
                                                m.get("group_attention", "full"), m.get("regions", 0)).layout.seq_len
        params, block, layers, _ = _network(m["size"], m["order"], m["n"], g, vocab_m, classes_m, m.get("regions", 0))
        steps = train.get("max_steps") or int(train.get("epochs", 1) * (items // train["global_batch"]))
        trained = not (released or m.get("trained_as"))
        train_flops = 6 * params * steps * train["global_batch"] * seq_len if trained else 0.0
        s = {**asdict(SampleSettings()), **preset.get("sample", {}), **m}
        sample_flops = 2 * params * num_tokens * s["num_samples"] * (2 if arpg or s.get("cfg_scale", 1) > 1 else 1)
        row = {"model": name, "size": m["size"], "n": m["n"], "params": params, "train_steps": steps,
               "train_flops": train_flops, "sample_flops": sample_flops}
        if trained:
            row |= _memory(preset, m, train, params, block, layers, vocab_m, classes_m, seq_len)
            row |= _requeues(preset, m, train_flops, mfu)
        for gpu, peak in (("A100", PEAK_FLOPS["A100"]), ("H100", PEAK_FLOPS["H100"])):
            row[f"{gpu}_hours"] = (train_flops + sample_flops) / (peak * mfu) / 3600
        rows.append(row)
    return rows


def _memory(preset: dict, entry: dict, train: dict, params, block, layers, vocab, classes, seq_len) -> dict:
    """Per-GPU memory of a training job on the GPUs of its resources entry (activations counted for its network,
    `memory.measure`), and the fix when it does not fit."""
    from par.config import Preset, check
    from par.train import memory
    from par.train.parallel import strategy

    res = check(Preset, {"models": {}, **preset}, "preset").resources_for(entry.get("resources", "train"))
    world = max(1, res.nodes * res.gpus)
    share = train["global_batch"] // world
    kind = strategy(train.get("parallel", "auto"), params, world)
    # FSDP computes with bf16 weights; DDP keeps fp32 weights under bf16 autocast (saves fp32 copies in places)
    acts = memory.measure(entry["size"], vocab, classes, arpg=entry["order"] == "arpg",
                          dropout=float(train.get("dropout", 0.1)), precision="bf16" if kind == "fsdp" else "autocast")
    shard_group = train.get("fsdp_shard_group") or (res.gpus if res.nodes > 1 else world)
    job = memory.Job(params, block, layers, acts, seq_len, world, min(train.get("micro_batch") or share, share),
                     kind, bool(train.get("activation_checkpointing", False)), shard_group)
    gb = memory.per_gpu(job)
    fits = not res.gpus or gb["total"] <= res.gpu_mem_gb
    return {"gpus": world if res.gpus else 0, "strategy": job.strategy, "micro_batch": job.micro_batch,
            "checkpointing": job.checkpointing, **{f"{k}_gb": v for k, v in gb.items()},
            "gpu_mem_gb": res.gpu_mem_gb if res.gpus else None,
            "headroom_gb": res.gpu_mem_gb - gb["total"] if res.gpus else None,
            "fix": "" if fits else memory.fix(job, res.gpu_mem_gb)}


def _requeues(preset: dict, entry: dict, train_flops: float, mfu: float) -> dict:
    """Wall-clock hours of a training job on the GPUs of its resources entry, and the requeues that takes: a job
    longer than the partition's time limit (`runtime`) is stopped at each limit and requeued by submitit
    (`max_requeues`), resuming from its checkpoint. The GPU's peak follows the constraint (an H100 feature, else
    the A100 the paper used)."""
    from par.config import ClusterSettings, Preset, check

    res = check(Preset, {"models": {}, **preset}, "preset").resources_for(entry.get("resources", "train"))
    if not res.gpus:
        return {}
    peak = PEAK_FLOPS["H100"] if "h100" in res.constraint.lower() else PEAK_FLOPS["A100"]
    hours = train_flops / (res.nodes * res.gpus * peak * mfu) / 3600
    requeues = max(0, math.ceil(hours * 60 / res.runtime) - 1)
    limit = ClusterSettings().max_requeues
    return {"wall_hours": hours, "job_limit_hours": res.runtime / 60, "requeues": requeues,
            **({"fix": f"more than max_requeues={limit} requeues: raise it, the time limit or the GPUs"}
               if requeues > limit else {})}


def cmd_plan(args) -> int:
    import pandas as pd

    rows = plan(args.config, args.preset, args.results or f"results/{args.preset}", args.mfu)
    df = pd.DataFrame(rows).set_index("model")
    total = df[["train_flops", "sample_flops", "A100_hours", "H100_hours"]].sum()
    show = df.assign(train_flops=df.train_flops.map("{:.2e}".format), sample_flops=df.sample_flops.map("{:.2e}".format),
                     params=df.params.map("{:,}".format), A100_hours=df.A100_hours.map("{:,.1f}".format),
                     H100_hours=df.H100_hours.map("{:,.1f}".format),
                     **{c: df[c].map(lambda v: "" if v is None or v != v else f"{v:.1f}") for c in df if c.endswith("_gb")})
    show = show.astype(object).fillna("").rename(columns=lambda c: c.replace("_gb", " GB").replace("_", " "))
    print(f"Compute plan for preset `{args.preset}` at an assumed MFU of {args.mfu:.0%} (bf16 peak: A100 312, H100 989 "
          "TFLOP/s)\n")
    print(show.to_markdown())
    if "requeues" in df:
        long = df[df.requeues.fillna(0) > 0]
        for m, r in long.iterrows():
            print(f"\n{m}: ~{r.wall_hours:,.0f} h on {int(r.gpus)} GPUs at {args.mfu:.0%} MFU against a "
                  f"{r.job_limit_hours:g} h job limit: submitit requeues it ~{int(r.requeues)} times", end="")
        print()
    print(f"\nTotal: {total.train_flops:.2e} training + {total.sample_flops:.2e} sampling FLOPs = "
          f"{total.A100_hours:,.0f} A100-hours or {total.H100_hours:,.0f} H100-hours")
    refused = df[df["fix"].fillna("").astype(bool)] if "fix" in df else df.iloc[:0]
    if len(refused):
        lines = [f"  {m}: {r.total_gb:.0f} GB per GPU > {r.gpu_mem_gb:g} GB on {int(r.gpus)} GPU(s) "
                 f"({r.strategy}, micro-batch {int(r.micro_batch)}); fix: {r.fix}" for m, r in refused.iterrows()]
        raise UserError("training jobs that do not fit their GPUs:\n" + "\n".join(lines))
    return 0


def register(sub):
    from par.config import add_run_arguments

    p = sub.add_parser("plan", help="estimated FLOPs and GPU-hours of every job of a preset")
    add_run_arguments(p, preset_default="paper", results_required=False)  # the token manifest, if it exists
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default 0.4)")
    p.set_defaults(func=cmd_plan)
