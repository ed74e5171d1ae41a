"""`par tokenize`: ten-crop VQ pre-tokenisation of an ImageFolder into token shards.

Pre-tokenisation follows LlamaGen's `extract_codes_c2i.py --ten-crop --crop-range 1.1` (spec §8.1; the
image side lives in `par.data.crops`): ten crops per image, VQ encode in fp32 → (10, h·w) raster codes.
The output directory (`--out DIR`) holds ``shard-{k:05d}.npz`` files and, once every shard exists, a
``manifest.json``; `par.data.shards` defines that format and reads it (`TokenShards`, `TokenDataset`).

Work is split into shards of ``--shard-size`` images; a process handles the shards k ≡ ``--shard`` (mod
``--num-shards``), keeps shards that are already complete and writes each new one atomically, so runs can
be killed, resumed and spread over a Slurm job array. Before computing a shard a process claims it (an
exclusive lock on ``shard-k.npz.lock``, `par.io.try_claim`), so processes working on one folder split
the shards instead of repeating them; the claim of a killed process is taken over by the next one. The
manifest is written (atomically, and rebuilt from the shards, so concurrent writers agree) by whichever
process sees every shard present after writing its own, or by ``par tokenize --finalize --out DIR``.
All inputs (images, VQ checkpoint, options, device) are checked before the output folder is created.
The offline tiny dataset (`par make-tinyset`) is `par.data.tinyset`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from par.cluster import add_slot_arguments, array_slot, report_slot
from par.config import TokenizeJob, add_arguments, from_args
from par.data.crops import BadImage, crop_size, list_images, load_rgb, ten_crop_transform
from par.data.shards import (CENTRE, CROP_ORDER, FORMAT, MANIFEST, NUM_CROPS, VERSION, check_shard, finalize, read_shard_meta,
                             shard_name, write_shard)
from par.errors import UserError
from par.io import remove_stale_temps, sha256_file, shard_state, try_claim
from par.progress import Progress

# Test hook: sleep this many seconds after each encoded batch (lets a test kill the process mid-run).
BATCH_DELAY_ENV = "PAR_TOKENIZE_TEST_BATCH_DELAY"


def _list_digest(root: Path, samples) -> str:
    h = hashlib.sha256()
    for p, label in samples:
        h.update(f"{os.path.relpath(p, root)}\t{label}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- tokenisation

class _ImageCrops:
    """Map-style dataset over (path, label) samples: index → (index, crops tensor | None, skip reason)."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        try:
            img = load_rgb(self.samples[i][0])
        except BadImage as e:
            return i, None, str(e)
        try:
            return i, self.transform(img), None
        except Exception as e:  # noqa: BLE001 — e.g. a degenerate 1-pixel-wide image
            return i, None, f"cannot crop: {type(e).__name__}: {e}"


def _collate_list(items):
    return items


def _default_workers() -> int:
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:
        ncpu = os.cpu_count() or 1
    return min(8, max(0, ncpu - 1))


def _check_options(vq: Path, image_size, crop_range, shard_size, shard, num_shards, batch_size) -> None:
    if not vq.is_file():
        raise UserError(f"--vq {vq}: no such file; pass a VQ checkpoint (LlamaGen vq_ds16_c2i.pt or save_vq output)")
    for name, v, lo in (("--image-size", image_size, 1), ("--shard-size", shard_size, 1),
                        ("--batch-size", batch_size, 1), ("--num-shards", num_shards, 1)):
        if v < lo:
            raise UserError(f"{name} {v}: must be ≥ {lo}")
    if not 0 <= shard < num_shards:
        raise UserError(f"--shard {shard}: must be in 0..{num_shards - 1} (--num-shards {num_shards})")
    if crop_range < 1.0:
        raise UserError(f"--crop-range {crop_range}: must be ≥ 1 (the centre crop is int(image_size·crop_range))")


