"""`par tokenize-video` (par/data/video_tokens.py): a `par prepare-video` clip folder + a video tokenizer → token
shards of the `par tokenize` format (grid t×h×w, crops "center" / "hflip-center", int16 or uint16 codes), read by
`TokenShards` and trained on by `par train`; resumable and split over slots. Also Moving Fashion-MNIST's
`item_size` (par/data/movingmnist.py). Clip folders are written here from moving squares (no dataset needed)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from par.cli import main
from par.config import TrainJob, TrainSettings, VideoTokenizeJob
from par.data.clips import VideoClips, prepare_clips
from par.data.shards import TokenShards, shard_name
from par.data.video_tokenizer import VideoTokenizer, VideoVQConfig, load_video_vq, moving_squares, save_video_vq
from par.data.video_tokens import codes_dtype, tokenize_video
from par.errors import UserError

# 2× spatial, 2× temporal, a few hundred parameters: 9 frames of 16² → a 5×8×8 grid (320 tokens) in milliseconds
TINY = dict(ch=4, ch_mult=(1, 2), temporal_downsample=(True,), res_blocks=1)
CLASSES = ["a", "b", "c"]
N, FRAMES, SIZE, SHARD = 10, 9, 16, 4  # clip shards of 4, 4, 2 clips
GRID = [5, 8, 8]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Squares:
    """A clip source (see par.data.clips): moving coloured squares, label i % 3."""

    name = "squares"
    class_names = CLASSES

    def __init__(self, n=N, frames=FRAMES, size=SIZE, seed=3):
        self.data = moving_squares(n, frames, size, seed=seed)
        self.items = [(f"v{i}", i % len(CLASSES)) for i in range(n)]
        self.frames, self.size = frames, size

    def settings(self):
        return {"frames": self.frames, "fps": 8.0, "size": self.size}

    def clip(self, i):
        return self.data[i]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """(clip folder, the clips (N, 9, 16, 16, 3) uint8, their labels)."""
    src = Squares()
    out = tmp_path_factory.mktemp("clips") / "train"
    prepare_clips(src, out, shard_size=SHARD, progress=False)
    return out, src.data, np.array([y for _, y in src.items])


def make_vq(path: Path, bits: int = 8, seed: int = 0, **over) -> Path:
    torch.manual_seed(seed)
    save_video_vq(VideoTokenizer(VideoVQConfig(bits=bits, **{**TINY, **over})), path)
    return path


@pytest.fixture(scope="module")
def vq(tmp_path_factory) -> Path:
    return make_vq(tmp_path_factory.mktemp("vq") / "video_vq.pt")


def job(clip_dir, vq_path, out, **kw) -> VideoTokenizeJob:
    return VideoTokenizeJob(clips=str(clip_dir), vq=str(vq_path), out=str(out), device="cpu", **kw)


def encode(vq_path, clips: np.ndarray) -> np.ndarray:
    """The tokenizer's ids of `clips`, flattened raster (n, t·h·w), one shard-sized batch at a time."""
    model = load_video_vq(vq_path)
    with torch.inference_mode():
        return np.concatenate([model.encode(torch.from_numpy(np.ascontiguousarray(clips[i:i + SHARD])))
                               .flatten(1).numpy() for i in range(0, len(clips), SHARD)])


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the codes and the manifest


