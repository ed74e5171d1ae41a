"""The token-shard format of `par tokenize`, and the one reader of it (training, entropy analysis, datasets).

A token directory holds:

* ``shard-{k:05d}.npz``: images ``[k·S, (k+1)·S)`` of the sorted ImageFolder list (S = shard size), an
  uncompressed zip written deterministically (fixed member order and timestamps: same input → same bytes)
  and atomically. Members: ``codes`` (n, crops, h·w) int16, ``labels`` (n,) int64, ``indices`` (n,) int64
  (ImageFolder index of each image) and ``meta``, a 0-d str array holding JSON: the shard's range, the
  run's settings and the images skipped in it, with reasons.
* ``manifest.json``: rebuilt from the shards' own metadata (so concurrent writers agree); it records,
  among others, ``grid``, ``codebook_size``, ``num_classes``, ``num_crops`` and ``crop_order`` (the name of
  each crop index; the centre crop is the one named ``"center"``) and each shard's size, sha256 and codes offset.
* ``shard-{k:05d}.npz.sha256``: the shard's sha256, recorded when it was written (`par.io.atomic_path`); the
  manifest copies it, `par tokenize` makes a shard that no longer matches it again.
* while a shard (or the manifest) is being made: ``<file>.lock``, the writer's claim on it (`claim`); the
  kernel drops the lock when its holder dies, so the next worker takes the claim over.

`TokenShards` reads such a directory (all codes in memory, one crop of them, or single items straight from
the files); `TokenDataset` is the map-style torch dataset over it (one crop drawn per item, paper §8.2);
`read_crop_codes` reads one crop of it, or of a codes file (`par entropy features`, paper §8).
The reader trusts no shard: before anything is read it checks each file's arrays against the manifest (codes
dtype, images × crops × h·w, labels), and each shard it loads for its sha256 (the manifest's record: a flipped bit
is named, not trained on), codes in 0..codebook_size−1 and labels in 0..num_classes−1; a mismatch is one
`UserError` naming the file.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np

from par.data.crops import crop_size
from par.errors import UserError
from par.io import atomic_path, file_digest, load_npz, verify, write_manifest

FORMAT = "par-token-shards"
VERSION = 1
NUM_CROPS = 10
CENTRE = "center"  # the name of the centre crop in a crop order
# torchvision TenCrop: four corners and the centre, then the same five of the horizontal flip (format v1)
CROP_ORDER = [f"{flip}{pos}" for flip in ("", "hflip-") for pos in
              ("top-left", "top-right", "bottom-left", "bottom-right", CENTRE)]
SHARD_KEYS = ("codes", "labels", "indices", "meta")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamp: shard bytes depend on content only
MANIFEST = "manifest.json"
CODES_DTYPE = np.dtype(np.int16)  # the codes dtype `par tokenize` writes


def codes_dtype(codebook_size: int) -> np.dtype:
    """The dtype shards store codes in: int16, or uint16 past 2^15 codes (a 16-bit LFQ video tokenizer)."""
    if codebook_size > 1 << 16:
        raise UserError(f"a vocabulary of {codebook_size} codes does not fit the 16-bit shard format")
    return np.dtype(np.uint16) if codebook_size > 1 << 15 else CODES_DTYPE


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


# ----------------------------------------------------------------------------- crop order


def default_crop_order(num_crops: int) -> list[str]:
    """The crop order of files that do not record one: format v1's ten crops, else anonymous crops."""
    return list(CROP_ORDER) if num_crops == NUM_CROPS else [f"crop-{i}" for i in range(num_crops)]


def crop_order_of(meta: dict, num_crops: int, source) -> list[str]:
    """The crop order a manifest or shard `meta` (read from `source`) records; format v1 files without one:
    `default_crop_order`."""
    order = meta.get("crop_order") or default_crop_order(num_crops)
    if len(order) != num_crops:
        raise UserError(f"{source}: crop_order {order} names {len(order)} crops, but the codes have {num_crops}; "
                        "re-run `par tokenize --finalize --out DIR`")
    return list(order)


