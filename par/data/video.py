"""`par prepare-video`: fixed-length RGB clips from a video source, as a `par.data.clips` folder.

Class-conditional video PAR (issue #16) trains on short clips: UCF-101 in the paper (17 frames at 8 fps,
128×128, `par.data.ucf101`), Moving Fashion-MNIST offline for the CPU presets (`par.data.movingmnist`). This
module holds the settings, picks the source and runs one slot: a process handles the shards k ≡ ``--shard``
(mod ``--num-shards``; by default a Slurm array task's index and count, `par.cluster.array_task`); the last
one to finish writes the manifest (or ``--finalize`` does).
"""

from __future__ import annotations

import json

from par.cluster import add_slot_arguments, array_slot, report_slot
from par.config import VIDEO_SOURCES as SOURCES, PrepareVideoJob, VideoSettings, add_arguments, from_args
from par.data.clips import MANIFEST, finalize, prepare_clips
from par.errors import UserError

def make_source(job: VideoSettings, split: str):
    """The source object `job` describes, every input checked (before anything is written)."""
    if job.source == "moving-mnist":
        from par.data.movingmnist import MovingMNIST

        return MovingMNIST(job.idx_dir, split, frames=job.frames, size=job.size or 64, items=job.items,
                           speed=job.speed, num_videos=job.num_videos, seed=job.seed, fps=job.fps,
                           item_size=job.item_size)
    if job.source == "ucf101":
        from par.data.ucf101 import UCF101

        return UCF101(job.root, split, lists=job.lists, split_index=job.split_index, frames=job.frames,
                      fps=job.fps, size=job.size or 128, num_videos=job.num_videos, seed=job.seed)
    raise UserError(f"--source {job.source!r}: use one of {', '.join(SOURCES)}")


# ----------------------------------------------------------------------------- CLI

def cmd_prepare_video(args) -> int:
    job = from_args(PrepareVideoJob, args)
    if args.finalize:
        m = json.loads(finalize(job.out).read_text())
        print(f"wrote {job.out}/{MANIFEST}: {m['counts']['clips']} clips in {m['num_shards']} shards, "
              f"{m['counts']['skipped']} skipped")
        return 0
    shard, num = array_slot(args.shard, args.num_shards)
    s = prepare_clips(make_source(job, job.split), job.out, shard_size=job.shard_size, shard=shard, num_shards=num,
                      workers=job.workers)
    report_slot(s, shard, num, args.summary, "item")
    return 0


def register(sub):
    p = sub.add_parser("prepare-video", help="fixed-length RGB clips (Moving Fashion-MNIST or UCF-101) as shards",
                       description="Clips of --frames frames at --fps, --size² RGB, into clips-*.npz + "
                                   "manifest.json. Resumable; runs as a Slurm job array (--shard/--num-shards "
                                   "default to the array task's index and count).")
    add_arguments(p, PrepareVideoJob)
    add_slot_arguments(p)
    p.set_defaults(func=cmd_prepare_video)
