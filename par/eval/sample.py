"""`par sample`: sharded class-conditional sampling for evaluation (paper §5 protocol, DiT-style).

N samples are cut into fixed shards; shard k (indices [k·S, (k+1)·S)) draws its random labels and its
tokens from a generator seeded by (seed, k), so the result does not depend on how many ranks or Slurm
array tasks share the work. A job given k GPUs runs `par sample --procs k`: one worker process per GPU
(GPU i takes shards i, i+k, …), then the parent packs them. Each shard is written atomically, with its sha256 next to it; a rerun after a kill completes only the
missing shards (and those that no longer match their sha256). `--finalize` (or the process that finds every shard present) packs the ADM-format npz
(`arr_0`, uint8 N×H×W×3), a class grid PNG (one row per class, the first 10 classes, 10 samples each) and `sampling.json` (settings, steps, latency at batch 1,
throughput).

Decoding follows the reference: tokens (raster) → VQ decode at 16·L px → bicubic resize (no antialias)
to --image-size → uint8 = clamp(127.5·x + 128, 0, 255), truncated.

Video: `--vq` may be a video tokenizer checkpoint (`par train-video-vq`; detected by its kind) for a model over a
(t, h, w) token grid. Tokens (raster) → ids (B, t, h, w) → `decode_codes` → uint8 clips (B, T, H, W, 3) at the
tokenizer's native size (--image-size does not apply). Shards hold `clips` instead of `images`; finalize writes
samples.npz with `clips` (uint8 N×T×H×W×3) and `labels` (int64) — what `par fvd` reads —, labels.npy, grid.png (a
filmstrip: one row per class, the first 10 classes, one clip each, its frames left to right), grid.gif (8 fps,
looping) and grid.mp4 (H.264, else MPEG-4 Part 2) tiling 4 clips per class, and sampling.json with the image
keys (per clip) plus modality, clip_shape, grid_gif and grid_mp4.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from par import io
from par.cluster import array_task
from par.config import SampleJob, add_arguments, from_args
from par.errors import UserError


def shard_path(out: Path, k: int) -> Path:
    return out / "shards" / f"samples-{k:05d}.npz"


def load_tokenizer(path) -> tuple[object, bool]:
    """(tokenizer, is_video): a `par train-video-vq` checkpoint (its "kind") or an image VQ (`load_vq`). The kind
    is peeked with a memory-mapped, weights-only load, so no tensor data is read twice."""
    import argparse

    import torch

    from par.data import video_tokenizer
    from par.data.tokenizer import load_vq

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # as par.io.torch_load allows
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 — e.g. a legacy (non-zip) file: not ours, so an image VQ; load_vq reports
        ckpt = None
    if isinstance(ckpt, dict) and ckpt.get("kind") == video_tokenizer.KIND:
        return video_tokenizer.load_video_vq(path), True
    return load_vq(path), False


def _setup(job: SampleJob):
    import torch

    from par.core.model import load_checkpoint, model_config

    from par.devices import resolve

    device = resolve(job.device)  # torchrun / --procs: one GPU per worker (cuda:LOCAL_RANK)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bf16": torch.bfloat16,
             "fp32": torch.float32}[job.dtype]
    config = None
    if job.size:  # a released checkpoint: ARPG's were trained on 256-px images (16×16 tokens), PAR's on 384 (24×24)
        config = model_config(job.size, order=job.order, n=job.n, **({"grid": (16, 16)} if job.order == "arpg" else {}))
    model = load_checkpoint(job.model, config, dtype=dtype, weights=job.weights).to(device)
    vq, video = load_tokenizer(job.vq)
    grid = model.order.grid
    if video != (len(grid) == 3):
        raise UserError(f"--vq {job.vq}: {'a video' if video else 'an image'} tokenizer, but --model {job.model} "
                        f"generates a {'×'.join(map(str, grid))} token grid; give the "
                        f"{'video' if len(grid) == 3 else 'image'} tokenizer it was trained on")
    if video and model.config.vocab_size > vq.vocab_size:
        raise UserError(f"--model {job.model}: vocabulary {model.config.vocab_size} exceeds the video tokenizer's "
                        f"{vq.vocab_size} (--vq {job.vq}); give the tokenizer the model was trained on")
    vq = vq.to(device)
    if job.compile and model.config.order == "arpg":
        raise UserError("--compile: ARPG decodes a different number of tokens at each step (one graph per step); "
                        "sample it with --compile false")
    if job.compile:
        from par.core.generate import compile_decode_step

        model.decode_step = compile_decode_step(model)  # generate() then uses the static cache
    return model, vq, device


def decode_to_uint8(vq, tokens_raster, grid, image_size: int) -> np.ndarray:
    """Raster tokens (B, N) → uint8 images (B, image_size, image_size, 3), exactly the reference's path."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        x = vq.decode_codes(tokens_raster, grid).float()
        if x.shape[-1] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False)
        x = torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def decode_clips(tokenizer, tokens_raster, grid) -> np.ndarray:
    """Raster tokens (B, t·h·w) → uint8 clips (B, T, H, W, 3) at the video tokenizer's native size."""
    import torch

    from par.data.video_tokenizer import tensor_to_clips

    with torch.no_grad():
        return tensor_to_clips(tokenizer.decode_codes(tokens_raster.reshape(-1, *grid)))


