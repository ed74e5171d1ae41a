"""Image data: ten-crop VQ pre-tokenisation into shards (`par tokenize`) and the training-time token dataset.

Pre-tokenisation follows LlamaGen's `extract_codes_c2i.py --ten-crop --crop-range 1.1` (spec §8.1): ADM centre
crop to int(image_size·crop_range), torchvision `TenCrop(image_size)` (5 crops of the image, then the same 5 of
its horizontal flip), ToTensor, Normalize(0.5, 0.5), VQ encode in fp32 → (10, h·w) raster codes per image.

Output directory (`--out DIR`):

* ``shard-{k:05d}.npz``: images ``[k·S, (k+1)·S)`` of the sorted ImageFolder list (S = ``--shard-size``), an
  uncompressed zip written deterministically (fixed member order and timestamps: same input → same bytes)
  and atomically. Members: ``codes`` (n, 10, h·w) int16, ``labels`` (n,) int64, ``indices`` (n,) int64
  (ImageFolder index of each image) and ``meta``, a 0-d str array holding JSON: the shard's range, the
  run's settings and the images skipped in it, with reasons.
* ``manifest.json``: written (atomically, and rebuilt from the shards, so concurrent writers agree) by
  whichever process sees every shard present, or by ``par tokenize --finalize --out DIR``.

`TokenDataset` reads such a directory for training: one of the 10 crops drawn uniformly per item (§8.2).
The offline tiny dataset (`par make-tinyset`) lives in `par/tinyset.py`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from par.cluster import array_task
from par.config import TokenizeJob, add_arguments, from_args
from par.errors import UserError
from par.io import atomic_path, sha256_file, write_json

FORMAT = "par-token-shards"
VERSION = 1
NUM_CROPS = 10
CROP_ORDER = [f"{flip}{pos}" for flip in ("", "hflip-") for pos in
              ("top-left", "top-right", "bottom-left", "bottom-right", "center")]
SHARD_KEYS = ("codes", "labels", "indices", "meta")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamp: shard bytes depend on content only
# Test hook: sleep this many seconds after each encoded batch (lets a test kill the process mid-run).
BATCH_DELAY_ENV = "PAR_TOKENIZE_TEST_BATCH_DELAY"


# ----------------------------------------------------------------------------- preprocessing (§8.1)

def center_crop_arr(pil_image, image_size: int):
    """ADM centre crop (guided-diffusion / LlamaGen): BOX-halve while the short side is ≥ 2·size, BICUBIC
    resize so the short side is `image_size` (both sides scaled and rounded), centre crop at (side−size)//2."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size])


def crop_size(image_size: int, crop_range: float) -> int:
    return int(image_size * crop_range)


class TenCropTransform:
    """PIL RGB image → float tensor (10, 3, S, S) in [−1, 1]: the reference's transform chain (ADM centre crop,
    `TenCrop`, ToTensor, Normalize(0.5, 0.5)). A plain class, so it pickles into DataLoader workers."""

    def __init__(self, image_size: int = 384, crop_range: float = 1.1):
        self.image_size, self.crop_range = image_size, crop_range
        self.crop_size = crop_size(image_size, crop_range)

    def __call__(self, img):
        import torch
        from torchvision.transforms import functional as TF

        img = center_crop_arr(img, self.crop_size)
        crops = TF.ten_crop(img, self.image_size)  # what transforms.TenCrop calls: 5 crops, then 5 of the h-flip
        x = torch.stack([TF.to_tensor(c) for c in crops])
        return TF.normalize(x, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], inplace=True)


def ten_crop_transform(image_size: int = 384, crop_range: float = 1.1) -> TenCropTransform:
    return TenCropTransform(image_size, crop_range)


class BadImage(ValueError):
    """An image file that cannot be decoded to RGB; the message is the reason recorded in the shard."""