def centre_crop_index(crop_order: list[str]) -> int | None:
    """Index of the centre crop in `crop_order`, None if it has none."""
    return crop_order.index(CENTRE) if CENTRE in crop_order else None


# ----------------------------------------------------------------------------- claims


# ----------------------------------------------------------------------------- writing


def _npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    arr = np.asarray(arr)
    np.lib.format.write_array(buf, arr if arr.flags.c_contiguous else np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def write_shard(path, codes, labels, indices, meta: dict) -> None:
    """Atomically write a shard as an uncompressed zip with fixed member order, dates and modes
    (same content → same bytes; readable with `np.load`)."""
    arrays = {"codes": codes, "labels": np.asarray(labels, np.int64), "indices": np.asarray(indices, np.int64),
              "meta": np.array(json.dumps(meta, sort_keys=True))}
    with atomic_path(path, digest=True) as tmp:  # the umask's permissions: shards are shared data
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key in SHARD_KEYS:
                info = zipfile.ZipInfo(key + ".npy", date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                zf.writestr(info, _npy_bytes(arrays[key]))


# ----------------------------------------------------------------------------- shard headers


def _member_header(f, zf: zipfile.ZipFile, key: str):
    """(data offset in the file, shape, dtype) of an uncompressed .npy member, read from its headers only."""
    info = zf.getinfo(key + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"member {key}.npy is compressed")
    f.seek(info.header_offset)
    local = f.read(30)
    if local[:4] != b"PK\x03\x04":
        raise ValueError(f"bad local header for {key}.npy")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"unsupported .npy version {version} in {key}.npy")
    shape, fortran, dtype = read(f)
    if fortran or dtype.hasobject:
        raise ValueError(f"{key}.npy is not a C-ordered plain array")
    offset = f.tell()
    if offset + int(np.prod(shape)) * dtype.itemsize > info.header_offset + 30 + name_len + extra_len + info.file_size:
        raise ValueError(f"{key}.npy is shorter than its header says")
    return offset, tuple(shape), dtype


def _array_headers(f, zf: zipfile.ZipFile, keys) -> dict:
    heads = {k: _member_header(f, zf, k) for k in keys}
    return {k: {"offset": off, "shape": list(shape), "dtype": dtype.str} for k, (off, shape, dtype) in heads.items()}


def read_shard_meta(path) -> dict:
    """The shard's `meta` JSON plus the shapes/dtypes of its arrays (headers only; raises ValueError,
    OSError or zipfile.BadZipFile on an incomplete or foreign file)."""
    with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        names = set(zf.namelist())
        missing = [k for k in SHARD_KEYS if k + ".npy" not in names]
        if missing:
            raise ValueError(f"missing member(s) {missing}")
        meta = json.loads(np.load(io.BytesIO(zf.read("meta.npy")), allow_pickle=False).item())
        meta["_arrays"] = _array_headers(f, zf, ("codes", "labels", "indices"))
    return meta


def check_shard(meta: dict, expect: dict, grid_len: int) -> str | None:
    """None if a shard's meta/arrays are consistent with `expect` (the run's settings), else why not."""
    for k, v in expect.items():
        if meta.get(k) != v:
            return f"{k} is {meta.get(k)!r}, this run has {v!r}"
    arrays = meta["_arrays"]
    n = meta["stop"] - meta["start"] - len(meta["skipped"])
    crops = len(meta.get("crop_order") or CROP_ORDER)
    if arrays["codes"]["shape"] != [n, crops, grid_len]:
        return f"codes shape {arrays['codes']['shape']} != {[n, crops, grid_len]}"
    want = codes_dtype(meta.get("codebook_size", 0))
    if np.dtype(arrays["codes"]["dtype"]) != want:
        return f"codes dtype {np.dtype(arrays['codes']['dtype'])} != {want}"
    if arrays["labels"]["shape"] != [n] or arrays["indices"]["shape"] != [n]:
        return "labels/indices length does not match codes"
    return None


# ----------------------------------------------------------------------------- manifest

_COMMON = ("format", "version", "image_size", "crop_range", "shard_size", "num_files", "num_shards",
           "tokenizer_sha256", "class_names", "grid", "codebook_size", "crop_order")


def _shard_meta_or_error(path: Path) -> dict:
    try:
        return read_shard_meta(path)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: unreadable shard ({type(e).__name__}: {e}); delete it and re-run "
                        "`par tokenize`") from None