def is_video(model) -> bool:
    return len(model.order.grid) == 3  # `_setup` checked that the tokenizer agrees


def _generate_batch(model, vq, labels, job: SampleJob, gen):
    from par.core.generate import generate

    tokens = generate(model, labels, job, gen, static_cache=job.compile or None)  # a SampleJob is SamplingSettings
    if is_video(model):
        return tokens, decode_clips(vq, tokens, model.order.grid)
    return tokens, decode_to_uint8(vq, tokens, model.order.grid, job.image_size)


def run_shard(job: SampleJob, k: int, model, vq, device) -> None:
    import torch

    lo, hi = k * job.shard_size, min((k + 1) * job.shard_size, job.num_samples)
    gen = torch.Generator(device=device).manual_seed(job.seed * 1_000_003 + k)
    C = model.config.num_classes
    if job.labels == "balanced":
        labels = torch.arange(lo, hi, device=device) % C
    else:
        labels = torch.randint(0, C, (hi - lo,), generator=gen, device=device)
    images, tokens = [], []
    t0 = time.perf_counter()
    for b in range(0, hi - lo, job.batch_size):
        tok, img = _generate_batch(model, vq, labels[b:b + job.batch_size], job, gen)
        tokens.append(tok.cpu().numpy().astype(np.int16 if model.config.vocab_size <= 1 << 15 else np.int32))
        images.append(img)
    seconds = time.perf_counter() - t0
    with io.atomic_path(shard_path(Path(job.out), k), digest=True) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{"clips" if is_video(model) else "images": np.concatenate(images)},
                     tokens=np.concatenate(tokens), labels=labels.cpu().numpy(), indices=np.arange(lo, hi),
                     seconds=seconds)


def measure_latency(job: SampleJob, model, vq, device, repeats: int = 7) -> tuple[float, list[float]]:
    """Seconds for one image (or clip) at batch 1 (tokens + VQ decode): the best of `repeats` runs after a warm-up,
    and all runs. The minimum, not the median: sampling jobs share nodes (on the tiny preset, two jobs share
    two cores), and interference only ever adds time."""
    import torch

    gen = torch.Generator(device=device).manual_seed(job.seed)
    label = torch.zeros(1, dtype=torch.long, device=device)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _generate_batch(model, vq, label, job, gen)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return min(times), times


def class_samples(job: SampleJob, model, vq, device, classes=10, per_class=10) -> np.ndarray:
    """(rows, per_class, ...) uint8 samples of the first `classes` classes, one row per class."""
    import torch

    gen = torch.Generator(device=device).manual_seed(job.seed + 12345)
    labels = torch.arange(min(classes, model.config.num_classes), device=device).repeat_interleave(per_class)
    out = np.concatenate([_generate_batch(model, vq, labels[b:b + job.batch_size], job, gen)[1]
                          for b in range(0, len(labels), job.batch_size)])
    return out.reshape(len(labels) // per_class, per_class, *out.shape[1:])


def tile(x: np.ndarray) -> np.ndarray:
    """(rows, cols, H, W, 3) → one (rows·H, cols·W, 3) image."""
    rows, cols, h, w = x.shape[:4]
    return x.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)