def load_rgb(path):
    """Decode an image fully (truncated files raise) and convert it to RGB (grey, CMYK, palette… are fine)."""
    import warnings

    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # the default; a truncated JPEG must fail, not decode grey
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency / EXIF / decompression-bomb chatter
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()  # PIL decodes lazily: force it so truncation is detected here
                return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 — PIL raises OSError, ValueError, SyntaxError, struct.error, ...
        raise BadImage(f"{type(e).__name__}: {e}".strip()) from None


def list_images(root):
    """torchvision ImageFolder listing: (class names, [(path, label)]) — class folders sorted → 0..C−1,
    files sorted within each class, image extensions only. The list index is the ImageFolder index."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--images {root}: no such folder; pass an ImageFolder root (one sub-folder per class)")
    try:
        classes, class_to_idx = find_classes(str(root))
    except FileNotFoundError:
        raise UserError(f"--images {root}: no class folders; an ImageFolder root holds one sub-folder of "
                        "images per class") from None
    try:
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:  # a class folder without any image (ImageFolder refuses those too)
        raise UserError(f"--images {root}: {e}; remove the empty class folder(s) or add images") from None
    return classes, samples


# ----------------------------------------------------------------------------- shard files

def shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


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
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key in SHARD_KEYS:
                info = zipfile.ZipInfo(key + ".npy", date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                zf.writestr(info, _npy_bytes(arrays[key]))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; shards are shared data


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


def read_shard_meta(path) -> dict:
    """The shard's `meta` JSON plus the shapes/dtypes of its arrays (headers only; raises ValueError,
    OSError or zipfile.BadZipFile on an incomplete or foreign file)."""
    with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        names = set(zf.namelist())
        missing = [k for k in SHARD_KEYS if k + ".npy" not in names]
        if missing:
            raise ValueError(f"missing member(s) {missing}")
        meta = json.loads(np.load(io.BytesIO(zf.read("meta.npy")), allow_pickle=False).item())
        heads = {k: _member_header(f, zf, k) for k in ("codes", "labels", "indices")}
    meta["_arrays"] = {k: {"offset": off, "shape": list(shape), "dtype": dtype.str}
                       for k, (off, shape, dtype) in heads.items()}
    return meta


def _check_shard(meta: dict, expect: dict, grid_len: int) -> str | None:
    """None if a shard's meta/arrays are consistent with `expect` (the run's settings), else why not."""
    for k, v in expect.items():
        if meta.get(k) != v:
            return f"{k} is {meta.get(k)!r}, this run has {v!r}"
    arrays = meta["_arrays"]
    n = meta["stop"] - meta["start"] - len(meta["skipped"])
    if arrays["codes"]["shape"] != [n, NUM_CROPS, grid_len]:
        return f"codes shape {arrays['codes']['shape']} != {[n, NUM_CROPS, grid_len]}"
    if arrays["labels"]["shape"] != [n] or arrays["indices"]["shape"] != [n]:
        return "labels/indices length does not match codes"
    return None


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


def tokenize(images, vq, out, *, image_size: int = 384, crop_range: float = 1.1, shard_size: int = 1000,
             shard: int = 0, num_shards: int = 1, batch_size: int = 4, device: str | None = None,
             workers: int | None = None, progress: bool = True) -> dict:
    """Ten-crop tokenise the ImageFolder `images` with the VQ checkpoint `vq` into shards under `out`.

    Handles shards k ≡ `shard` (mod `num_shards`); already complete shards are kept. Writes the manifest if
    all shards exist afterwards. Returns a summary dict (written / kept shards, skipped images, manifest)."""
    import torch
    from tqdm import tqdm

    from par.data.tokenizer import load_vq

    root, vq, out = Path(images).absolute(), Path(vq).absolute(), Path(out)
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
    classes, samples = list_images(root)
    total = math.ceil(len(samples) / shard_size)
    mine = list(range(shard, total, num_shards))
    out.mkdir(parents=True, exist_ok=True)
    for k in mine:  # temp files of a killed run of this same process slot
        for stale in out.glob(f".{shard_name(k)}.*.tmp"):
            stale.unlink(missing_ok=True)

    vq_sha = sha256_file(vq)
    model = None
    expect_common = {"format": FORMAT, "version": VERSION, "image_size": image_size, "crop_range": crop_range,
                     "shard_size": shard_size, "num_files": len(samples), "num_shards": total,
                     "tokenizer_sha256": vq_sha, "class_names": classes}

    # the grid needs the model config; load it (cheap relative to encoding) only when there is work
    def load_model():
        m = load_vq(vq)
        ds = m.cfg.downsample
        if image_size % ds:
            raise UserError(f"--image-size {image_size}: must be a multiple of the VQ downsampling factor {ds}")
        if m.cfg.codebook_size > 32768:
            raise UserError(f"--vq {vq}: codebook of {m.cfg.codebook_size} codes does not fit the int16 shard format")
        return m

    def expect_for(k, m):
        start, stop = k * shard_size, min((k + 1) * shard_size, len(samples))
        grid = [image_size // m.cfg.downsample] * 2
        return {**expect_common, "shard": k, "start": start, "stop": stop, "grid": grid,
                "codebook_size": m.cfg.codebook_size,
                "files_sha256": _list_digest(root, samples[start:stop])}

    kept, pending = [], []
    for k in mine:
        path = out / shard_name(k)
        if not path.exists():
            pending.append(k)
            continue
        model = load_model() if model is None else model
        try:
            meta = read_shard_meta(path)
        except Exception as e:  # noqa: BLE001 — unreadable: ours to redo (writes are atomic, so rare)
            print(f"par tokenize: {path} is unreadable ({type(e).__name__}: {e}); re-making it", file=sys.stderr)
            pending.append(k)
            continue
        why = _check_shard(meta, expect_for(k, model), (image_size // model.cfg.downsample) ** 2)
        if why:
            raise UserError(f"{path}: written by a different run ({why}); use a fresh --out or delete the old shards")
        kept.append(k)

    written, skipped = [], []
    if pending:
        model = load_model() if model is None else model
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        model = model.to(dev).eval()
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        if dev.type == "cuda":  # as the reference extract_codes_c2i.py: TF32 matmuls and convolutions
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        h = w = image_size // model.cfg.downsample
        workers = _default_workers() if workers is None else workers
        batches = [list(range(b, min(b + batch_size, (k + 1) * shard_size, len(samples))))
                   for k in pending for b in range(k * shard_size, min((k + 1) * shard_size, len(samples)),
                                                    batch_size)]
        loader = torch.utils.data.DataLoader(
            _ImageCrops(samples, ten_crop_transform(image_size, crop_range)), batch_sampler=batches,
            num_workers=workers, collate_fn=_collate_list, pin_memory=dev.type == "cuda")
        delay = float(os.environ.get(BATCH_DELAY_ENV, 0) or 0)
        n_images = sum(len(b) for b in batches)
        bar = tqdm(total=n_images, desc=f"tokenize {len(pending)} shard(s)", unit="img", file=sys.stderr,
                   disable=not progress, mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        acc = None
        with torch.inference_mode():
            for batch in loader:
                k = batch[0][0] // shard_size
                if acc is None:
                    acc = {"k": k, "codes": [], "labels": [], "indices": [], "skipped": []}
                good = [(i, x) for i, x, _ in batch if x is not None]
                for i, x, reason in batch:
                    if x is None:
                        path, label = samples[i]
                        acc["skipped"].append({"index": i, "path": os.path.relpath(path, root), "label": label,
                                               "reason": reason})
                if good:
                    x = torch.cat([x for _, x in good]).to(dev, non_blocking=True)
                    codes = model.encode(x)[1].reshape(len(good), NUM_CROPS, h * w)
                    acc["codes"].append(codes.to("cpu", torch.int16).numpy())
                    acc["indices"] += [i for i, _ in good]
                    acc["labels"] += [samples[i][1] for i, _ in good]
                bar.update(len(batch))
                if batch[-1][0] == min((k + 1) * shard_size, len(samples)) - 1:  # last batch of shard k
                    meta = {**expect_for(k, model), "skipped": acc["skipped"],
                            "tokenizer": str(vq), "source_root": str(root)}
                    codes = (np.concatenate(acc["codes"]) if acc["codes"]
                             else np.zeros((0, NUM_CROPS, h * w), np.int16))
                    write_shard(out / shard_name(k), codes, acc["labels"], acc["indices"], meta)
                    written.append(k)
                    skipped += acc["skipped"]
                    acc = None
                if delay:
                    time.sleep(delay)
        bar.close()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    summary = {"shards_total": total, "shards_mine": len(mine), "written": written, "kept": kept,
               "skipped": skipped, "manifest": None}
    missing = [k for k in range(total) if not (out / shard_name(k)).exists()]
    if not missing:
        summary["manifest"] = str(finalize(out))
    summary["missing"] = missing
    return summary


def build_manifest(out) -> dict:
    """The manifest of a complete shard directory, rebuilt from the shards' own metadata (deterministic)."""
    out = Path(out)
    first = sorted(out.glob("shard-*.npz"))
    if not first:
        raise UserError(f"--out {out}: no shard-*.npz files; run `par tokenize` first")
    try:
        meta0 = read_shard_meta(first[0])
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{first[0]}: unreadable shard ({type(e).__name__}: {e}); delete it and re-run "
                        "`par tokenize`") from None
    total = meta0["num_shards"]
    missing = [k for k in range(total) if not (out / shard_name(k)).exists()]
    if missing:
        raise UserError(f"--out {out}: {len(missing)} of {total} shards missing (e.g. {shard_name(missing[0])}); "
                        "run the remaining `par tokenize` shards first")
    extra = sorted({p.name for p in first} - {shard_name(k) for k in range(total)})
    if extra:
        raise UserError(f"--out {out}: unexpected shard file(s) {extra[:3]} for a {total}-shard run; "
                        "remove them (left over from a different run?)")
    common = ("format", "version", "image_size", "crop_range", "shard_size", "num_files", "num_shards",
              "tokenizer_sha256", "class_names", "grid", "codebook_size")
    shards, skipped = [], []
    for k in range(total):
        path = out / shard_name(k)
        try:
            meta = read_shard_meta(path)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{path}: unreadable shard ({type(e).__name__}: {e}); delete it and re-run "
                            "`par tokenize`") from None
        diff = [f for f in common if meta.get(f) != meta0.get(f)]
        why = _check_shard(meta, {"shard": k, **{f: meta0[f] for f in common}}, int(np.prod(meta0["grid"])))
        if diff or why:
            raise UserError(f"{path}: does not belong with {first[0].name} ({why or 'differs in ' + ', '.join(diff)}); "
                            "delete the stray shards and re-run `par tokenize`")
        c = meta["_arrays"]["codes"]
        shards.append({"file": path.name, "start": meta["start"], "stop": meta["stop"], "num_images": c["shape"][0],
                       "bytes": path.stat().st_size, "codes_offset": c["offset"], "codes_dtype": c["dtype"]})
        skipped += meta["skipped"]
    return {
        "format": FORMAT, "version": VERSION,
        "source_root": meta0["source_root"],
        "tokenizer": {"checkpoint": meta0["tokenizer"], "sha256": meta0["tokenizer_sha256"]},
        "image_size": meta0["image_size"], "crop_range": meta0["crop_range"],
        "crop_size": crop_size(meta0["image_size"], meta0["crop_range"]),
        "num_crops": NUM_CROPS, "crop_order": CROP_ORDER,
        "grid": meta0["grid"], "codebook_size": meta0["codebook_size"], "codes_dtype": "int16",
        "num_classes": len(meta0["class_names"]), "class_names": meta0["class_names"],
        "num_files": meta0["num_files"], "num_images": sum(s["num_images"] for s in shards),
        "num_skipped": len(skipped), "skipped": skipped,
        "shard_size": meta0["shard_size"], "num_shards": total, "shards": shards,
    }