@dataclass
class _Run:
    """One tokenisation run: its inputs and settings, the ImageFolder listing and (loaded lazily) the VQ."""

    root: Path
    vq: Path
    out: Path
    image_size: int
    crop_range: float
    shard_size: int
    classes: list = field(default_factory=list)
    samples: list = field(default_factory=list)
    vq_sha: str = ""
    model: object = None

    @property
    def num_shards(self) -> int:
        return math.ceil(len(self.samples) / self.shard_size)

    def shard_range(self, k: int) -> tuple[int, int]:
        return k * self.shard_size, min((k + 1) * self.shard_size, len(self.samples))

    def vq_model(self):
        """The VQ model, loaded on first use (cheap relative to encoding; needed for the grid)."""
        if self.model is None:
            from par.data.tokenizer import load_vq

            m = load_vq(self.vq)
            ds = m.cfg.downsample
            if self.image_size % ds:
                raise UserError(f"--image-size {self.image_size}: must be a multiple of the VQ downsampling "
                                f"factor {ds}")
            if m.cfg.codebook_size > 32768:
                raise UserError(f"--vq {self.vq}: codebook of {m.cfg.codebook_size} codes does not fit the int16 "
                                "shard format")
            self.model = m
        return self.model

    @property
    def side(self) -> int:
        return self.image_size // self.vq_model().cfg.downsample

    def expect(self, k: int) -> dict:
        """The settings shard k of this run records in its meta (and must have, to be kept)."""
        start, stop = self.shard_range(k)
        return {"format": FORMAT, "version": VERSION, "image_size": self.image_size, "crop_range": self.crop_range,
                "shard_size": self.shard_size, "num_files": len(self.samples), "num_shards": self.num_shards,
                "tokenizer_sha256": self.vq_sha, "class_names": self.classes, "shard": k, "start": start,
                "stop": stop, "grid": [self.side] * 2, "codebook_size": self.vq_model().cfg.codebook_size,
                "files_sha256": _list_digest(self.root, self.samples[start:stop])}


def _shard_state(run: _Run, k: int, quiet: bool = False) -> str:
    """"missing", "unreadable" or "complete" (UserError if it was written by a different run)."""
    return shard_state(run.out / shard_name(k), read_shard_meta, lambda m: check_shard(m, run.expect(k), run.side ** 2),
                       "tokenize", quiet)


def _sort_shards(run: _Run, mine: list[int]) -> tuple[list[int], list[int]]:
    """(kept, pending): this slot's shards that are complete, and those still to (re)make. Shards no live
    process has claimed are tidied on the way: temp files and lock files a killed run left are removed."""
    kept, pending = [], []
    for k in mine:
        held = try_claim(run.out / shard_name(k))
        if held is None:  # another live worker is making it
            pending.append(k)
            continue
        try:
            remove_stale_temps(run.out / shard_name(k))
            (kept if _shard_state(run, k) == "complete" else pending).append(k)
        finally:
            held.release()
    held = try_claim(run.out / MANIFEST)  # and a manifest temp of a writer killed while finalizing
    if held is not None:
        try:
            remove_stale_temps(run.out / MANIFEST)
        finally:
            held.release()
    return kept, pending


def _device(device: str | None):
    from par.devices import resolve

    return resolve(device)


class _ClaimedBatches:
    """The batch sampler of `_loader`: the pending shards' images in order, batches never straddling two
    shards. Each shard is claimed just before its first batch is handed out; a shard another live worker has
    claimed, or has finished meanwhile, is passed over. Iterated in the main process (also with DataLoader
    workers), which therefore holds the claims; `release(k)` after shard k is written."""

    def __init__(self, run: _Run, pending: list[int], batch_size: int):
        self.run, self.pending, self.batch_size = run, pending, batch_size
        self.claims, self.others, self.passed_images = {}, [], 0

    def __iter__(self):
        run = self.run
        for k in self.pending:
            start, stop = run.shard_range(k)
            held = try_claim(run.out / shard_name(k))
            if held is not None and _shard_state(run, k, quiet=True) == "complete":
                held.release()
                held = None
            if held is None:  # being made, or just made, by another worker
                self.others.append(k)
                self.passed_images += stop - start
                continue
            remove_stale_temps(run.out / shard_name(k))
            self.claims[k] = held
            for b in range(start, stop, self.batch_size):
                yield list(range(b, min(b + self.batch_size, stop)))

    def release(self, k: int | None = None) -> None:
        """Drop the claim on shard k (default: every claim still held)."""
        for j in ([k] if k is not None else list(self.claims)):
            self.claims.pop(j).release()


