"""`par prepare-images`: a preset's images as two ImageFolder trees, ``train/`` and ``test/`` (held out).

Everything downstream (tokenizer, ten-crop tokens, classifier, FID reference, floors, held-out NLL) reads an
ImageFolder, so each data source is brought to that one layout here, once:

* ``idx``: a pair of gzipped (or plain) IDX files per split, as MNIST and Fashion-MNIST ship them
  (Debian's ``dataset-fashion-mnist``: ``/usr/share/datasets/fashion-mnist/*-ubyte.gz``). Images are
  written as PNG (grey or RGB as stored), optionally zero-padded to a square side (28 → 32 gives a 16 × 16
  token grid under a 2× VQ).
* ``imagefolder``: your own ImageFolder. With a held-out folder given, both are linked as they are; without
  one, a fixed fraction of every class is held out (seeded) and both splits are symlinked into place.

The held-out split never trains anything: the tokenizer, the classifier and the models see ``train/`` only.
``<out>/images.json`` (written last) records the source, the counts and the class names; it marks the tree
complete. Each split is built in a temporary folder and renamed into place, so a crash leaves no half tree.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from par.config import PrepareImagesJob, add_arguments, from_args
from par.errors import UserError
from par.io import write_json

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX array (LeCun's MNIST format), gzipped or not: magic 0x0000 <type> <ndim>, big-endian sizes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such IDX file (Fashion-MNIST: `apt-get install dataset-fashion-mnist` puts "
                        "it under /usr/share/datasets/fashion-mnist/)")
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e}); the file is truncated or not gzip/IDX") from None
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in IDX_TYPES:
        raise UserError(f"{path}: not an IDX file (bad magic {raw[:4].hex()}); expected e.g. "
                        "train-images-idx3-ubyte.gz")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise UserError(f"{path}: {len(raw)} bytes, but its header {dims} of {dtype} needs {expected}; "
                        "the file is truncated or corrupt")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(dims)


def idx_split(images: str, labels: str, pad_to: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, H, W) or (N, H, W, 3), int labels (N,)) of one IDX pair, zero-padded to `pad_to`."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] != 3) or x.dtype != np.uint8:
        raise UserError(f"{images}: IDX images must be uint8 (N, H, W) or (N, H, W, 3); got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(f"{labels}: {y.shape} labels for {len(x)} images in {images}; pass the matching pair")
    h, w = x.shape[1:3]
    if pad_to:
        if pad_to < max(h, w):
            raise UserError(f"pad_to={pad_to} is smaller than the {h}x{w} images of {images}")
        top, left = (pad_to - h) // 2, (pad_to - w) // 2
        pad = [(0, 0), (top, pad_to - h - top), (left, pad_to - w - left)] + [(0, 0)] * (x.ndim - 3)
        x = np.pad(x, pad)
    return x, y.astype(np.int64)


def _class_dirs(labels: np.ndarray) -> list[str]:
    width = len(str(max(int(labels.max()), 9)))
    return [f"c{c:0{width}d}" for c in range(int(labels.max()) + 1)]


def _write_pngs(root: Path, x: np.ndarray, y: np.ndarray, names: list[str]) -> None:
    from PIL import Image

    for name in names:
        (root / name).mkdir(parents=True)
    for i, (img, c) in enumerate(zip(x, y)):
        Image.fromarray(img).save(root / names[c] / f"{i:06d}.png", format="PNG")


def _link_tree(root: Path, samples: list[tuple[str, int]], classes: list[str]) -> None:
    for name in classes:
        (root / name).mkdir(parents=True)
    for path, c in samples:
        os.symlink(os.path.abspath(path), root / classes[c] / Path(path).name)


def _replace_dir(out: Path, name: str, fill) -> None:
    """Build `out/name` in a temporary sibling, then rename it into place (no half-written split)."""
    final, tmp = out / name, out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    fill(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _subset(n: int, keep: int, seed: int) -> np.ndarray:
    """Indices of a fixed random subset of `keep` of `n` items (all of them, in order, when keep is 0 or ≥ n)."""
    if not keep or keep >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:keep])


# ------------------------------------------------------------------ checks the workflow also makes when the DAG is built

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
_DISJOINT_FIX = ("held-out images must never be trained on (the FID reference, the floors and the NLL would score "
                 "training images): point data.heldout_images at a separate folder of other images, or leave it "
                 "empty to hold out data.heldout_fraction of every class")


def heldout_count(n: int, fraction: float, where: str) -> int:
    """Images of a class of `n` that `fraction` holds out; a class it cannot split is one line with the fix."""
    k = int(round(fraction * n))
    if 1 <= k < n:
        return k
    if n == 1:
        raise UserError(f"{where}: 1 image, which no data.heldout_fraction can split into train and held-out; set "
                        "data.heldout_images to an ImageFolder of other images of the same classes (or add images)")
    raise UserError(f"{where}: {n} images cannot be split with data.heldout_fraction={fraction}; change the "
                    "fraction, add images, or set data.heldout_images to an ImageFolder of held-out images")


def class_counts(root: str) -> dict[str, int]:
    """Images per class folder of an ImageFolder root, counted as torchvision lists them (sub-folders followed,
    image extensions only) but without importing it: the workflow checks a split when the DAG is built."""
    counts = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir():
            counts[entry.name] = sum(f.lower().endswith(IMAGE_EXTENSIONS)
                                     for _, _, files in os.walk(entry.path, followlinks=True) for f in files)
    return counts


def check_disjoint(images: str, heldout: str) -> None:
    """The held-out path is not the training path, nor inside it, nor around it."""
    a, b = Path(images).resolve(), Path(heldout).resolve()
    if a == b or a in b.parents or b in a.parents:
        how = "is" if a == b else "lies inside" if a in b.parents else "contains"
        raise UserError(f"data.heldout_images {heldout} {how} data.images {images}; {_DISJOINT_FIX}")


def _digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shared_files(heldout: list[str], train: list[str]) -> list[tuple[str, str]]:
    """(held-out file, training file) pairs with the same content. Sizes first (one stat per file); only files
    whose size occurs on both sides are read and hashed, so disjoint data costs little beyond the listing."""
    held_sizes = {p: os.stat(p).st_size for p in heldout}
    sizes, train_by_size = set(held_sizes.values()), defaultdict(list)
    for p in train:
        size = os.stat(p).st_size
        if size in sizes:
            train_by_size[size].append(p)
    held = [p for p, s in held_sizes.items() if s in train_by_size]
    if not held:
        return []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:  # reading files is I/O-bound
        train_files = [p for s in {held_sizes[p] for p in held} for p in train_by_size[s]]
        by_digest = dict(zip(pool.map(_digest, train_files), train_files))
        return [(p, by_digest[d]) for p, d in zip(held, pool.map(_digest, held)) if d in by_digest]


def prepare_idx(out: Path, images: str, labels: str, heldout_images: str, heldout_labels: str,
                pad_to: int, train_images: int = 0, seed: int = 0) -> dict:
    if not (heldout_images and heldout_labels):
        raise UserError("data.source idx needs data.heldout_images and data.heldout_labels (the test pair, e.g. "
                        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz)")
    check_disjoint(images, heldout_images)
    if shared_files([heldout_images], [images]):
        raise UserError(f"data.heldout_images {heldout_images}: the same content as data.images {images}; "
                        f"{_DISJOINT_FIX}")
    splits = {"train": idx_split(images, labels, pad_to), "test": idx_split(heldout_images, heldout_labels, pad_to)}
    keep = _subset(len(splits["train"][0]), train_images, seed)
    splits["train"] = tuple(a[keep] for a in splits["train"])
    names = _class_dirs(np.concatenate([splits["train"][1], splits["test"][1]]))
    for name, (x, y) in splits.items():
        _replace_dir(out, name, lambda tmp, x=x, y=y: _write_pngs(tmp, x, y, names))
    return {"classes": names, "train": len(splits["train"][0]), "test": len(splits["test"][0]),
            "image_shape": list(splits["train"][0].shape[1:])}


def prepare_imagefolder(out: Path, images: str, heldout_images: str, heldout_fraction: float, seed: int,
                        train_images: int = 0) -> dict:
    from par.data.crops import list_images

    classes, samples = list_images(images)
    if heldout_images:
        check_disjoint(images, heldout_images)
        test_classes, test = list_images(heldout_images)
        if test_classes != classes:
            raise UserError(f"data.heldout_images {heldout_images}: class folders {test_classes[:5]}… differ from "
                            f"data.images {images}: {classes[:5]}…; both need the same class sub-folders")
        shared = shared_files([p for p, _ in test], [p for p, _ in samples])
        if shared:
            raise UserError(f"data.heldout_images {heldout_images}: {len(shared)} of {len(test)} held-out images are "
                            f"byte-identical to training images of data.images {images} (e.g. {shared[0][0]} = "
                            f"{shared[0][1]}); {_DISJOINT_FIX}")
        train = samples
    else:  # hold out the same fraction of every class, at random (fixed by the seed)
        rng = np.random.default_rng(seed)
        train, test = [], []
        for c in range(len(classes)):
            mine = [s for s in samples if s[1] == c]
            k = heldout_count(len(mine), heldout_fraction, f"{images}/{classes[c]}")
            held = set(rng.permutation(len(mine))[:k].tolist())
            for i, s in enumerate(mine):
                (test if i in held else train).append(s)
    train = [train[i] for i in _subset(len(train), train_images, seed)]
    for name, part in (("train", train), ("test", test)):
        _replace_dir(out, name, lambda tmp, part=part: _link_tree(tmp, part, classes))
    return {"classes": classes, "train": len(train), "test": len(test)}


def prepare_images(out: str, source: str, images: str, labels: str = "", heldout_images: str = "",
                   heldout_labels: str = "", heldout_fraction: float = 0.1, pad_to: int = 0, train_images: int = 0,
                   seed: int = 0) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "images.json").unlink(missing_ok=True)
    if source == "idx":
        info = prepare_idx(out, images, labels, heldout_images, heldout_labels, pad_to, train_images, seed)
    elif source == "imagefolder":
        info = prepare_imagefolder(out, images, heldout_images, heldout_fraction, seed, train_images)
    else:
        raise UserError(f"prepare-images: source {source!r} is neither idx nor imagefolder")
    info = {"source": source, "images": images, "heldout_images": heldout_images or None, **info}
    write_json(out / "images.json", info)
    return info


def cmd_prepare_images(args) -> int:
    job = from_args(PrepareImagesJob, args)
    info = prepare_images(**dataclasses.asdict(job))
    print(f"{job.out}: {info['train']} train / {info['test']} held-out images, {len(info['classes'])} classes")
    return 0


def register(sub):
    p = sub.add_parser("prepare-images", help="a preset's images as ImageFolder train/ and test/ (IDX or folders)")
    add_arguments(p, PrepareImagesJob)
    p.set_defaults(func=cmd_prepare_images)