def _check_shard_files(out: Path, first: list[Path], total: int) -> None:
    missing = [k for k in range(total) if not (out / shard_name(k)).exists()]
    if missing:
        raise UserError(f"--out {out}: {len(missing)} of {total} shards missing (e.g. {shard_name(missing[0])}); "
                        "run the remaining `par tokenize` shards first")
    extra = sorted({p.name for p in first} - {shard_name(k) for k in range(total)})
    if extra:
        raise UserError(f"--out {out}: unexpected shard file(s) {extra[:3]} for a {total}-shard run; "
                        "remove them (left over from a different run?)")


def _shard_entries(out: Path, meta0: dict, first_name: str) -> tuple[list[dict], list[dict]]:
    """(per-shard manifest entries, skipped images) of all shards, each checked against shard 0's settings."""
    shards, skipped = [], []
    for k in range(meta0["num_shards"]):
        path = out / shard_name(k)
        meta = _shard_meta_or_error(path)
        diff = [f for f in _COMMON if meta.get(f) != meta0.get(f)]
        why = check_shard(meta, {"shard": k, **{f: meta0.get(f) for f in _COMMON}}, int(np.prod(meta0["grid"])))
        if diff or why:
            raise UserError(f"{path}: does not belong with {first_name} ({why or 'differs in ' + ', '.join(diff)}); "
                            "delete the stray shards and re-run `par tokenize`")
        c = meta["_arrays"]["codes"]
        shards.append({"file": path.name, "start": meta["start"], "stop": meta["stop"], "num_images": c["shape"][0],
                       "bytes": path.stat().st_size, "sha256": file_digest(path), "codes_offset": c["offset"],
                       "codes_dtype": c["dtype"]})
        skipped += meta["skipped"]
    return shards, skipped


def build_manifest(out) -> dict:
    """The manifest of a complete shard directory, rebuilt from the shards' own metadata (deterministic)."""
    out = Path(out)
    first = sorted(out.glob("shard-*.npz"))
    if not first:
        raise UserError(f"--out {out}: no shard-*.npz files; run `par tokenize` first")
    meta0 = _shard_meta_or_error(first[0])
    total = meta0["num_shards"]
    _check_shard_files(out, first, total)
    shards, skipped = _shard_entries(out, meta0, first[0].name)
    return {
        "format": FORMAT, "version": VERSION,
        "source_root": meta0["source_root"],
        "tokenizer": {"checkpoint": meta0["tokenizer"], "sha256": meta0["tokenizer_sha256"]},
        "image_size": meta0["image_size"], "crop_range": meta0["crop_range"],
        "crop_size": crop_size(meta0["image_size"], meta0["crop_range"]),
        # video shards (`par tokenize-video`) record their own crops (a clip and its flip) and, past 2^15 codes,
        # unsigned codes; image shards are format v1's ten crops of int16
        "num_crops": len(meta0.get("crop_order") or CROP_ORDER), "crop_order": meta0.get("crop_order") or CROP_ORDER,
        "grid": meta0["grid"], "codebook_size": meta0["codebook_size"],
        "codes_dtype": np.dtype(shards[0]["codes_dtype"]).name if shards else "int16",
        "num_classes": len(meta0["class_names"]), "class_names": meta0["class_names"],
        "num_files": meta0["num_files"], "num_images": sum(s["num_images"] for s in shards),
        "num_skipped": len(skipped), "skipped": skipped,
        "shard_size": meta0["shard_size"], "num_shards": total, "shards": shards,
    } | ({"video": meta0["video"]} if "video" in meta0 else {})