def test_codes_are_the_tokenizers_ids_of_every_clip_and_of_its_mirror(clips, vq, tmp_path):
    folder, data, labels = clips
    s = tokenize_video(job(folder, vq, tmp_path / "tok", batch_size=3), progress=False)
    assert (s["written"], s["kept"], s["missing"], s["grid"]) == ([0, 1, 2], [], [], GRID)
    assert s["manifest"] == str(tmp_path / "tok" / "manifest.json")
    m = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    assert m["format"] == "par-token-shards" and m["grid"] == GRID and m["crop_order"] == ["center", "hflip-center"]
    assert (m["num_crops"], m["codes_dtype"], m["codebook_size"], m["num_classes"]) == (2, "int16", 256, 3)
    assert m["class_names"] == CLASSES and m["num_images"] == N and m["num_shards"] == 3
    assert m["video"] == {"frames": FRAMES, "fps": 8.0, "size": SIZE}
    assert m["tokenizer"] == {"checkpoint": str(vq), "sha256": sha(vq)}
    # one token shard per clip shard, holding the same items
    assert [s["file"] for s in m["shards"]] == [shard_name(k) for k in range(3)]
    clip_shards = VideoClips(folder).manifest["shards"]
    for k, entry in enumerate(m["shards"]):
        with np.load(tmp_path / "tok" / entry["file"]) as z:
            assert z["codes"].dtype == np.int16 and z["codes"].shape == (clip_shards[k]["num_clips"], 2, 320)
            np.testing.assert_array_equal(z["indices"], np.arange(clip_shards[k]["start"], clip_shards[k]["stop"]))

    shards = TokenShards(tmp_path / "tok")
    assert shards.grid == tuple(GRID) and shards.centre_crop == 0 and len(shards) == N
    codes, lab = shards.load()
    np.testing.assert_array_equal(lab, labels)
    ids = encode(vq, data)
    mirrored = encode(vq, data[:, :, :, ::-1])  # (B, T, H, W, C): the width axis
    np.testing.assert_array_equal(codes[:, 0], ids)
    np.testing.assert_array_equal(codes[:, 1], mirrored)
    assert (codes[:, 0] != codes[:, 1]).any()  # the mirror is another crop, not a copy
    assert not np.array_equal(codes[:, 1], encode(vq, data[:, :, ::-1]))  # flipped along the width, not the height
    np.testing.assert_array_equal(shards.read_codes(9, 1), mirrored[9])
    np.testing.assert_array_equal(shards.load(crop=shards.centre_crop)[0], ids)


def test_without_flip_only_the_clip_itself_is_stored(clips, vq, tmp_path):
    folder, data, _ = clips
    tokenize_video(job(folder, vq, tmp_path / "tok", flip=False), progress=False)
    shards = TokenShards(tmp_path / "tok")
    assert shards.crop_order == ["center"] and shards.num_crops == 1 and shards.centre_crop == 0
    codes, _ = shards.load()
    assert codes.shape == (N, 1, 320)
    np.testing.assert_array_equal(codes[:, 0], encode(vq, data))


def test_codes_dtype_follows_the_vocabulary():
    assert codes_dtype(256) == np.int16 and codes_dtype(1 << 15) == np.int16
    assert codes_dtype((1 << 15) + 1) == np.uint16 and codes_dtype(1 << 16) == np.uint16
    with pytest.raises(UserError, match="does not fit the 16-bit shard format"):
        codes_dtype((1 << 16) + 1)


def test_a_16_bit_tokenizer_writes_uint16_codes_that_read_back_and_resume(clips, tmp_path):
    """The paper's 16-bit LFQ: 65,536 codes do not fit int16. The shards, the manifest, the reader and a rerun all
    take uint16."""
    folder, data, _ = clips
    vq16 = make_vq(tmp_path / "vq16.pt", bits=16)
    ids = encode(vq16, data)
    assert ids.max() >= 1 << 15  # codes that int16 could not hold
    s = tokenize_video(job(folder, vq16, tmp_path / "tok"), progress=False)
    assert s["manifest"], s
    m = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    assert (m["codes_dtype"], m["codebook_size"]) == ("uint16", 65536)
    codes, _ = TokenShards(tmp_path / "tok").load()
    assert codes.dtype == np.uint16
    np.testing.assert_array_equal(codes[:, 0], ids)
    again = tokenize_video(job(folder, vq16, tmp_path / "tok"), progress=False)  # complete uint16 shards are kept
    assert (again["written"], again["kept"]) == ([], [0, 1, 2])