def class_grid(job: SampleJob, model, vq, device, classes=10, per_class=10) -> np.ndarray:
    """(classes·H, per_class·W, 3) uint8 grid: one row per class (the first `classes` classes)."""
    return tile(class_samples(job, model, vq, device, classes, per_class))


GIF_MS_PER_FRAME = 125  # 8 fps
VIDEO_PER_CLASS = 4  # clips per class row of grid.gif / grid.mp4


def write_video_grids(out: Path, clips: np.ndarray) -> str:
    """grid.png, grid.gif, grid.mp4 of `clips` (classes, per_class, T, H, W, 3); returns the mp4's codec.
    grid.png: each class's first clip as a filmstrip (its frames left to right); gif/mp4: every clip, tiled."""
    from PIL import Image

    with io.atomic_path(out / "grid.png") as tmp:
        Image.fromarray(tile(clips[:, 0])).save(tmp, format="PNG")
    frames = [tile(clips[:, :, t]) for t in range(clips.shape[2])]
    # GIF delays are whole centiseconds: 125 ms alternates 120 and 130, so the clip still plays at 8 fps on average.
    # (Pillow merges identical consecutive frames, adding their delays.)
    delays = [GIF_MS_PER_FRAME - 5 + 10 * (t % 2) for t in range(len(frames))]
    with io.atomic_path(out / "grid.gif") as tmp:
        first, *rest = (Image.fromarray(f) for f in frames)
        first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=delays, loop=0)
    with io.atomic_path(out / "grid.mp4") as tmp:
        return write_mp4(tmp, frames, fps=1000 // GIF_MS_PER_FRAME)


def write_mp4(path, frames, fps: int) -> str:
    """uint8 (H, W, 3) frames → an .mp4 (yuv420p; odd sides padded by repeating the edge, as 4:2:0 needs even ones):
    H.264 where PyAV's FFmpeg has an encoder for it, else MPEG-4 Part 2. Returns the codec used."""
    import av

    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    errors = []
    for codec in ("h264", "mpeg4"):
        try:
            with av.open(str(path), mode="w", format="mp4") as container:
                stream = container.add_stream(codec, rate=fps)
                stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
                for f in frames:
                    frame = av.VideoFrame.from_ndarray(np.pad(f, pad, mode="edge"), format="rgb24")
                    container.mux(stream.encode(frame))
                container.mux(stream.encode())
            return codec
        except (av.FFmpegError, ValueError) as e:  # no such encoder in this FFmpeg build: try the next
            errors.append(f"{codec}: {e}")
    raise UserError(f"{path}: PyAV could encode neither H.264 nor MPEG-4 ({'; '.join(errors)})")


def write_clips_npz(path, clips: np.ndarray, labels) -> None:
    """Video samples as `par fvd` reads them: `clips` (uint8 N×T×H×W×3) and `labels` (int64), written atomically."""
    with io.atomic_path(path, needed=clips.nbytes, digest=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, clips=clips, labels=np.asarray(labels, np.int64))


def finalize(job: SampleJob, model=None, vq=None, device=None) -> Path:
    """Pack shards → samples.npz (exactly N distinct indices), grid.png (video: also grid.gif, grid.mp4),
    sampling.json."""
    from PIL import Image

    from par.data.imageio import write_adm_npz

    out = Path(job.out)
    missing = [k for k in range(job.num_shards) if not shard_path(out, k).exists()]
    if missing:
        raise UserError(f"{out}: shards {missing[:5]}{'…' if len(missing) > 5 else ''} missing; run `par sample` "
                        "again without --finalize to complete them")
    for k in range(job.num_shards):
        io.verify(shard_path(out, k), "run `par sample` again without --finalize: it makes damaged shards again")
    shards = [np.load(shard_path(out, k)) for k in range(job.num_shards)]
    indices = np.concatenate([s["indices"] for s in shards])
    if not np.array_equal(indices, np.arange(job.num_samples)):
        raise UserError(f"{out}/shards: indices are not exactly 0..{job.num_samples - 1} (stale shards from "
                        "another --num-samples/--shard-size?); delete the shards folder and resample")
    labels = np.concatenate([s["labels"] for s in shards])
    if model is None:
        model, vq, device = _setup(job)
    video = is_video(model)
    if video:
        clips = np.concatenate([s["clips"] for s in shards])
        write_clips_npz(out / "samples.npz", clips, labels)
    else:
        write_adm_npz([img for s in shards for img in s["images"]], out / "samples.npz")
    with io.atomic_path(out / "labels.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, labels, allow_pickle=False)
    if video:
        codec = write_video_grids(out, class_samples(job, model, vq, device, per_class=VIDEO_PER_CLASS))
    else:
        grid = class_grid(job, model, vq, device)
        with io.atomic_path(out / "grid.png") as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
    total_seconds = float(sum(float(s["seconds"]) for s in shards))
    latency, runs = measure_latency(job, model, vq, device)
    from par.provenance import git_commit  # the commit that sampled this run (runs.csv: sample_commit)

    meta = {"job": asdict(job), "num_samples": job.num_samples, "num_shards": job.num_shards, "commit": git_commit(),
            "forward_calls": forward_calls(model, job), "order": model.order.name, "n": model.config.n,
            "params": model.num_params,
            "seconds_per_image_batch1": latency, "latency_runs": runs,
            "images_per_second": job.num_samples / total_seconds, "device": str(device),
            "npz": str(out / "samples.npz"), "grid": str(out / "grid.png")}
    if video:  # the image keys count clips here
        meta |= {"modality": "video", "clip_shape": list(clips.shape[1:]), "grid_gif": str(out / "grid.gif"),
                 "grid_mp4": str(out / "grid.mp4"), "grid_mp4_codec": codec}
    io.write_json(out / "sampling.json", meta)
    return out / "samples.npz"


def forward_calls(model, job: SampleJob) -> int:
    """Forward calls per image: fixed by the order and n for PAR, the sampler's `arpg_steps` for ARPG."""
    return job.arpg_steps if model.config.order == "arpg" else model.order.num_calls


def _check_folder(job: SampleJob, out: Path) -> None:
    """A folder holds the samples of one setting of one model. Other settings: refuse (the user's call).
    Same settings but another checkpoint or tokenizer (a retrained model, a workflow rerun): the shards are
    stale derived data, so they are discarded and resampled instead of being silently reused."""
    settings = out / "job.json"
    inputs = {"model_sha256": io.sha256_file(job.model), "vq_sha256": io.sha256_file(job.vq)}
    prev_inputs = None
    if settings.exists():
        prev = json.loads(settings.read_text())
        prev_inputs = prev.pop("inputs", None)
        prev = {**asdict(SampleJob()), **prev}  # fields added since the folder was written take their defaults
        cur = asdict(job)
        changed = sorted(k for k in cur if prev.get(k) != cur[k])
        if changed:
            raise UserError(f"{settings}: this folder holds samples made with other settings ({changed}); use a new "
                            "--out or delete the folder")
        if prev_inputs != inputs:
            stale = sorted((out / "shards").glob("*.npz"))
            print(f"par sample: {out}: the model or tokenizer changed since these samples were made; "
                  f"discarding {len(stale)} stale shard(s)", file=sys.stderr)
            for p in stale + [out / f for f in ("samples.npz", "labels.npy", "grid.png", "grid.gif", "grid.mp4",
                                                "sampling.json")]:
                p.unlink(missing_ok=True)
                io.digest_path(p).unlink(missing_ok=True)
    if prev_inputs != inputs:
        io.write_json(settings, {**asdict(job), "inputs": inputs})


def _done(out: Path, k: int, quiet: bool = False) -> bool:
    """Shard k is written and intact (a damaged one is made again, like a missing one)."""
    return io.shard_state(shard_path(out, k), None, None, "sample", quiet) == "complete"


def run(job: SampleJob, shard: int, num_shards: int, do_finalize: bool) -> None:
    """Make this task's missing shards, then (alone, or with --finalize) pack them. The checkpoint and tokenizer
    are loaded first: a bad input fails before anything is written into the folder. Each shard is claimed
    before it is computed, so two workers on one folder (overlapping array tasks, a rerun while a job still
    runs) split the shards instead of both computing every one."""
    out = Path(job.out)
    model, vq, device = _setup(job)
    _check_folder(job, out)
    todo = [k for k in range(shard, job.num_shards, num_shards) if not _done(out, k)]
    from par.progress import progress

    others = []
    for k in progress(todo, f"sample {out.name}", enable=bool(todo)):
        with io.claim(shard_path(out, k)) as mine:
            if mine and not _done(out, k, quiet=True):
                run_shard(job, k, model, vq, device)
            elif not mine:
                others.append(k)
    if others:
        print(f"par sample: {out}: {len(others)} shard(s) claimed by another worker, left to it "
              f"({others[:5]}{'…' if len(others) > 5 else ''})", file=sys.stderr)
    # A single process that sees every shard packs them itself; parallel tasks leave it to one --finalize call.
    if do_finalize or (num_shards == 1 and all(shard_path(out, k).exists() for k in range(job.num_shards))):
        with io.claim(out / "samples.npz") as mine:
            if mine:
                finalize(job, model, vq, device)


def _worker(job: SampleJob, i: int, procs: int) -> None:
    os.environ["LOCAL_RANK"] = str(i)  # this worker's GPU (`_setup`)
    run(job, i, procs, do_finalize=False)


def run_procs(job: SampleJob, procs: int) -> None:
    """`procs` worker processes on this node (GPU i each, or CPU processes), then pack the shards here."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    workers = [ctx.Process(target=_worker, args=(job, i, procs)) for i in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    failed = [i for i, w in enumerate(workers) if w.exitcode]
    if failed:
        raise UserError(f"par sample: worker(s) {failed} of {procs} failed (their messages are above); run the same "
                        "command again to complete the missing shards")
    run(job, 0, 1, do_finalize=True)  # every shard exists: only the packing is left


def cmd_sample(args) -> int:
    job = from_args(SampleJob, args, config_file=args.config)
    if not Path(job.model).exists():
        raise UserError(f"--model {job.model}: checkpoint not found")
    if not Path(job.vq).exists():
        raise UserError(f"--vq {job.vq}: tokenizer checkpoint not found")
    if args.procs > 1:
        run_procs(job, args.procs)
        return 0
    shard, num = (args.shard, args.num_shards) if args.shard is not None else array_task()
    if not 0 <= shard < num:
        raise UserError(f"--shard {shard} must be in [0, --num-shards {num})")
    run(job, shard, num, args.finalize)
    return 0


def register(sub):
    p = sub.add_parser("sample", help="sharded class-conditional sampling → ADM npz, grid, sampling.json",
                       description="Sharded class-conditional sampling. With a video tokenizer as --vq (a model over a "
                       "t×h×w token grid), samples are clips at the tokenizer's native size (--image-size is "
                       "ignored) and the outputs are samples.npz (clips, labels), grid.png/.gif/.mp4.")
    add_arguments(p, SampleJob)
    p.add_argument("--config", help="JSON/YAML file with the fields above")
    p.add_argument("--shard", type=int, help="this task's index (default: from the Slurm array, or RANK)")
    p.add_argument("--num-shards", type=int, default=1, help="number of parallel tasks sharing the shards")
    p.add_argument("--finalize", action="store_true", help="pack the npz/grid/sampling.json once all shards exist")
    p.add_argument("--procs", type=int, default=1, help="worker processes on this node, one per GPU (a job's GPUs); "
                   "they split the shards, then this process packs them (default 1)")
    p.set_defaults(func=cmd_sample)