def finalize(out) -> Path:
    """(Re)write DIR/manifest.json atomically from the shards; UserError if any shard is missing. Writers
    take turns (a claim on the manifest), each first removing temp files a killed writer left."""
    return write_manifest(Path(out) / MANIFEST, build_manifest(out))


# ----------------------------------------------------------------------------- the reader


def _read_manifest(d: Path) -> dict:
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise UserError(f"{mpath}: missing; run `par tokenize` to completion on all shards "
                        "(or `par tokenize --finalize --out DIR`)")
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{mpath}: not valid JSON ({e}); re-run `par tokenize --finalize --out DIR`") from None
    if "format" in m and (m.get("format") != FORMAT or m.get("version") != VERSION):
        raise UserError(f"{mpath}: format {m.get('format')!r} v{m.get('version')}, expected {FORMAT!r} "
                        f"v{VERSION}; re-tokenize with this version of `par tokenize`")
    missing = [k for k in ("grid", "codebook_size", "num_classes") if k not in m]
    if missing:
        raise UserError(f"{mpath}: no {', '.join(missing)}; re-run `par tokenize --finalize --out DIR`")
    return m


def _checked_shards(d: Path, m: dict) -> list[dict]:
    """The manifest's shard list, each file checked to exist with the recorded size."""
    for s in m["shards"]:
        p = d / s["file"]
        if not p.is_file():
            raise UserError(f"{p}: missing (listed in {MANIFEST}); re-run `par tokenize` for it")
        if p.stat().st_size != s["bytes"]:
            raise UserError(f"{p}: {p.stat().st_size} bytes, manifest says {s['bytes']}; shards changed "
                            "after the manifest: re-run `par tokenize --finalize --out DIR`")
    return m["shards"]


def _shard_headers(p: Path) -> dict:
    """{"codes", "labels"} → {"offset", "shape", "dtype"} of a shard file's arrays (headers only)."""
    try:
        with open(p, "rb") as f, zipfile.ZipFile(f) as zf:
            return _array_headers(f, zf, ("codes", "labels"))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{p}: unreadable shard ({type(e).__name__}: {e}); re-run `par tokenize`") from None


def _scanned_shards(d: Path, m: dict) -> list[dict]:
    """Shard entries from the files' headers, for a hand-written manifest without a shard list."""
    files = sorted(d.glob("shard-*.npz"))
    if len(files) != m.get("num_shards"):
        raise UserError(f"{d}: {len(files)} shards on disk, manifest says {m.get('num_shards')}; "
                        "re-run `par tokenize` to complete it")
    shards = []
    for p in files:
        c = _shard_headers(p)["codes"]
        if len(c["shape"]) != 3:
            raise UserError(f"{p}: codes {tuple(c['shape'])} are not (images, crops, h·w); re-run `par tokenize`")
        shards.append({"file": p.name, "num_images": c["shape"][0], "num_crops": c["shape"][1],
                       "codes_offset": c["offset"], "codes_dtype": c["dtype"]})
    return shards