def finalize(out) -> Path:
    """(Re)write DIR/manifest.json atomically from the shards; UserError if any shard is missing."""
    manifest = build_manifest(out)
    path = Path(out) / "manifest.json"
    write_json(path, manifest)
    return path


# ----------------------------------------------------------------------------- training dataset (§8.2)

def load_token_arrays(data_dir: str | Path):
    """Read every shard of a `par tokenize` directory: codes (images, crops, N), labels, manifest."""
    data_dir = Path(data_dir)
    mpath = data_dir / "manifest.json"
    if not mpath.exists():
        raise UserError(f"{mpath}: missing; run `par tokenize` on the images first (it writes the manifest last)")
    manifest = json.loads(mpath.read_text())
    shards = sorted(data_dir.glob("shard-*.npz"))
    if len(shards) != manifest["num_shards"]:
        raise UserError(f"{data_dir}: {len(shards)} shards on disk, manifest says {manifest['num_shards']}; "
                        "re-run `par tokenize` to complete it")
    parts = [np.load(s) for s in shards]  # everything in memory: int16 ImageNet codes are 14.7 GB
    codes = np.concatenate([p["codes"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts]).astype(np.int64)
    return codes, labels, manifest


class TokenDataset:
    """Map-style dataset over a `par tokenize` directory: item i → (codes (h·w,) int64 raster, label int64).

    ``crop="random"`` draws one of the 10 crops uniformly at every access (paper §8.2); an int fixes the crop.
    With ``seed=None`` the draw uses torch's global RNG (which DataLoader seeds per worker, like the
    reference); with a seed, a private generator seeded from (seed, DataLoader worker seed) — reproducible in
    the main process, distinct across workers. Codes are read straight from the shard files (a few hundred
    bytes per item, no file handles held), so any number of workers can share one instance.
    Usable with `torch.utils.data.DataLoader` (it is a plain map-style dataset).
    """

    def __init__(self, dir, crop: str | int = "random", seed: int | None = None):
        import torch

        self._torch = torch
        self.dir = Path(dir)
        mpath = self.dir / "manifest.json"
        if not mpath.is_file():
            raise UserError(f"{mpath}: missing; run `par tokenize` to completion on all shards "
                            "(or `par tokenize --finalize --out DIR`)")
        try:
            m = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{mpath}: not valid JSON ({e}); re-run `par tokenize --finalize --out DIR`") from None
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            raise UserError(f"{mpath}: format {m.get('format')!r} v{m.get('version')}, expected {FORMAT!r} "
                            f"v{VERSION}; re-tokenize with this version of `par tokenize`")
        for s in m["shards"]:
            p = self.dir / s["file"]
            if not p.is_file():
                raise UserError(f"{p}: missing (listed in {mpath.name}); re-run `par tokenize` for it")
            if p.stat().st_size != s["bytes"]:
                raise UserError(f"{p}: {p.stat().st_size} bytes, manifest says {s['bytes']}; shards changed "
                                "after the manifest: re-run `par tokenize --finalize --out DIR`")
        self.manifest = m
        self.grid = tuple(m["grid"])
        self.num_classes = int(m["num_classes"])
        self.codebook_size = int(m["codebook_size"])
        self.class_names = list(m["class_names"])
        self.num_crops = int(m["num_crops"])
        self._tokens = int(np.prod(self.grid))
        self._shards = m["shards"]
        self._ends = np.cumsum([s["num_images"] for s in self._shards])
        if crop != "random" and not (isinstance(crop, (int, np.integer)) and 0 <= crop < self.num_crops):
            raise UserError(f"crop={crop!r}: use 'random' or a crop index 0..{self.num_crops - 1}")
        self.crop, self.seed = crop, seed
        self._labels = {}  # shard → labels array (loaded on first use)
        self._rng, self._rng_key = None, None

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getstate__(self):  # for spawn-started workers: drop caches and the module handle
        d = dict(self.__dict__)
        d.update(_torch=None, _labels={}, _rng=None, _rng_key=None)
        return d

    def __setstate__(self, d):
        import torch

        self.__dict__.update(d, _torch=torch)

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        k = int(np.searchsorted(self._ends, i, side="right"))
        return k, i - (int(self._ends[k - 1]) if k else 0)

    def shard_labels(self, k: int) -> np.ndarray:
        if k not in self._labels:
            with np.load(self.dir / self._shards[k]["file"]) as z:
                self._labels[k] = z["labels"]
        return self._labels[k]

    @property
    def labels(self) -> np.ndarray:
        """All labels in item order (int64)."""
        parts = [self.shard_labels(k) for k in range(len(self._shards))]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

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

    def read_codes(self, i: int, crop: int) -> np.ndarray:
        """Codes of item i, crop `crop`: (h·w,) in the shard's dtype."""
        k, j = self._locate(i)
        s = self._shards[k]
        dtype = np.dtype(s["codes_dtype"])
        n = self._tokens
        with open(self.dir / s["file"], "rb") as f:
            f.seek(s["codes_offset"] + (j * self.num_crops + crop) * n * dtype.itemsize)
            buf = f.read(n * dtype.itemsize)
        if len(buf) != n * dtype.itemsize:
            raise UserError(f"{self.dir / s['file']}: truncated; re-run `par tokenize` for this shard")
        return np.frombuffer(buf, dtype)

    def __getitem__(self, i):
        torch = self._torch
        crop = self._draw_crop()
        codes = self.read_codes(int(i), crop)
        k, j = self._locate(int(i))
        label = self.shard_labels(k)[j]
        return torch.from_numpy(codes.astype(np.int64)), torch.tensor(int(label), dtype=torch.int64)


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
    shard, num = array_task()
    shard = args.shard if args.shard is not None else shard
    num = args.num_shards if args.num_shards is not None else num
    if args.shard is not None and args.num_shards is None and num == 1:
        raise UserError("--shard needs --num-shards (or a Slurm job array)")
    s = tokenize(job.images, job.vq, job.out, image_size=job.image_size, crop_range=job.crop_range,
                 shard_size=job.shard_size, shard=shard, num_shards=num, batch_size=job.batch_size,
                 device=job.device or None, workers=None if job.workers < 0 else job.workers)
    for item in s["skipped"]:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    print(f"shard slot {shard}/{num}: wrote {len(s['written'])} shard(s), kept {len(s['kept'])} complete, "
          f"skipped {len(s['skipped'])} image(s); " +
          (f"manifest {s['manifest']}" if s["manifest"] else
           f"{len(s['missing'])} of {s['shards_total']} shards still missing (other slots)"))
    return 0


def register(sub):
    p = sub.add_parser("tokenize", help="ten-crop VQ pre-tokenisation of an ImageFolder into shards + manifest",
                       description="Ten-crop VQ tokenisation (spec §8.1). Resumable; runs as a Slurm job array "
                                   "(--shard/--num-shards default to the array task's index and count).")
    add_arguments(p, TokenizeJob)
    p.add_argument("--shard", type=int, help="this process's slot I: handles shards k ≡ I mod K")
    p.add_argument("--num-shards", type=int, help="number of slots K (parallel processes)")
    p.add_argument("--finalize", action="store_true", help="only (re)build manifest.json from complete shards")
    p.set_defaults(func=cmd_tokenize)
