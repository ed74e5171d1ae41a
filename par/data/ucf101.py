"""UCF-101 as clips (`par prepare-video --source ucf101`): the paper's video setting, random 17-frame clips at
8 fps, 128×128, from the train split.

Videos are listed by the official split files (``ucfTrainTestlist/``: ``classInd.txt`` names the 101 classes
1..101, ``trainlist0N.txt`` lists ``Class/v_Class_gXX_cYY.avi label``, ``testlist0N.txt`` the paths alone;
the class of a path is its folder) and decoded with PyAV (FFmpeg). A clip samples the video at `fps` by
timestamps — the frame nearest to each 1/fps step, whatever the source rate (UCF-101 mixes 25 and 29.97
fps) — from a start drawn uniformly over the times that fit a whole clip. The start depends only on (seed,
the video's path), so it is the same in every split list and every run. Each frame is centre-cropped to a
square and resized (bicubic) to `size`. A video that is missing, cannot be decoded, or is shorter than
the clip's span is skipped with that reason (`SkipItem`), never half-used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from par.data.clips import SkipItem
from par.errors import UserError

LISTS = "ucfTrainTestlist"


def find_lists(root: Path, lists: str = "") -> Path:
    """The split-list folder: `lists`, else ucfTrainTestlist/ inside `root` or beside it."""
    options = [Path(lists)] if lists else [root / LISTS, root.parent / LISTS]
    for d in options:
        if (d / "classInd.txt").is_file():
            return d
    raise UserError(f"no classInd.txt in {' or '.join(map(str, options))}; pass --lists, the folder unpacked from "
                    "UCF101TrainTestSplits-RecognitionTask.zip")


def _lines(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise UserError(f"{path}: missing; the official split lists have classInd.txt, trainlist01-03.txt and "
                        "testlist01-03.txt")
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def read_split(lists: Path, split: str, index: int) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names in label order, [(relative video path, label 0..C−1)] in list order) of one official split."""
    ind = _lines(lists / "classInd.txt")
    if any(len(f) != 2 or not f[0].isdigit() for f in ind) or [int(f[0]) for f in ind] != list(range(1, len(ind) + 1)):
        raise UserError(f"{lists / 'classInd.txt'}: expected lines '<n> <ClassName>' numbered 1, 2, …")
    classes = [f[1] for f in ind]
    label = {c: i for i, c in enumerate(classes)}
    path = lists / f"{split}list{index:02d}.txt"
    items = []
    for n, fields in enumerate(_lines(path), 1):
        folder = fields[0].replace("\\", "/").split("/")[0]
        given = int(fields[1]) - 1 if len(fields) > 1 and fields[1].isdigit() else None
        if folder not in label or (given is not None and given != label[folder]):
            raise UserError(f"{path}:{n}: {' '.join(fields)!r}: the folder is not the class of classInd.txt "
                            f"{'number ' + fields[1] if given is not None else ''}".rstrip())
        items.append((fields[0].replace("\\", "/"), label[folder]))
    return classes, items


def decode(path) -> tuple[np.ndarray, list]:
    """(presentation times in seconds (n,), decoded frames (n,) in time order) of a file's first video stream."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SkipItem("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            frames = list(container.decode(stream))
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
        raise SkipItem(f"unreadable: {type(e).__name__}: {e}") from None
    if not frames:
        raise SkipItem("unreadable: no frame decodes")
    times = np.array([f.time if f.time is not None else i / rate for i, f in enumerate(frames)], np.float64)
    order = np.argsort(times, kind="stable")
    return times[order], [frames[i] for i in order]


def nearest_frames(times: np.ndarray, start: float, frames: int, fps: float) -> np.ndarray:
    """Index of the frame nearest (ties: the earlier) to each of the `frames` times start + j/fps."""
    want = start + np.arange(frames) / fps
    if len(times) == 1:
        return np.zeros(frames, np.int64)
    j = np.clip(np.searchsorted(times, want), 1, len(times) - 1)
    return np.where(want - times[j - 1] <= times[j] - want, j - 1, j)


def clip_start(times: np.ndarray, frames: int, fps: float, u: float) -> float:
    """The clip's start time: fraction `u` of the way through the starts whose span (frames − 1)/fps fits
    between the first and the last frame."""
    span, have = (frames - 1) / fps, float(times[-1] - times[0])
    if have < span - 1e-6:
        raise SkipItem(f"too short: {have:.2f} s from first to last frame, a {frames}-frame clip at {fps:g} fps "
                       f"needs {span:.2f} s")
    return float(times[0] + u * max(have - span, 0.0))


def square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre crop of the largest square, resized (bicubic, antialiased) to size×size."""
    from PIL import Image

    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    # crop first: resizing a box of the whole frame would let the filter reach across the crop's edge
    return np.asarray(Image.fromarray(rgb[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC))


def video_seed(seed: int, name: str) -> list[int]:
    """The seed of one video's clip: (seed, the first 8 bytes of sha256(path)) — independent of list order."""
    return [seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")]


def read_clip(path, name: str, *, frames: int = 17, fps: float = 8.0, size: int = 128, seed: int = 0) -> np.ndarray:
    """uint8 (frames, size, size, 3): the seeded random clip of one video file (SkipItem if it has none)."""
    times, decoded = decode(path)
    start = clip_start(times, frames, fps, float(np.random.default_rng(video_seed(seed, name)).random()))
    try:
        return np.stack([square_resize(decoded[j].to_ndarray(format="rgb24"), size)
                         for j in nearest_frames(times, start, frames, fps)])
    except ValueError as e:  # a frame PyAV cannot convert to RGB
        raise SkipItem(f"unreadable: {e}") from None


class UCF101:
    """The clip source (see `par.data.clips`): the videos of one official split list under `root`."""

    name = "ucf101"

    def __init__(self, root, split: str = "train", *, lists: str = "", split_index: int = 1, frames: int = 17,
                 fps: float = 8.0, size: int = 128, num_videos: int = 0, seed: int = 0):
        from par.data.split import _subset

        try:
            import av  # noqa: F401
        except ImportError:
            raise UserError("ucf101 needs PyAV: pip install av (its wheels bundle FFmpeg)") from None
        if not root or not Path(root).is_dir():
            raise UserError(f"--root {root!r}: not a folder; pass UCF-101/ (one sub-folder per class)")
        if split not in ("train", "test") or split_index not in (1, 2, 3):
            raise UserError(f"split {split!r} {split_index}: use train or test and split index 1, 2 or 3")
        self.root = Path(root)
        self.lists = find_lists(self.root, lists)
        self.class_names, items = read_split(self.lists, split, split_index)
        self.items = [items[i] for i in _subset(len(items), num_videos, seed)]
        self.split, self.split_index, self.frames, self.fps, self.size = split, split_index, frames, fps, size
        self.seed, self.num_videos = seed, num_videos

    def settings(self) -> dict:
        return {"frames": self.frames, "fps": self.fps, "size": self.size, "split": self.split,
                "split_index": self.split_index, "seed": self.seed, "num_videos": self.num_videos,
                "root": str(self.root.absolute())}

    def clip(self, i: int) -> np.ndarray:
        name = self.items[i][0]
        path = self.root / name
        if not path.is_file():
            raise SkipItem("missing: listed in the split file, not found under --root")
        return read_clip(path, name, frames=self.frames, fps=self.fps, size=self.size, seed=self.seed)
