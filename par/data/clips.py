"""The clip folder format of `par prepare-video` (`par.data.video`), its resumable sharded writer and its reader.

Every video source (Moving Fashion-MNIST, UCF-101) is brought to this one layout, so the video tokenizer and
everything after it read one format:

* ``clips-{k:05d}.npz``: items ``[k·S, (k+1)·S)`` of the source's item list (S = shard size), written
  atomically and deterministically (same clips → same bytes) as an uncompressed zip, so single clips can be
  read at an offset. Members: ``clips`` (n, T, H, W, 3) uint8 RGB, ``labels`` (n,) int64, ``names`` (n,)
  str (the item each clip came from) and ``meta`` (0-d str, JSON: the run's settings, the shard's range, its
  per-class counts and the items skipped in it, each with the reason).
* ``manifest.json``: rebuilt from the shards' metadata once every shard exists (so concurrent writers agree):
  frames, fps, size, num_classes, class_names, counts, skipped items with reasons, and each shard's size and
  sha256 (recorded in ``clips-{k:05d}.npz.sha256`` when the shard was written; `VideoClips` checks every shard it
  reads against it, `prepare_clips` makes a shard that no longer matches it again).

`prepare_clips` handles the shards k ≡ `shard` (mod `num_shards`), keeps shards that are complete and were
written with the same settings, and claims each shard before making it (`par.io.try_claim`), as `par
tokenize` does, so runs can be killed, resumed and spread over a Slurm array. A source is any object with
``name``, ``class_names``, ``items`` (a list of (name, label)), ``settings()`` (the JSON-able dict that
identifies its clips, with at least frames, fps and size) and ``clip(i)`` → uint8 (T, H, W, 3), raising
`SkipItem` for an item that gives no clip. `VideoClips` reads a finished folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from par.data.shards import ZIP_DATE, _array_headers, _npy_bytes
from par.errors import UserError
from par.io import atomic_path, file_digest, make_shards, shard_state, verify, write_manifest
from par.progress import Progress

FORMAT = "par-video-clips"
VERSION = 1
MANIFEST = "manifest.json"
KEYS = ("clips", "labels", "names", "meta")


def shard_name(k: int) -> str:
    return f"clips-{k:05d}.npz"


class SkipItem(Exception):
    """An item that gives no clip (unreadable, too short, missing); its message is the reason recorded."""


# ----------------------------------------------------------------------------- shard files

def write_clips(path, clips: np.ndarray, labels, names, meta: dict) -> None:
    """Atomically write one shard: an uncompressed zip with fixed member order and dates (same content →
    same bytes; `np.load` reads it)."""
    arrays = {"clips": clips, "labels": np.asarray(labels, np.int64), "names": np.asarray(names, dtype=str),
              "meta": np.array(json.dumps(meta, sort_keys=True))}
    with atomic_path(path, needed=clips.nbytes, digest=True) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key in KEYS:
                info = zipfile.ZipInfo(key + ".npy", date_time=ZIP_DATE)
                info.external_attr = 0o644 << 16
                zf.writestr(info, _npy_bytes(arrays[key]))


def read_meta(path) -> dict:
    """A shard's meta plus its arrays' headers (``_arrays``: offset, shape, dtype); reads no clips."""
    with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        missing = [k for k in KEYS if k + ".npy" not in zf.namelist()]
        if missing:
            raise ValueError(f"missing member(s) {missing}")
        meta = json.loads(np.load(io.BytesIO(zf.read("meta.npy")), allow_pickle=False).item())
        meta["_arrays"] = _array_headers(f, zf, KEYS[:3])
    return meta


def _problem(meta: dict, expect: dict) -> str | None:
    """None if a shard's meta and arrays fit `expect` (this run's settings for it), else why not."""
    for k, v in expect.items():
        if meta.get(k) != v:
            return f"{k} is {meta.get(k)!r}, this run has {v!r}"
    a, s = meta["_arrays"], meta["settings"]
    n = meta["stop"] - meta["start"] - len(meta["skipped"])
    if a["clips"]["shape"] != [n, s["frames"], s["size"], s["size"], 3] or np.dtype(a["clips"]["dtype"]) != np.uint8:
        return f"clips {a['clips']['shape']} {a['clips']['dtype']} are not {n} uint8 clips"
    if a["labels"]["shape"] != [n] or a["names"]["shape"] != [n]:
        return "labels/names length does not match the clips"
    return None


# ----------------------------------------------------------------------------- making shards

@dataclass
class _Run:
    source: object
    out: Path
    shard_size: int

    @property
    def num_shards(self) -> int:
        return math.ceil(len(self.source.items) / self.shard_size)

    def shard_range(self, k: int) -> tuple[int, int]:
        return k * self.shard_size, min((k + 1) * self.shard_size, len(self.source.items))

    def shard_len(self, k: int) -> int:
        return self.shard_range(k)[1] - self.shard_range(k)[0]

    def expect(self, k: int) -> dict:
        start, stop = self.shard_range(k)
        digest = hashlib.sha256("".join(f"{n}\t{y}\n" for n, y in self.source.items[start:stop]).encode())
        return {"format": FORMAT, "version": VERSION, "source": self.source.name, "settings": self.source.settings(),
                "class_names": list(self.source.class_names), "shard_size": self.shard_size,
                "num_items": len(self.source.items), "num_shards": self.num_shards, "shard": k, "start": start,
                "stop": stop, "items_sha256": digest.hexdigest()}

    def state(self, k: int) -> str:
        """"missing", "unreadable" or "complete"; UserError if another run's settings wrote it."""
        return shard_state(self.out / shard_name(k), read_meta, lambda m: _problem(m, self.expect(k)), "prepare-video")