def _verified_shards(d: Path, m: dict, shards: list[dict], num_crops: int | None) -> tuple[list[dict], int]:
    """(shard entries, crops per image): every shard file's codes and labels headers checked against the
    manifest — integer codes of the manifest's dtype, (images, crops, h·w) with h·w from its grid and the
    number of images it lists, one integer label per image. Headers only: cheap. UserError names the file."""
    want = np.dtype(m["codes_dtype"]) if m.get("codes_dtype") else None
    grid = "×".join(str(g) for g in m["grid"])
    tokens = int(np.prod(m["grid"]))
    fix = "re-run `par tokenize` into a fresh --out (or delete this shard and re-run it)"
    out = []
    for s in shards:
        p = d / s["file"]
        heads = _shard_headers(p)
        c, lab = heads["codes"], heads["labels"]
        shape, dtype = tuple(c["shape"]), np.dtype(c["dtype"])
        if want is not None and dtype != want:
            raise UserError(f"{p}: codes are {dtype}, {MANIFEST} says {want}; {fix}")
        if dtype.kind not in "iu":
            raise UserError(f"{p}: codes are {dtype}, not integer code indices; {fix}")
        if len(shape) != 3:
            raise UserError(f"{p}: codes {shape} are not (images, crops, h·w); {fix}")
        if shape[2] != tokens:
            raise UserError(f"{p}: {shape[2]} codes per crop, but the grid {grid} in {MANIFEST} needs {tokens}; {fix}")
        num_crops = shape[1] if num_crops is None else num_crops
        if shape[1] != num_crops:
            raise UserError(f"{p}: {shape[1]} crops per image, {MANIFEST} says {num_crops}; {fix}")
        if "num_images" in s and shape[0] != s["num_images"]:
            raise UserError(f"{p}: {shape[0]} images, {MANIFEST} says {s['num_images']}; shards changed after the "
                            "manifest: re-run `par tokenize --finalize --out DIR`")
        if tuple(lab["shape"]) != shape[:1] or np.dtype(lab["dtype"]).kind not in "iu":
            raise UserError(f"{p}: labels {tuple(lab['shape'])} {np.dtype(lab['dtype'])} are not one integer class "
                            f"per image ({shape[0]} images); {fix}")
        out.append({**s, "num_images": shape[0], "codes_offset": c["offset"], "codes_dtype": c["dtype"]})
    return out, NUM_CROPS if num_crops is None else num_crops


def _max_unsigned(a: np.ndarray) -> int:
    """max(a) with negative integers counted as huge (one pass: the unsigned view of the same bits)."""
    if a.dtype.kind == "i":
        a = a.view(np.dtype(f"u{a.dtype.itemsize}"))
    return int(a.max())


def _check_range(p: Path, what: str, a: np.ndarray, limit: int, key: str, image: int | None = None) -> None:
    """UserError naming `p` (and the image: `image`, else a's first axis) unless every value of the integer
    array `a` is in 0..limit−1."""
    if a.size == 0 or _max_unsigned(a) < limit:
        return
    where = np.unravel_index(int(np.argmax((a < 0) | (a >= limit))), a.shape)
    image = int(where[0]) if image is None else image
    raise UserError(f"{p}: image {image} has {what} {int(a[where])}, outside 0..{limit - 1} "
                    f"({key} {limit} in {MANIFEST}); "
                    "the shard does not belong with this manifest (another VQ or class list?) or is damaged: "
                    "re-run `par tokenize` into a fresh --out")