def _loader(run: _Run, pending: list[int], batch_size: int, workers: int | None, dev):
    """(DataLoader yielding lists of (index, crops | None, skip reason), its `_ClaimedBatches` sampler,
    number of images in the pending shards)."""
    import torch

    workers = _default_workers() if workers is None else workers
    batches = _ClaimedBatches(run, pending, batch_size)
    loader = torch.utils.data.DataLoader(
        _ImageCrops(run.samples, ten_crop_transform(run.image_size, run.crop_range)), batch_sampler=batches,
        num_workers=workers, collate_fn=_collate_list, pin_memory=dev.type == "cuda")
    return loader, batches, sum(run.shard_range(k)[1] - run.shard_range(k)[0] for k in pending)


class _Shard:
    """Codes, labels and skipped images of one shard, collected batch by batch, then written."""

    def __init__(self, k: int):
        self.k, self.codes, self.labels, self.indices, self.skipped = k, [], [], [], []

    def add(self, run: _Run, batch, dev) -> None:
        import torch

        good = [(i, x) for i, x, _ in batch if x is not None]
        for i, x, reason in batch:
            if x is None:
                path, label = run.samples[i]
                self.skipped.append({"index": i, "path": os.path.relpath(path, run.root), "label": label,
                                     "reason": reason})
        if good:
            x = torch.stack([x for _, x in good]).to(dev, non_blocking=True)  # (B, 10, 3, S, S)
            if crop_size(run.image_size, run.crop_range) == run.image_size:
                # crop_range 1: the five positions coincide, so only the centre and its flip are distinct;
                # encode those two and copy their codes to the other positions (the same codes, 5× less work)
                distinct = [CROP_ORDER.index(CENTRE), CROP_ORDER.index("hflip-" + CENTRE)]
                codes = run.model.encode(x[:, distinct].flatten(0, 1))[1].reshape(len(good), 2, run.side ** 2)
                codes = codes[:, [int(name.startswith("hflip-")) for name in CROP_ORDER]]
            else:
                codes = run.model.encode(x.flatten(0, 1))[1].reshape(len(good), NUM_CROPS, run.side ** 2)
            self.codes.append(codes.to("cpu", torch.int16).numpy())
            self.indices += [i for i, _ in good]
            self.labels += [run.samples[i][1] for i, _ in good]

    def write(self, run: _Run) -> None:
        meta = {**run.expect(self.k), "skipped": self.skipped, "tokenizer": str(run.vq), "source_root": str(run.root)}
        codes = np.concatenate(self.codes) if self.codes else np.zeros((0, NUM_CROPS, run.side ** 2), np.int16)
        write_shard(run.out / shard_name(self.k), codes, self.labels, self.indices, meta)