_WORKER_SOURCE = None


def _init_worker(source) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _item(i: int, source=None):
    """(i, clip | None, skip reason | None): one item, in this process or in a pool worker."""
    try:
        return i, (source or _WORKER_SOURCE).clip(i), None
    except SkipItem as e:
        return i, None, str(e)


def _make_shard(run: _Run, k: int, mapper, bar) -> list[dict]:
    """Make and write shard k; returns the items skipped in it."""
    src = run.source
    start, stop = run.shard_range(k)
    clips, labels, names, skipped = [], [], [], []
    for i, clip, reason in mapper(range(start, stop)):
        name, label = src.items[i]
        if clip is None:
            skipped.append({"index": i, "name": name, "label": label, "reason": reason})
        else:
            clips.append(clip)
            labels.append(label)
            names.append(name)
        bar.update(1)
    s = src.settings()
    data = np.stack(clips) if clips else np.zeros((0, s["frames"], s["size"], s["size"], 3), np.uint8)
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(src.class_names)).tolist()
    write_clips(run.out / shard_name(k), data, labels, names,
                {**run.expect(k), "class_counts": counts, "skipped": skipped})
    return skipped


def _mapper(source, workers: int):
    """(map over item indices, closer): in this process, or in a pool whose workers hold the source once."""
    if workers <= 0:
        return (lambda idx: (_item(i, source) for i in idx)), (lambda: None)
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(source,))
    return (lambda idx: pool.map(_item, idx, chunksize=2)), (lambda: pool.shutdown(cancel_futures=True))


def prepare_clips(source, out, *, shard_size: int = 256, shard: int = 0, num_shards: int = 1, workers: int = 0,
                  progress: bool = True) -> dict:
    """Write the clips of `source` under `out`: the shards k ≡ `shard` (mod `num_shards`) that are not complete
    yet (others' claimed shards are left to them), then the manifest if every shard exists. Returns a summary."""
    run = _Run(source, Path(out), shard_size)
    if not source.items:
        raise UserError(f"{source.name}: no items to make clips of; check the source settings")
    if not 0 <= shard < num_shards:
        raise UserError(f"--shard {shard}: must be in 0..{num_shards - 1} (--num-shards {num_shards})")
    if run.out.exists() and not run.out.is_dir():
        raise UserError(f"--out {run.out}: exists and is not a folder; choose a folder for the clips")
    run.out.mkdir(parents=True, exist_ok=True)
    mine = list(range(shard, run.num_shards, num_shards))
    mapper, close = _mapper(source, workers)
    try:
        with Progress(sum(run.shard_len(k) for k in mine), f"prepare-video {source.name}",
                      unit="clip", enable=progress) as bar:
            written, kept, others, made = make_shards(mine, lambda k: run.out / shard_name(k), run.state,
                                                      lambda k: _make_shard(run, k, mapper, bar), run.shard_len, bar)
    finally:
        close()
    skipped = [item for items in made for item in items]
    missing = [k for k in range(run.num_shards) if not (run.out / shard_name(k)).exists()]
    manifest = str(finalize(run.out)) if not missing else None  # after our writes: the last writer sees all
    return {"shards_total": run.num_shards, "shards_mine": len(mine), "written": written, "kept": kept,
            "others": others, "skipped": skipped, "missing": missing, "manifest": manifest}


# ----------------------------------------------------------------------------- manifest

_COMMON = ("format", "version", "source", "settings", "class_names", "shard_size", "num_items", "num_shards")