def test_training_reads_uint16_codes_unchanged(tmp_path):
    """`par train` packs the codes into one memory map (par.data.packed): codes ≥ 2^15 must stay what they are, not
    wrap to negative ids."""
    from par.train.train import TokenArrays

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1 << 16, (8, 2, 12)).astype(np.uint16)
    codes[0, 0, 0] = 65535
    labels = np.arange(8) % 3
    d = tmp_path / "tok"
    d.mkdir()
    for k in range(2):
        np.savez(d / shard_name(k), codes=codes[4 * k:4 * k + 4], labels=labels[4 * k:4 * k + 4],
                 indices=np.arange(4 * k, 4 * k + 4))
    (d / "manifest.json").write_text(json.dumps({"grid": [3, 2, 2], "codebook_size": 65536, "num_classes": 3,
                                                 "num_shards": 2, "crop_order": ["center", "hflip-center"]}))
    np.testing.assert_array_equal(TokenShards(d).load()[0], codes)  # the reader keeps them
    data = TokenArrays.load(d)
    np.testing.assert_array_equal(np.asarray(data.codes).astype(np.int64), codes.astype(np.int64))
    x, _ = data.batch(0, 8, seed=0)
    assert int(x.min()) >= 0 and int(x.max()) < 65536


# ----------------------------------------------------------------------------- training on the tokens


def test_par_train_builds_a_3d_model_from_the_video_tokens_and_trains(clips, vq, tmp_path):
    from par.core.model import load_checkpoint
    from par.train.train import TokenArrays, build_model_config, train

    folder = clips[0]
    tokenize_video(job(folder, vq, tmp_path / "tok"), progress=False)
    shards = TokenShards(tmp_path / "tok")
    mcfg = build_model_config(TrainSettings(size="tiny-S", order="par", n=4), shards.grid, shards.codebook_size,
                              shards.num_classes)
    assert tuple(mcfg.grid) == (5, 8, 8) and mcfg.vocab_size == 256 and mcfg.num_classes == 3
    data = TokenArrays.load(tmp_path / "tok")
    assert data.codes.shape == (N, 2, 320) and tuple(data.grid) == (5, 8, 8)
    final = train(TrainJob(data=str(tmp_path / "tok"), out=str(tmp_path / "run"), size="tiny-S", order="par", n=4,
                           global_batch=4, lr=1e-3, max_steps=3, schedule="constant", ckpt_every=10, log_every=1,
                           seed=0))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    model = load_checkpoint(final)
    assert tuple(model.config.grid) == (5, 8, 8) and model.config.vocab_size == 256 and model.config.n == 4


# ----------------------------------------------------------------------------- slots, resuming, errors


def test_two_slots_make_the_same_shards_and_manifest_as_one_process(clips, vq, tmp_path):
    folder = clips[0]
    one = tokenize_video(job(folder, vq, tmp_path / "one"), progress=False)
    first = tokenize_video(job(folder, vq, tmp_path / "two"), shard=0, num_shards=2, progress=False)
    assert (first["shards_mine"], first["written"], first["missing"], first["manifest"]) == (2, [0, 2], [1], None)
    assert not (tmp_path / "two" / "manifest.json").exists()  # not before every shard exists
    last = tokenize_video(job(folder, vq, tmp_path / "two"), shard=1, num_shards=2, progress=False)
    assert (last["written"], last["missing"]) == ([1], [])
    assert last["manifest"] == str(tmp_path / "two" / "manifest.json")  # the last writer writes it
    assert (tmp_path / "two" / "manifest.json").read_bytes() == Path(one["manifest"]).read_bytes()
    for k in range(3):
        assert sha(tmp_path / "two" / shard_name(k)) == sha(tmp_path / "one" / shard_name(k))
    with pytest.raises(UserError, match=r"--shard 2: must be in 0\.\.1"):
        tokenize_video(job(folder, vq, tmp_path / "two"), shard=2, num_shards=2, progress=False)


