"""`par tokenize-video`: a clip folder (`par prepare-video`) → token shards of the `par tokenize` format.

Video PAR trains on the tokens of the video tokenizer (`par.data.video_tokenizer`): a clip of T frames becomes a
(t, h, w) grid (17 frames at 128² → 5×16×16 = 1280 tokens in the paper), stored raster-flat like an image's
(h, w) grid, so training, NLL and the shard reader (`par.data.shards.TokenShards`) need nothing video-specific.
The augmentation is the horizontal flip only (random crops would cut the moving content): each clip is stored
with two "crops", named ``center`` (the clip) and ``hflip-center`` (its mirror); training draws one per item,
the NLL scores ``center``.

Token shard k holds the clips of clip shard k, so the work splits like `par prepare-video`'s: a process takes
the shards k ≡ ``--shard`` (mod ``--num-shards``), keeps shards already written by the same run, claims each one
before making it (`par.io.try_claim`), and the last one to finish writes the manifest. Vocabularies up to 2^15
are stored as int16, larger ones (the paper's 16-bit LFQ) as uint16.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from par.cluster import add_slot_arguments, array_slot, report_slot
from par.config import VideoTokenizeJob, add_arguments, from_args
from par.data.clips import VideoClips
from par.data.shards import (CENTRE, FORMAT, VERSION, check_shard, codes_dtype, finalize, read_shard_meta, shard_name,
                             write_shard)
from par.devices import resolve
from par.errors import UserError
from par.io import make_shards, sha256_file, shard_state
from par.progress import Progress

CROPS = (CENTRE, "hflip-" + CENTRE)


class _Run:
    """One tokenization run: the clip folder, the tokenizer (loaded once) and what every shard must record."""

    def __init__(self, job: VideoTokenizeJob):
        import torch

        from par.data.video_tokenizer import load_video_vq

        self.job, self.clips, self.out = job, VideoClips(job.clips), Path(job.out)
        self.crops = CROPS if job.flip else CROPS[:1]
        self.device = resolve(job.device)
        self.model = load_video_vq(job.vq).to(self.device)
        frames, size = self.clips.shape[:2]
        try:
            self.grid = list(self.model.cfg.latent_shape(frames, size, size))
        except ValueError as e:
            raise UserError(f"--clips {job.clips}: {e}; make clips of 1 + k·{self.model.cfg.temporal_factor} "
                            f"frames and a side divisible by {self.model.cfg.spatial_factor}") from None
        self.dtype = codes_dtype(self.model.vocab_size)
        m = self.clips.manifest
        self.base = {"format": FORMAT, "version": VERSION, "image_size": size, "crop_range": 1.0,
                     "shard_size": m["shard_size"], "num_files": m["counts"]["items"], "num_shards": m["num_shards"],
                     "tokenizer_sha256": sha256_file(job.vq), "class_names": m["class_names"], "grid": self.grid,
                     "codebook_size": self.model.vocab_size, "crop_order": list(self.crops)}

    def expect(self, k: int) -> dict:
        s = self.clips.manifest["shards"][k]
        return self.base | {"shard": k, "start": s["start"], "stop": s["stop"]}

    def state(self, k: int) -> str:
        return shard_state(self.out / shard_name(k), read_shard_meta,
                           lambda m: check_shard(m, self.expect(k), int(np.prod(self.grid))), "tokenize-video")

    def make(self, k: int, bar) -> None:
        import torch

        s = self.clips.manifest["shards"][k]
        with np.load(self.clips.shard_file(k)) as z:
            clips, labels = z["clips"], z["labels"]
            skipped = json.loads(z["meta"].item())["skipped"]  # items `par prepare-video` could not make a clip of
        codes = np.zeros((len(clips), len(self.crops), int(np.prod(self.grid))), self.dtype)
        with torch.inference_mode():
            for b in range(0, len(clips), self.job.batch_size):
                x = torch.from_numpy(clips[b:b + self.job.batch_size])
                for c, name in enumerate(self.crops):
                    ids = self.model.encode(x.flip(3) if name.startswith("hflip-") else x)  # (B, T, H, W, 3): W
                    codes[b:b + len(x), c] = ids.flatten(1).cpu().numpy().astype(self.dtype)
                bar.update(len(x))
        gone = {x["index"] for x in skipped}
        indices = [i for i in range(s["start"], s["stop"]) if i not in gone]
        meta = self.expect(k) | {"skipped": skipped, "tokenizer": str(self.job.vq), "source_root": str(self.clips.dir),
                                 "video": {"frames": self.clips.shape[0], "fps": self.clips.manifest["fps"],
                                           "size": self.clips.shape[1]}}
        write_shard(self.out / shard_name(k), codes, labels, indices, meta)


def tokenize_video(job: VideoTokenizeJob, shard: int = 0, num_shards: int = 1, progress: bool = True) -> dict:
    """Tokenize the clip shards k ≡ `shard` (mod `num_shards`) not complete yet; the manifest once all exist."""
    if not 0 <= shard < num_shards:
        raise UserError(f"--shard {shard}: must be in 0..{num_shards - 1} (--num-shards {num_shards})")
    run = _Run(job)
    if run.out.exists() and not run.out.is_dir():
        raise UserError(f"--out {run.out}: exists and is not a folder; choose a folder for the shards")
    total = run.base["num_shards"]
    mine = list(range(shard, total, num_shards))
    for k in mine:  # the clips this slot reads, checked before anything is written
        run.clips.shard_file(k)
    run.out.mkdir(parents=True, exist_ok=True)
    sizes = {k: run.clips.manifest["shards"][k]["num_clips"] for k in mine}
    with Progress(sum(sizes.values()), f"tokenize-video {len(mine)} shard(s)", unit="clip", enable=progress) as bar:
        written, kept, others, _ = make_shards(mine, lambda k: run.out / shard_name(k), run.state,
                                               lambda k: run.make(k, bar), sizes.get, bar)
    missing = [k for k in range(total) if not (run.out / shard_name(k)).exists()]
    manifest = str(finalize(run.out)) if not missing else None  # after our writes: the last writer sees all
    return {"shards_total": total, "shards_mine": len(mine), "written": written, "kept": kept, "others": others,
            "skipped": [], "missing": missing, "manifest": manifest, "grid": run.grid}


# ----------------------------------------------------------------------------- CLI

def cmd_tokenize_video(args) -> int:
    if args.finalize:
        if not args.out:
            raise UserError("--finalize needs --out DIR")
        print(f"wrote {finalize(args.out)}")
        return 0
    job = from_args(VideoTokenizeJob, args)
    shard, num = array_slot(args.shard, args.num_shards)
    s = tokenize_video(job, shard, num)
    report_slot(s, shard, num, args.summary, "clip")
    return 0


def register(sub):
    p = sub.add_parser("tokenize-video", help="video tokenizer codes of a clip folder as token shards + manifest",
                       description="Tokens (t×h×w) of every clip and its flip, in the `par tokenize` shard format. "
                                   "Resumable; runs as a Slurm job array (--shard/--num-shards default to the array "
                                   "task's index and count).")
    add_arguments(p, VideoTokenizeJob)
    add_slot_arguments(p)
    p.set_defaults(func=cmd_tokenize_video)
