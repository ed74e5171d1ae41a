"""All codes of a `par tokenize` directory as one memory-mapped array, for training.

Every rank of a training job reads random rows of every shard. Loaded into memory, the ten-crop ImageNet codes
(14.7 GB of int16) would be copied once per rank: 8 copies a node. Memory-mapped, the ranks of a node share the
kernel's one page-cache copy, and a rank's own memory holds only the rows of its current batch.

`packed(dir)` writes `<dir>/packed/{codes,labels}.npy` once (plain `.npy`, so `np.load(mmap_mode="r")` maps them
with no parsing of ours), streaming shard by shard (each checked as `TokenShards` reads it), and returns read-only
maps. `packed/source.json` records the manifest it was made from: a re-tokenized directory is packed again. Ranks
that start together take turns on a claim; the first packs, the others map its files.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from par import io
from par.data.shards import codes_dtype

FOLDER = "packed"


def _source_id(shards) -> str:
    return hashlib.sha256((shards.dir / "manifest.json").read_bytes()).hexdigest()


def _is_current(folder: Path, source: str, quiet: bool = False) -> bool:
    """Packed from this manifest, and both arrays match the sha256 recorded when they were written (a cache: a
    damaged one, or one packed before digests, is packed again)."""
    meta = folder / "source.json"
    if not (meta.exists() and json.loads(meta.read_text()).get("manifest_sha256") == source):
        return False
    for p in (folder / "codes.npy", folder / "labels.npy"):
        ok = p.exists() and io.check_digest(p)
        if not ok:
            if not quiet:
                why = "no sha256 recorded" if ok is None else "differs from the sha256 recorded when it was written"
                print(f"par: {p}: {why}; packing it again from the shards", file=sys.stderr)
            return False
    return True


def _write(shards, folder: Path) -> None:
    """Stream every shard into `codes.npy` / `labels.npy` (temp names, renamed when complete)."""
    n = len(shards)
    shape = (n, shards.num_crops, int(np.prod(shards.grid)))
    folder.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(folder / "codes.npy", needed=int(np.prod(shape)) * 2, digest=True) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=codes_dtype(shards.codebook_size), shape=shape)
        labels, at = np.empty(n, np.int64), 0
        for k, s in enumerate(shards.shards):
            with np.load(shards.shard_file(k)) as z:
                codes = shards._checked_codes(k, z["codes"])
                out[at:at + len(codes)] = codes
                labels[at:at + len(codes)] = shards._checked_labels(k, z["labels"])
            at += len(codes)
        out.flush()
        del out
    with io.atomic_path(folder / "labels.npy", digest=True) as tmp, open(tmp, "wb") as f:
        np.save(f, labels, allow_pickle=False)


def packed(data_dir) -> tuple[np.ndarray, np.ndarray, object]:
    """(codes (N, crops, h·w) int16 read-only memmap, labels (N,) int64, the `TokenShards` reader)."""
    from par.data.shards import TokenShards

    shards = TokenShards(data_dir)
    folder, source = shards.dir / FOLDER, _source_id(shards)
    if not _is_current(folder, source):
        held = io.try_claim(folder / "codes.npy", blocking=True)  # ranks take turns: the first one packs
        try:
            if not _is_current(folder, source, quiet=True):
                io.remove_stale_temps(folder / "codes.npy")
                _write(shards, folder)
                io.write_json(folder / "source.json", {"manifest_sha256": source, "num_images": len(shards)})
        finally:
            held.release()
    codes = np.load(folder / "codes.npy", mmap_mode="r")
    return codes, np.load(folder / "labels.npy"), shards