class TokenShards:
    """The reader of a `par tokenize` directory: its settings and its codes and labels.

    Attributes: ``grid`` (h, w), ``codebook_size``, ``num_classes``, ``class_names``, ``num_crops``,
    ``crop_order`` (names of the crop indices) and ``centre_crop`` (the index of the crop named
    ``"center"`` in the recorded order; None if there is none). `load` reads codes into memory, `read_codes`
    one item straight from its shard. A hand-written manifest (grid, codebook_size, num_classes, num_shards)
    next to plain ``np.savez`` shards is accepted too; its crop order is format v1's.

    Opening checks every shard's headers against the manifest (`_verified_shards`); every shard read is
    checked for codes in 0..codebook_size−1 and labels in 0..num_classes−1 as it is loaded.
    """

    def __init__(self, dir):
        self.dir = Path(dir)
        m = self.manifest = _read_manifest(self.dir)
        shards = _checked_shards(self.dir, m) if "shards" in m else _scanned_shards(self.dir, m)
        self.shards, self.num_crops = _verified_shards(self.dir, m, shards,
                                                       int(m["num_crops"]) if "num_crops" in m else None)
        self.grid = tuple(m["grid"])
        self.codebook_size = int(m["codebook_size"])
        self.num_classes = int(m["num_classes"])
        self.class_names = list(m.get("class_names", []))
        self.crop_order = crop_order_of(m, self.num_crops, self.dir / MANIFEST)
        self.centre_crop = centre_crop_index(self.crop_order)
        self._tokens = int(np.prod(self.grid))
        self._ends = np.cumsum([s["num_images"] for s in self.shards])
        self._labels = {}  # shard → labels array (loaded on first use)
        self._intact = set()  # shards whose content this process has checked (`shard_file`)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getstate__(self):  # pickled into DataLoader workers: without the label cache
        return {**self.__dict__, "_labels": {}}

    def shard_file(self, k: int) -> Path:
        """Shard k's file, its content checked (once per process, when first read) against the sha256 the manifest
        records for it (else its `.sha256` sidecar; neither: unchecked, as before digests)."""
        s, p = self.shards[k], self.dir / self.shards[k]["file"]
        if k not in self._intact:
            cmd = "tokenize-video" if "video" in self.manifest else "tokenize"
            verify(p, f"re-run `par {cmd}` with the same settings: it makes damaged shards again", s.get("sha256"),
                   MANIFEST)
            self._intact.add(k)
        return p

    def check_crop(self, crop: int) -> int:
        if not (isinstance(crop, (int, np.integer)) and 0 <= crop < self.num_crops):
            raise UserError(f"crop={crop!r}: use a crop index 0..{self.num_crops - 1}")
        return int(crop)

    def _checked_codes(self, k: int, codes: np.ndarray, image: int | None = None) -> np.ndarray:
        _check_range(self.dir / self.shards[k]["file"], "code", codes, self.codebook_size, "codebook_size", image)
        return codes

    def _checked_labels(self, k: int, labels: np.ndarray) -> np.ndarray:
        _check_range(self.dir / self.shards[k]["file"], "label", labels, self.num_classes, "num_classes")
        return labels

    def load(self, crop: int | None = None, num: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(codes, labels) of the first `num` images (default: all) in memory: codes (n, crops, h·w) in the
        shards' dtype, or (n, h·w) of crop `crop`; labels (n,) int64. Only the shards needed are read, and
        each is checked (codes and labels in range) as it is read."""
        crop = None if crop is None else self.check_crop(crop)
        codes, labels, have = [], [], 0
        for k, s in enumerate(self.shards):  # int16 ImageNet codes are 14.7 GB in all
            if num is not None and have >= num:
                break
            with np.load(self.shard_file(k)) as z:
                c = self._checked_codes(k, z["codes"])
                codes.append(c if crop is None else c[:, crop])
                labels.append(self._checked_labels(k, z["labels"]))
            have += len(codes[-1])
        if not codes:
            shape = (0, self._tokens) if crop is not None else (0, self.num_crops, self._tokens)
            return np.zeros(shape, np.int16), np.zeros(0, np.int64)
        return np.concatenate(codes)[:num], np.concatenate(labels).astype(np.int64)[:num]

    def locate(self, i: int) -> tuple[int, int]:
        """(shard, index within the shard) of item i (negative i counts from the end)."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        k = int(np.searchsorted(self._ends, i, side="right"))
        return k, i - (int(self._ends[k - 1]) if k else 0)

    def shard_labels(self, k: int) -> np.ndarray:
        if k not in self._labels:
            with np.load(self.shard_file(k)) as z:
                self._labels[k] = self._checked_labels(k, z["labels"])
        return self._labels[k]

    @property
    def labels(self) -> np.ndarray:
        """All labels in item order (int64)."""
        parts = [self.shard_labels(k) for k in range(len(self.shards))]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def read_codes(self, i: int, crop: int) -> np.ndarray:
        """Codes of item i, crop `crop`: (h·w,) in the shard's dtype, read without loading the shard."""
        k, j = self.locate(i)
        s = self.shards[k]
        dtype = np.dtype(s["codes_dtype"])
        n = self._tokens
        with open(self.shard_file(k), "rb") as f:
            f.seek(s["codes_offset"] + (j * self.num_crops + crop) * n * dtype.itemsize)
            buf = f.read(n * dtype.itemsize)
        if len(buf) != n * dtype.itemsize:
            raise UserError(f"{self.dir / s['file']}: truncated; re-run `par tokenize` for this shard")
        return self._checked_codes(k, np.frombuffer(buf, dtype), image=j)


class TokenDataset:
    """Map-style dataset over a `par tokenize` directory: item i → (codes (h·w,) int64 raster, label int64).

    ``crop="random"`` draws one of the crops uniformly at every access (paper §8.2); an int fixes the crop.
    With ``seed=None`` the draw uses torch's global RNG (which DataLoader seeds per worker, like the
    reference); with a seed, a private generator seeded from (seed, DataLoader worker seed) — reproducible in
    the main process, distinct across workers. Codes are read straight from the shard files (a few hundred
    bytes per item, no file handles held), so any number of workers can share one instance.
    Usable with `torch.utils.data.DataLoader` (it is a plain map-style dataset).
    """

    def __init__(self, dir, crop: str | int = "random", seed: int | None = None):
        import torch

        self._torch = torch
        self.shards = TokenShards(dir)
        self.dir, self.manifest, self.grid = self.shards.dir, self.shards.manifest, self.shards.grid
        self.num_classes, self.codebook_size = self.shards.num_classes, self.shards.codebook_size
        self.class_names, self.num_crops = self.shards.class_names, self.shards.num_crops
        if crop != "random" and not (isinstance(crop, (int, np.integer)) and 0 <= crop < self.num_crops):
            raise UserError(f"crop={crop!r}: use 'random' or a crop index 0..{self.num_crops - 1}")
        self.crop, self.seed = crop, seed
        self._rng, self._rng_key = None, None

    def __len__(self) -> int:
        return len(self.shards)

    def __getstate__(self):  # for spawn-started workers: drop the generator and the module handle
        return {**self.__dict__, "_torch": None, "_rng": None, "_rng_key": None}

    def __setstate__(self, d):
        import torch

        self.__dict__.update(d, _torch=torch)

    @property
    def labels(self) -> np.ndarray:
        """All labels in item order (int64)."""
        return self.shards.labels

    def _draw_crop(self) -> int:
        if self.crop != "random":
            return int(self.crop)
        if self.seed is None:
            return int(self._torch.randint(self.num_crops, (1,)).item())
        info = self._torch.utils.data.get_worker_info()
        key = None if info is None else (info.id, info.seed)
        if self._rng is None or key != self._rng_key:
            self._rng = np.random.default_rng([self.seed] if info is None else [self.seed, info.seed])
            self._rng_key = key
        return int(self._rng.integers(self.num_crops))

    def __getitem__(self, i):
        torch = self._torch
        crop = self._draw_crop()
        codes = self.shards.read_codes(int(i), crop)
        k, j = self.shards.locate(int(i))
        label = self.shards.shard_labels(k)[j]
        return torch.from_numpy(codes.astype(np.int64)), torch.tensor(int(label), dtype=torch.int64)


# ----------------------------------------------------------------------------- one crop, from any codes file


def _crop_index(path: Path, crop: int | None, crop_order: list[str], num_crops: int) -> int:
    k = centre_crop_index(crop_order) if crop is None else crop
    if k is None:
        raise UserError(f"{path}: the crop order {crop_order} has no {CENTRE!r} crop; choose one with --crop")
    if not 0 <= k < num_crops:
        raise UserError(f"{path}: --crop {k} out of range for {num_crops} crops; use 0..{num_crops - 1}")
    return k


def _select_crop(codes: np.ndarray, path: Path, crop: int | None, crop_order: list[str] | None = None) -> np.ndarray:
    """(num_images, H·W) codes: the codes themselves, or crop `crop` of multi-crop codes (default: the crop
    named centre in `crop_order`, which defaults to `default_crop_order`)."""
    if not np.issubdtype(codes.dtype, np.integer):
        raise UserError(f"{path}: codes must be integers, got {codes.dtype}")
    if codes.ndim == 2:
        if crop is not None:
            raise UserError(f"{path}: codes {codes.shape} have no crop axis; drop --crop")
        return codes
    if codes.ndim == 3:
        return codes[:, _crop_index(path, crop, crop_order or default_crop_order(codes.shape[1]), codes.shape[1])]
    raise UserError(f"{path}: codes must have shape (num_images, H*W) or (num_images, crops, H*W), got {codes.shape}")


def _codes_of_npz(path: Path, crop: int | None) -> np.ndarray:
    """Codes of one .npz file; a shard's own metadata says which crop is the centre."""
    arrays = load_npz(path, "codes")
    codes = arrays["codes"]
    order = None
    if "meta" in arrays and codes.ndim == 3:
        try:
            meta = json.loads(str(arrays["meta"]))
        except ValueError:
            raise UserError(f"{path}: 'meta' is not JSON; pass a `par tokenize` shard or a plain codes file") from None
        order = crop_order_of(meta, codes.shape[1], path)
    return _select_crop(codes, path, crop, order)


def _codes_of_dir(path: Path, num: int, crop: int | None) -> np.ndarray:
    """Codes of a directory of .npz files without a manifest, read in sorted order until `num` images."""
    files = sorted(path.glob("*.npz"))
    if not files:
        raise UserError(f"{path}: directory holds no *.npz shards; point --codes at the code shards")
    parts, have = [], 0
    for file in files:
        part = _codes_of_npz(file, crop)
        if parts and part.shape[1:] != parts[0].shape[1:]:
            raise UserError(f"{file}: codes {part.shape} do not match earlier shards {parts[0].shape}")
        parts.append(part)
        have += len(part)
        if have >= num:
            break
    return np.concatenate(parts)


def read_crop_codes(path, num: int, crop: int | None = None) -> np.ndarray:
    """(num, H·W) codes of crop `crop` (default: the centre crop its crop order names) from a `par tokenize`
    directory (`TokenShards`: a fixed random draw of `num` images, since its shards are sorted by class), another
    directory of .npz shards, or one .npy/.npz file (their first `num` images)."""
    path = Path(path)
    if path.is_dir() and (path / MANIFEST).is_file():
        shards = TokenShards(path)
        codes = shards.load(crop=_crop_index(path, crop, shards.crop_order, shards.num_crops))[0]
        if num < len(codes):
            codes = codes[np.sort(np.random.default_rng(0).permutation(len(codes))[:num])]
    elif path.is_dir():
        codes = _codes_of_dir(path, num, crop)
    elif not path.exists():
        raise UserError(f"{path}: no such file or directory; check --codes")
    elif path.suffix == ".npy":
        try:
            codes = np.load(path)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not a readable .npy file ({e}); regenerate it") from None
        codes = _select_crop(codes, path, crop)
    elif path.suffix == ".npz":
        codes = _codes_of_npz(path, crop)
    else:
        raise UserError(f"{path}: --codes must be an .npy/.npz file or a directory of .npz shards")
    if len(codes) < num:
        raise UserError(f"{path}: only {len(codes)} images of codes, asked for --num-images {num}; lower it")
    return codes[:num]