def _encode(run: _Run, pending: list[int], batch_size: int, dev, workers: int | None,
            progress: bool) -> tuple[list[int], list[dict], list[int]]:
    """Encode and write the pending shards this process can claim; returns (shards written, images skipped,
    shards left to other workers)."""
    import torch

    run.model = run.vq_model().to(dev).eval()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if dev.type == "cuda":  # as the reference extract_codes_c2i.py: TF32 matmuls and convolutions
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    loader, batches, n_images = _loader(run, pending, batch_size, workers, dev)
    delay = float(os.environ.get(BATCH_DELAY_ENV, 0) or 0)
    written, skipped, acc = [], [], None
    try:
        with torch.inference_mode(), Progress(n_images, f"tokenize {len(pending)} shard(s)", unit="img",
                                              enable=progress) as bar:
            for batch in loader:
                acc = acc or _Shard(batch[0][0] // run.shard_size)
                acc.add(run, batch, dev)
                passed, batches.passed_images = batches.passed_images, 0
                bar.update(len(batch) + passed)
                if batch[-1][0] == run.shard_range(acc.k)[1] - 1:  # last batch of the shard
                    acc.write(run)
                    batches.release(acc.k)
                    written.append(acc.k)
                    skipped += acc.skipped
                    acc = None
                if delay:
                    time.sleep(delay)
            bar.update(batches.passed_images)
    finally:
        batches.release()  # claims of shards not finished (an error): free for the next run
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return written, skipped, batches.others


def tokenize(images, vq, out, *, image_size: int = 384, crop_range: float = 1.1, shard_size: int = 1000,
             shard: int = 0, num_shards: int = 1, batch_size: int = 4, device: str | None = None,
             workers: int | None = None, progress: bool = True) -> dict:
    """Ten-crop tokenise the ImageFolder `images` with the VQ checkpoint `vq` into shards under `out`.

    Handles shards k ≡ `shard` (mod `num_shards`); already complete shards are kept, shards claimed by another
    live worker are left to it. Every input is checked before `out` is created. Writes the manifest if all
    shards exist afterwards. Returns a summary dict (written / kept / others' shards, skipped images, manifest)."""
    run = _Run(Path(images).absolute(), Path(vq).absolute(), Path(out), image_size, crop_range, shard_size)
    _check_options(run.vq, image_size, crop_range, shard_size, shard, num_shards, batch_size)
    if run.out.exists() and not run.out.is_dir():
        raise UserError(f"--out {run.out}: exists and is not a folder; choose a folder for the shards")
    run.classes, run.samples = list_images(run.root)
    run.vq_model()  # loads and checks the checkpoint (and --image-size against it)
    dev = _device(device)
    run.vq_sha = sha256_file(run.vq)
    total = run.num_shards
    mine = list(range(shard, total, num_shards))
    run.out.mkdir(parents=True, exist_ok=True)
    kept, pending = _sort_shards(run, mine)  # also removes what a killed run of these shards left
    written, skipped, others = _encode(run, pending, batch_size, dev, workers, progress) if pending else ([], [], [])
    summary = {"shards_total": total, "shards_mine": len(mine), "written": written, "kept": kept,
               "others": others, "skipped": skipped, "manifest": None}
    missing = [k for k in range(total) if not (run.out / shard_name(k)).exists()]
    if not missing:  # checked after our own writes: the last writer of a shard always sees them all
        summary["manifest"] = str(finalize(run.out))
    summary["missing"] = missing
    return summary


# ----------------------------------------------------------------------------- CLI

def cmd_tokenize(args) -> int:
    job = from_args(TokenizeJob, args)
    if args.finalize:
        path = finalize(job.out)
        m = json.loads(Path(path).read_text())
        print(f"wrote {path}: {m['num_images']} images in {m['num_shards']} shards, {m['num_skipped']} skipped")
        return 0
    for name in ("images", "vq"):
        if not getattr(job, name):
            raise UserError(f"--{name} is required (or use --finalize --out DIR)")
    shard, num = array_slot(args.shard, args.num_shards)
    s = tokenize(job.images, job.vq, job.out, image_size=job.image_size, crop_range=job.crop_range,
                 shard_size=job.shard_size, shard=shard, num_shards=num, batch_size=job.batch_size,
                 device=job.device or None, workers=None if job.workers < 0 else job.workers)
    report_slot(s, shard, num, args.summary, "image")
    return 0


def register(sub):
    p = sub.add_parser("tokenize", help="ten-crop VQ pre-tokenisation of an ImageFolder into shards + manifest",
                       description="Ten-crop VQ tokenisation (spec §8.1). Resumable; runs as a Slurm job array "
                                   "(--shard/--num-shards default to the array task's index and count).")
    add_arguments(p, TokenizeJob)
    add_slot_arguments(p)
    p.set_defaults(func=cmd_tokenize)
