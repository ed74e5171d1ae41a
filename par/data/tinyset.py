"""The tiny preset's image dataset, made offline from the photos bundled with scikit-image (`par make-tinyset`).

Class c = one source photo; each image = a random crop of it (scale 40–100 % of the short side, aspect 3/4–4/3,
random position), a random horizontal flip and a small colour jitter (brightness, contrast, saturation
±15 %), resized (bicubic, antialiased) to `size`×`size` and saved as PNG in ``ROOT/cNN_<name>/NNNNN.png``.
Image i of class c depends only on (seed, c, i), so the tree is byte-identical for the same seed (and the
same Pillow / numpy / scikit-image versions), and its first N images do not depend on --images-per-class.
``ROOT/tinyset.json`` (written last) records the settings; it marks the tree complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from par.config import TinysetSettings, add_arguments, from_args
from par.errors import UserError
from par.io import atomic_path, write_json

# (class name, skimage.data function): the RGB photos that ship inside the scikit-image wheel (no download)
SOURCES = (
    ("astronaut", "astronaut"),
    ("coffee", "coffee"),
    ("cat", "chelsea"),
    ("rocket", "rocket"),
    ("hubble", "hubble_deep_field"),
    ("histology", "immunohistochemistry"),
    ("retina", "retina"),
    ("colorwheel", "colorwheel"),
    ("logo", "logo"),
    ("motorcycle", "stereo_motorcycle"),
)
VERSION = 1


def source_images() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 (H, W, 3) RGB) for every class source; RGBA is composited over white."""
    import skimage
    import skimage.data

    out = []
    for name, fn in SOURCES:
        try:
            img = getattr(skimage.data, fn)()
        except Exception as e:  # noqa: BLE001 — e.g. a file not bundled in this scikit-image build
            raise UserError(f"skimage.data.{fn}: not available offline in scikit-image {skimage.__version__} "
                            f"({type(e).__name__}); install scikit-image>=0.22 from a wheel") from None
        if isinstance(img, tuple):  # stereo_motorcycle → (left, right, disparity)
            img = img[0]
        img = np.asarray(img)
        if img.ndim == 3 and img.shape[2] == 4:
            a = img[..., 3:].astype(np.float32) / 255.0
            img = np.round(img[..., :3] * a + 255.0 * (1 - a)).astype(np.uint8)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise UserError(f"skimage.data.{fn}: expected uint8 RGB, got {img.dtype} {img.shape}")
        out.append((name, img))
    return out


def augment(src, rng: np.random.Generator, size: int):
    """One random crop / flip / colour-jittered view of PIL image `src`, as a size×size PIL RGB image."""
    from PIL import Image

    w, h = src.size
    side = rng.uniform(0.4, 1.0) * min(w, h)
    ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw, ch = min(w, side * np.sqrt(ratio)), min(h, side / np.sqrt(ratio))
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    flip = rng.random() < 0.5
    b, c, s = rng.uniform(0.85, 1.15, size=3)
    img = src.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    x = np.asarray(img, dtype=np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = grey + (x - grey) * s
    return Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8))


def _save_png(img, path: Path) -> None:
    with atomic_path(path) as tmp:  # created with the umask's permissions, which img.save keeps
        img.save(tmp, format="PNG")


def make_tinyset(out, images_per_class: int = 400, size: int = 64, seed: int = 0) -> dict:
    """Write the ImageFolder tree under `out`; returns the info also written to ``out/tinyset.json``."""
    import skimage
    from PIL import Image

    out = Path(out)
    if images_per_class < 1:
        raise UserError(f"--images-per-class {images_per_class}: must be ≥ 1")
    if size < 8:
        raise UserError(f"--size {size}: must be ≥ 8 pixels")
    if out.exists() and any(out.iterdir()) and not (out / "tinyset.json").exists():
        raise UserError(f"--out {out}: exists, is not empty and is not a tinyset folder; pick a new --out")
    classes = [f"c{c:02d}_{name}" for c, (name, _) in enumerate(SOURCES)]
    (out / "tinyset.json").unlink(missing_ok=True)  # incomplete until rewritten at the end
    for c, (name, arr) in enumerate(source_images()):
        d = out / classes[c]
        d.mkdir(parents=True, exist_ok=True)
        src = Image.fromarray(arr)
        want = set()
        for i in range(images_per_class):
            rng = np.random.default_rng([seed, c, i])
            want.add(f"{i:05d}.png")
            _save_png(augment(src, rng, size), d / f"{i:05d}.png")
        for stale in d.glob("*.png"):  # from an earlier, larger run into the same folder
            if stale.name not in want:
                stale.unlink()
    info = {"version": VERSION, "seed": seed, "size": size, "images_per_class": images_per_class,
            "classes": classes, "sources": {cls: f"skimage.data.{fn}" for cls, (_, fn) in zip(classes, SOURCES)},
            "scikit_image": skimage.__version__}
    write_json(out / "tinyset.json", info)
    return info


def load_info(root) -> dict:
    path = Path(root) / "tinyset.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; run `par make-tinyset --out {root}` (to completion)")
    return json.loads(path.read_text())


def cmd_make_tinyset(args) -> int:
    cfg = from_args(TinysetSettings, args)
    info = make_tinyset(args.out, images_per_class=cfg.images_per_class, size=cfg.size, seed=cfg.seed)
    print(f"wrote {args.out}: {len(info['classes'])} classes x {info['images_per_class']} images "
          f"({info['size']}x{info['size']} PNG)")
    return 0


def register(sub):
    t = sub.add_parser("make-tinyset", help="offline tiny ImageFolder from scikit-image's bundled photos")
    t.add_argument("--out", required=True, help="output ImageFolder root")
    add_arguments(t, TinysetSettings)
    t.set_defaults(func=cmd_make_tinyset)