def test_a_rerun_keeps_complete_shards_and_remakes_missing_or_broken_ones(clips, vq, tmp_path):
    folder = clips[0]
    out = tmp_path / "tok"
    tokenize_video(job(folder, vq, out), progress=False)
    before = {k: (sha(out / shard_name(k)), (out / shard_name(k)).stat().st_mtime_ns) for k in range(3)}
    s = tokenize_video(job(folder, vq, out), progress=False)
    assert (s["written"], s["kept"]) == ([], [0, 1, 2]) and s["manifest"]
    assert {k: (sha(out / shard_name(k)), (out / shard_name(k)).stat().st_mtime_ns) for k in range(3)} == before
    (out / shard_name(1)).unlink()
    (out / shard_name(2)).write_bytes(b"not a zip")
    s = tokenize_video(job(folder, vq, out), progress=False)
    assert (s["written"], s["kept"]) == ([1, 2], [0])
    assert {k: sha(out / shard_name(k)) for k in range(3)} == {k: v[0] for k, v in before.items()}  # same bytes
    assert (out / shard_name(0)).stat().st_mtime_ns == before[0][1]
    # shards of another tokenizer are not silently mixed in
    other = make_vq(tmp_path / "other.pt", seed=1)
    with pytest.raises(UserError, match=r"shard-00000\.npz: written by a different run \(tokenizer_sha256"):
        tokenize_video(job(folder, other, out), progress=False)


def test_clips_skipped_by_prepare_video_are_skipped_in_the_tokens(vq, tmp_path):
    """A clip folder with skipped items (UCF-101 videos that cannot be read): the token shards hold the clips that
    exist, with their item indices, record the skipped ones, and the manifest is written (and a rerun keeps them)."""
    from par.data.clips import SkipItem

    class Gappy(Squares):
        def clip(self, i):
            if i in (5, 8):
                raise SkipItem("unreadable")
            return self.data[i]

    src = Gappy()
    prepare_clips(src, tmp_path / "clips", shard_size=SHARD, progress=False)
    s = tokenize_video(job(tmp_path / "clips", vq, tmp_path / "tok"), progress=False)
    assert s["manifest"], s
    m = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    assert (m["num_files"], m["num_images"], m["num_skipped"]) == (N, N - 2, 2)
    assert sorted(x["name"] for x in m["skipped"]) == ["v5", "v8"]
    kept = [i for i in range(N) if i not in (5, 8)]
    with np.load(tmp_path / "tok" / shard_name(1)) as z:
        np.testing.assert_array_equal(z["indices"], [4, 6, 7])
    codes, labels = TokenShards(tmp_path / "tok").load()
    np.testing.assert_array_equal(codes[:, 0], encode(vq, src.data[kept]))
    np.testing.assert_array_equal(labels, [i % 3 for i in kept])
    again = tokenize_video(job(tmp_path / "clips", vq, tmp_path / "tok"), progress=False)
    assert (again["written"], again["kept"]) == ([], [0, 1, 2])


def test_a_clip_length_the_tokenizer_cannot_code_names_clips(tmp_path):
    src = Squares(n=3, frames=8)
    prepare_clips(src, tmp_path / "clips8", shard_size=4, progress=False)
    vq4 = make_vq(tmp_path / "vq4.pt", ch_mult=(1, 2, 2), temporal_downsample=(True, True))  # T = 1 + 4k
    with pytest.raises(UserError, match=r"--clips .*clips8: .*8×16×16.*1 \+ k·4 frames"):
        tokenize_video(job(tmp_path / "clips8", vq4, tmp_path / "tok"), progress=False)
    assert not (tmp_path / "tok").exists()  # checked before anything is written


def test_cli_slots_summary_and_finalize(clips, vq, tmp_path, capsys):
    folder = clips[0]
    out = tmp_path / "tok"
    base = ["tokenize-video", "--clips", str(folder), "--vq", str(vq), "--out", str(out), "--device", "cpu",
            "--flip", "false", "--batch-size", "2"]
    assert main([*base, "--shard", "1", "--num-shards", "2", "--summary", str(tmp_path / "s1.json")]) == 0
    s1 = json.loads((tmp_path / "s1.json").read_text())
    assert (s1["slot"], s1["slots"], s1["written"], s1["manifest"]) == (1, 2, [1], None)
    assert main([*base, "--shard", "0", "--num-shards", "2"]) == 0
    assert "manifest" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["crop_order"] == ["center"] and m["grid"] == GRID
    (out / "manifest.json").unlink()
    assert main(["tokenize-video", "--finalize", "--out", str(out)]) == 0
    assert json.loads((out / "manifest.json").read_text()) == m
    assert main(["tokenize-video", "--finalize"]) != 0
    assert "--finalize needs --out" in capsys.readouterr().err