def build_manifest(out) -> dict:
    """The manifest of a complete clip folder, from the shards' own metadata (deterministic)."""
    out = Path(out)
    files = sorted(out.glob("clips-*.npz"))
    if not files:
        raise UserError(f"--out {out}: no clips-*.npz files; run `par prepare-video` first")
    metas = []
    for p in files:
        try:
            metas.append(read_meta(p))
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{p}: unreadable shard ({type(e).__name__}: {e}); delete it and re-run "
                            "`par prepare-video`") from None
    m0, total = metas[0], metas[0]["num_shards"]
    if [p.name for p in files] != [shard_name(k) for k in range(total)]:
        have = {p.name for p in files}
        missing = [shard_name(k) for k in range(total) if shard_name(k) not in have]
        raise UserError(f"--out {out}: shards of a {total}-shard run expected; missing {missing[:3]}, extra "
                        f"{sorted(have - {shard_name(k) for k in range(total)})[:3]}; run the remaining slots "
                        "(or remove strays)")
    shards, skipped, counts = [], [], np.zeros(len(m0["class_names"]), np.int64)
    for k, (p, meta) in enumerate(zip(files, metas)):
        why = _problem(meta, {**{f: m0[f] for f in _COMMON}, "shard": k})
        if why:
            raise UserError(f"{p}: does not belong with {files[0].name} ({why}); delete the strays and re-run")
        c = meta["_arrays"]["clips"]
        shards.append({"file": p.name, "start": meta["start"], "stop": meta["stop"], "num_clips": c["shape"][0],
                       "bytes": p.stat().st_size, "sha256": file_digest(p), "clips_offset": c["offset"]})
        skipped += meta["skipped"]
        counts += meta["class_counts"]
    s = m0["settings"]
    return {"format": FORMAT, "version": VERSION, "source": m0["source"], "settings": s,
            "frames": s["frames"], "fps": s["fps"], "size": s["size"],
            "num_classes": len(m0["class_names"]), "class_names": m0["class_names"],
            "counts": {"items": m0["num_items"], "clips": int(counts.sum()), "skipped": len(skipped),
                       "per_class": counts.tolist()},
            "skipped": skipped, "shard_size": m0["shard_size"], "num_shards": total, "shards": shards}


def finalize(out) -> Path:
    """(Re)write ``out/manifest.json`` from the shards; writers take turns (a claim on the manifest)."""
    return write_manifest(Path(out) / MANIFEST, build_manifest(out))


# ----------------------------------------------------------------------------- reading

class VideoClips:
    """A finished clip folder: ``manifest``, ``len()``, ``clip(i)`` → (uint8 (T, H, W, 3), label), read at its
    offset without loading the shard, and ``load()`` → all (clips, labels, names) in memory."""

    def __init__(self, dir):
        self.dir = Path(dir)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise UserError(f"{path}: missing; run `par prepare-video` to completion on every shard")
        m = self.manifest = json.loads(path.read_text())
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            raise UserError(f"{path}: format {m.get('format')!r} v{m.get('version')}, expected {FORMAT!r} v{VERSION}")
        for s in m["shards"]:
            p = self.dir / s["file"]
            if not p.is_file() or p.stat().st_size != s["bytes"]:
                raise UserError(f"{p}: missing or changed since the manifest; re-run `par prepare-video`")
        self.shape = (m["frames"], m["size"], m["size"], 3)
        self._ends = np.cumsum([s["num_clips"] for s in m["shards"]])
        self._labels = None
        self._intact = set()  # shards whose content this process has checked (`shard_file`)

    def shard_file(self, k: int) -> Path:
        """Shard k's file, its content checked (once per process, when first read) against the sha256 the manifest
        records for it (a manifest from before digests: unchecked)."""
        s, p = self.manifest["shards"][k], self.dir / self.manifest["shards"][k]["file"]
        if k not in self._intact:
            verify(p, "re-run `par prepare-video` with the same settings: it makes damaged shards again",
                   s.get("sha256"), MANIFEST)
            self._intact.add(k)
        return p

    def verify(self) -> "VideoClips":
        """Check every shard's content now (before a long computation that would read them all)."""
        for k in range(len(self.manifest["shards"])):
            self.shard_file(k)
        return self

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} out of range for {len(self)} clips")
        k = int(np.searchsorted(self._ends, i, side="right"))
        return k, i - (int(self._ends[k - 1]) if k else 0)

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            parts = []
            for k in range(len(self.manifest["shards"])):
                with np.load(self.shard_file(k)) as z:
                    parts.append(z["labels"])
            self._labels = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return self._labels

    def clip(self, i: int) -> tuple[np.ndarray, int]:
        k, j = self.locate(i)
        s, n = self.manifest["shards"][k], int(np.prod(self.shape))
        with open(self.shard_file(k), "rb") as f:
            f.seek(s["clips_offset"] + j * n)
            buf = f.read(n)
        if len(buf) != n:
            raise UserError(f"{self.dir / s['file']}: truncated; re-run `par prepare-video` for it")
        return np.frombuffer(buf, np.uint8).reshape(self.shape), int(self.labels[i])

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        clips, labels, names = [], [], []
        for k in range(len(self.manifest["shards"])):
            with np.load(self.shard_file(k)) as z:
                clips.append(z["clips"])
                labels.append(z["labels"])
                names.append(z["names"])
        return np.concatenate(clips), np.concatenate(labels), np.concatenate(names)
