"""Moving Fashion-MNIST: an offline video set for the CPU presets and the tests (`par prepare-video
--source moving-mnist`).

Each clip shows `items` Fashion-MNIST images (28×28, or resized to `item_size`) bouncing in a `size`×`size`
black frame: every item
starts at a random position inside the frame and moves `speed` pixels per frame in a random direction,
reflected off the walls (so it is always wholly inside the frame); overlapping items combine by maximum. The
clip's class is its first item's label. The train split draws items from the IDX train files, the test split
from the t10k files. Clip i depends only on (seed, split, i) — the same seed gives byte-identical clips, and
the first N clips do not depend on `num_videos`. Frames are stored RGB (grey in all three channels), like
every source of `par.data.clips`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from par.errors import UserError

GLYPH = 28
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
FILES = {"train": "train", "test": "t10k"}


def idx_pair(idx_dir, split: str) -> tuple[Path, Path]:
    """The (images, labels) IDX files of `split` in `idx_dir`, gzipped or plain."""
    found = []
    for kind in ("images-idx3", "labels-idx1"):
        names = [f"{FILES[split]}-{kind}-ubyte{ext}" for ext in (".gz", "")]
        hit = next((Path(idx_dir) / n for n in names if (Path(idx_dir) / n).is_file()), None)
        if hit is None:
            raise UserError(f"--idx-dir {idx_dir}: no {names[0]} (or unzipped); Fashion-MNIST: `apt-get install "
                            "dataset-fashion-mnist` puts it under /usr/share/datasets/fashion-mnist/")
        found.append(hit)
    return found[0], found[1]


def bounce(start: np.ndarray, velocity: np.ndarray, frames: int, room: int) -> np.ndarray:
    """Integer top-left corners (frames, 2) of a point moving from `start` at `velocity` per frame, reflected
    off 0 and `room` (a triangle wave: closed form, always inside [0, room])."""
    if room == 0:
        return np.zeros((frames, 2), np.int64)
    p = np.mod(start + np.arange(frames)[:, None] * velocity, 2 * room)
    return np.rint(np.where(p > room, 2 * room - p, p)).astype(np.int64)


class MovingMNIST:
    """The clip source (see `par.data.clips`): item i → (name, label) in ``items``, its clip from ``clip(i)``."""

    name = "moving-mnist"
    class_names = CLASS_NAMES

    def __init__(self, idx_dir, split: str = "train", *, frames: int = 17, size: int = 64, items: int = 1,
                 speed: float = 3.0, num_videos: int = 0, seed: int = 0, fps: float = 8.0, item_size: int = GLYPH):
        from par.data.split import idx_split

        if split not in FILES:
            raise UserError(f"--split {split!r}: use train or test")
        if size < item_size:
            raise UserError(f"--size {size}: moving-mnist frames must be at least --item-size {item_size} pixels")
        self.images, labels = idx_split(*map(str, idx_pair(idx_dir, split)))
        if self.images.shape[1:] != (GLYPH, GLYPH):
            raise UserError(f"{idx_dir}: {split} images are {self.images.shape[1:]}, expected grey {GLYPH}×{GLYPH}")
        self.glyph = item_size
        if labels.max() >= len(CLASS_NAMES):
            raise UserError(f"{idx_dir}: label {labels.max()} is not a Fashion-MNIST class (0..9)")
        self.split, self.frames, self.size, self.count, self.speed = split, frames, size, items, speed
        self.seed, self.fps, self.idx_dir = seed, fps, str(Path(idx_dir).absolute())
        self._draw(num_videos or len(self.images))
        self.items = [(f"{split}-{i:06d}", int(y)) for i, y in enumerate(labels[self.which[:, 0]])]

    def settings(self) -> dict:
        return {"frames": self.frames, "fps": self.fps, "size": self.size, "split": self.split, "seed": self.seed,
                "items": self.count, "speed": self.speed, "idx_dir": self.idx_dir} | (
                    {"item_size": self.glyph} if self.glyph != GLYPH else {})  # clip folders made before it stay valid

    def _draw(self, n: int) -> None:
        """Image indices (n, items), start corners (n, items, 2) and velocities (n, items, 2) of every clip: each
        from its own stream of (seed, split), drawn element by element, so clip i's row does not depend on n."""
        seq = np.random.SeedSequence([self.seed, list(FILES).index(self.split)])
        which, start, angle = (np.random.default_rng(s) for s in seq.spawn(3))
        self.which = which.integers(0, len(self.images), (n, self.count))
        self.start = start.uniform(0, self.size - self.glyph, (n, self.count, 2))
        angle = angle.uniform(0, 2 * np.pi, (n, self.count))
        self.velocity = self.speed * np.stack([np.cos(angle), np.sin(angle)], -1)

    def paths(self, i: int) -> np.ndarray:
        """Top-left (row, col) of every item in every frame of clip i: (items, frames, 2)."""
        return np.stack([bounce(s, v, self.frames, self.size - self.glyph)
                         for s, v in zip(self.start[i], self.velocity[i])])

    def glyph_image(self, j: int) -> np.ndarray:
        """Image j at the item size (antialiased resize when smaller than the images' 28 px)."""
        if self.glyph == GLYPH:
            return self.images[j]
        from PIL import Image

        return np.asarray(Image.fromarray(self.images[j]).resize((self.glyph, self.glyph), Image.BILINEAR))

    def clip(self, i: int) -> np.ndarray:
        video = np.zeros((self.frames, self.size, self.size), np.uint8)
        for j, path in zip(self.which[i], self.paths(i)):
            img = self.glyph_image(j)
            for t, (r, c) in enumerate(path):
                win = video[t, r:r + self.glyph, c:c + self.glyph]
                np.maximum(win, img, out=win)
        return np.repeat(video[..., None], 3, axis=3)