# ----------------------------------------------------------------------------- Moving Fashion-MNIST: item_size

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.asarray(arr)
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    """Tiny IDX files: image j is 28×28 of value 100 + j, label j % 10; 20 train and 10 test images."""
    d = tmp_path / "idx"
    d.mkdir()
    for prefix, n in (("train", 20), ("t10k", 10)):
        _write_idx(d / f"{prefix}-images-idx3-ubyte.gz",
                   np.full((n, 28, 28), 100, np.uint8) + np.arange(n, dtype=np.uint8)[:, None, None])
        _write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return d


def test_moving_mnist_items_are_resized_to_item_size_and_stay_whole(idx_dir):
    from par.data.movingmnist import MovingMNIST

    src = MovingMNIST(idx_dir, "train", frames=9, size=32, item_size=16, speed=2.0, num_videos=6)
    for i in range(6):
        clip = src.clip(i)
        assert clip.shape == (9, 32, 32, 3) and clip.dtype == np.uint8
        for t, frame in enumerate(clip[..., 0]):
            rows, cols = np.nonzero(frame)
            assert len(rows) == 16 * 16  # one whole 16×16 item (a flat image stays flat when resized)
            assert (rows.min(), cols.min()) == tuple(src.paths(i)[0, t])
            assert rows.max() - rows.min() == cols.max() - cols.min() == 15
        assert src.paths(i).max() <= 32 - 16  # the walls are at size − item_size
    assert src.glyph_image(3).shape == (16, 16)
    assert src.settings()["item_size"] == 16
    assert "item_size" not in MovingMNIST(idx_dir, "train", size=32, num_videos=2).settings()  # 28: as before
    with pytest.raises(UserError, match="--size 12: .*--item-size 16"):
        MovingMNIST(idx_dir, "train", size=12, item_size=16)


def test_item_size_is_part_of_the_clip_folder_settings(idx_dir, tmp_path):
    from par.config import VideoSettings
    from par.data import video
    from par.data.movingmnist import MovingMNIST

    kw = dict(frames=5, size=32, num_videos=4)
    prepare_clips(MovingMNIST(idx_dir, "train", item_size=16, **kw), tmp_path / "c", shard_size=2, progress=False)
    m = VideoClips(tmp_path / "c").manifest
    assert m["settings"]["item_size"] == 16 and m["size"] == 32
    # another item size is another run: its shards are not taken as complete
    with pytest.raises(UserError, match="written by a different run"):
        prepare_clips(MovingMNIST(idx_dir, "train", item_size=20, **kw), tmp_path / "c", shard_size=2, progress=False)
    # `par prepare-video --item-size` reaches the source
    src = video.make_source(VideoSettings(source="moving-mnist", idx_dir=str(idx_dir), item_size=12, size=32,
                                          frames=3, num_videos=2), "test")
    assert src.glyph == 12 and src.settings()["item_size"] == 12


@pytest.mark.skipif(not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist absent")
def test_moving_fashion_mnist_at_item_size_16_from_the_debian_files():
    from par.data.movingmnist import MovingMNIST

    src = MovingMNIST(FMNIST, "test", frames=17, size=32, item_size=16, speed=2.0, num_videos=8)
    assert len(src.items) == 8 and src.settings()["item_size"] == 16
    for i in range(8):
        clip = src.clip(i)
        assert clip.shape == (17, 32, 32, 3)
        for t in (0, 8, 16):
            r, c = src.paths(i)[0, t]
            inside = clip[t, r:r + 16, c:c + 16, 0]
            assert clip[t, ..., 0].sum() == inside.sum() > 0  # all ink inside the item's 16×16 box
            np.testing.assert_array_equal(inside, src.glyph_image(src.which[i, 0]))
