"""`par prepare-images` (par/data/split.py): IDX files (gzipped or plain) and ImageFolder trees brought to one
layout, `train/` and `test/` (held out), with `images.json` marking the tree complete."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from par.cli import main
from par.data.split import idx_split, prepare_images, read_idx
from par.errors import UserError

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    """An IDX file as LeCun's MNIST files are written: magic 0 0 <type> <ndim>, big-endian sizes, data."""
    arr = np.asarray(arr)
    header = bytes([0, 0, IDX_CODES[arr.dtype], arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    data = header + arr.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)
    return path


def unique_images(n: int, side: int = 28, seed: int = 0) -> np.ndarray:
    """n distinct uint8 images (N, side, side), none of them zero at the border (so padding shows)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, (n, side, side), dtype=np.uint8)
    x[:, 0, 0] = np.arange(n) % 255 + 1  # distinct even by chance
    return x


@pytest.fixture
def idx_pair(tmp_path):
    """3 classes: 12 train images (label i % 3) and 6 test images (label i % 3), gzipped like Fashion-MNIST."""
    d = tmp_path / "idx"
    d.mkdir()
    x, tx = unique_images(12, seed=1), unique_images(6, seed=2)
    y, ty = np.arange(12, dtype=np.uint8) % 3, np.arange(6, dtype=np.uint8) % 3
    paths = {"images": write_idx(d / "train-images-idx3-ubyte.gz", x),
             "labels": write_idx(d / "train-labels-idx1-ubyte.gz", y),
             "heldout_images": write_idx(d / "t10k-images-idx3-ubyte.gz", tx),
             "heldout_labels": write_idx(d / "t10k-labels-idx1-ubyte.gz", ty)}
    return {"paths": {k: str(v) for k, v in paths.items()}, "x": x, "y": y, "tx": tx, "ty": ty}


def _idx_argv(pair, out, *extra):
    p = pair["paths"]
    return ["prepare-images", "--source", "idx", "--images", p["images"], "--labels", p["labels"],
            "--heldout-images", p["heldout_images"], "--heldout-labels", p["heldout_labels"], "--out", str(out),
            *extra]


def _pngs(root: Path) -> dict[str, np.ndarray]:
    """`class/file` → pixels of every PNG under an ImageFolder root."""
    return {f"{p.parent.name}/{p.name}": np.asarray(Image.open(p)) for p in sorted(root.glob("*/*.png"))}


# ----------------------------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_gzipped_and_plain(tmp_path, gz):
    x = unique_images(5, side=7)
    y = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    wide = np.array([[1, -2], [70000, 3]], dtype=">i4")  # a non-byte type: big-endian
    got = [read_idx(write_idx(tmp_path / f"{name}.idx", a, gz)) for name, a in (("x", x), ("y", y), ("w", wide))]
    assert got[0].dtype == np.uint8 and got[0].shape == (5, 7, 7) and np.array_equal(got[0], x)
    assert got[1].shape == (5,) and np.array_equal(got[1], y)
    assert np.array_equal(got[2], wide) and got[2].tolist() == [[1, -2], [70000, 3]]


def test_read_idx_refuses_bad_files_naming_them(tmp_path):
    good = write_idx(tmp_path / "good.gz", unique_images(4, side=5))
    raw = gzip.decompress(good.read_bytes())

    bad_magic = tmp_path / "bad-magic.idx"
    bad_magic.write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(UserError, match=r"bad-magic\.idx: not an IDX file \(bad magic"):
        read_idx(bad_magic)
    png = tmp_path / "picture.idx"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(UserError, match=r"picture\.idx: not an IDX file"):
        read_idx(png)

    short = tmp_path / "short.idx"  # plain, data cut off
    short.write_bytes(raw[:-7])
    with pytest.raises(UserError, match=r"short\.idx: \d+ bytes, but its header \(4, 5, 5\).* truncated"):
        read_idx(short)
    long = tmp_path / "long.idx"  # trailing junk is not silently dropped either
    long.write_bytes(raw + b"xx")
    with pytest.raises(UserError, match=r"long\.idx: .*needs"):
        read_idx(long)

    cut = tmp_path / "cut.gz"  # a gzip stream that ends early (an interrupted download)
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(UserError, match=r"cut\.gz: cannot read .*truncated"):
        read_idx(cut)

    with pytest.raises(UserError, match=r"none\.gz: no such IDX file.*dataset-fashion-mnist"):
        read_idx(tmp_path / "none.gz")


def test_idx_pair_checks_name_the_file(tmp_path):
    x = write_idx(tmp_path / "imgs.gz", unique_images(5, side=6))
    y4 = write_idx(tmp_path / "labels4.gz", np.zeros(4, np.uint8))
    with pytest.raises(UserError, match=r"labels4\.gz: \(4,\) labels for 5 images in .*imgs\.gz; pass the matching"):
        idx_split(str(x), str(y4))
    y2d = write_idx(tmp_path / "labels2d.gz", np.zeros((5, 2), np.uint8))
    with pytest.raises(UserError, match=r"labels2d\.gz"):
        idx_split(str(x), str(y2d))
    wide = write_idx(tmp_path / "int-images.gz", np.zeros((5, 6, 6), ">i4"))
    with pytest.raises(UserError, match=r"int-images\.gz: IDX images must be uint8"):
        idx_split(str(wide), str(write_idx(tmp_path / "y5.gz", np.zeros(5, np.uint8))))
    with pytest.raises(UserError, match=r"pad_to=4 is smaller than the 6x6 images of .*imgs\.gz"):
        idx_split(str(x), str(write_idx(tmp_path / "y5b.gz", np.zeros(5, np.uint8))), pad_to=4)


# ----------------------------------------------------------------------------------------- --source idx


def test_prepare_images_idx_pads_and_writes_class_folders(idx_pair, tmp_path):
    out = tmp_path / "images"
    assert main(_idx_argv(idx_pair, out, "--pad-to", "32")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["images.json", "test", "train"]  # no temp folder left
    for split, x, y in (("train", idx_pair["x"], idx_pair["y"]), ("test", idx_pair["tx"], idx_pair["ty"])):
        assert sorted(p.name for p in (out / split).iterdir()) == ["c0", "c1", "c2"]
        got = _pngs(out / split)
        assert len(got) == len(x)
        for i in range(len(x)):
            img = got[f"c{y[i]}/{i:06d}.png"]  # class folder = label; file = index in the split
            assert img.shape == (32, 32) and img.dtype == np.uint8  # grey stays grey
            assert np.array_equal(img[2:30, 2:30], x[i])  # 28 → 32: centred, 2 px each side
            border = np.ones((32, 32), bool)
            border[2:30, 2:30] = False
            assert not img[border].any()  # zero padding
        assert [len(list((out / split / c).iterdir())) for c in ("c0", "c1", "c2")] == [len(x) // 3] * 3
    info = json.loads((out / "images.json").read_text())
    assert info["source"] == "idx" and info["classes"] == ["c0", "c1", "c2"]
    assert info["train"] == 12 and info["test"] == 6 and info["image_shape"] == [32, 32]
    assert info["images"] == idx_pair["paths"]["images"]


def test_prepare_images_idx_without_padding_keeps_the_size(idx_pair, tmp_path):
    prepare_images(str(tmp_path / "o"), "idx", **idx_pair["paths"])
    got = _pngs(tmp_path / "o" / "train")
    assert {v.shape for v in got.values()} == {(28, 28)}
    assert np.array_equal(got["c1/000004.png"], idx_pair["x"][4])


def test_images_json_is_written_last_and_removed_by_a_failed_rerun(idx_pair, tmp_path):
    """images.json marks the tree complete (the workflow's output file): a rerun that fails leaves none, so a
    stale marker never vouches for a half-rewritten tree."""
    out = tmp_path / "images"
    prepare_images(str(out), "idx", **idx_pair["paths"])
    marker = out / "images.json"
    assert marker.stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in out.rglob("*.png"))
    bad = dict(idx_pair["paths"], heldout_labels=idx_pair["paths"]["labels"])  # 12 labels for 6 test images
    with pytest.raises(UserError, match="labels for 6 images"):
        prepare_images(str(out), "idx", **bad)
    assert not marker.exists()
    with pytest.raises(UserError, match="needs data.heldout_images and data.heldout_labels"):
        prepare_images(str(out), "idx", images=idx_pair["paths"]["images"], labels=idx_pair["paths"]["labels"])


def test_train_images_keeps_a_fixed_subset_and_the_whole_test_split(idx_pair, tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(_idx_argv(idx_pair, out, "--train-images", "5")) == 0
        runs.append((_pngs(out / "train"), _pngs(out / "test"), json.loads((out / "images.json").read_text())))
    (train, test, info), (train_b, _, _) = runs
    assert info["train"] == 5 and info["test"] == 6
    assert len(train) == 5 and len(test) == 6  # the held-out split is never subsetted
    assert train.keys() == train_b.keys() and all(np.array_equal(train[k], train_b[k]) for k in train)  # fixed
    originals = {idx_pair["x"][i].tobytes(): idx_pair["y"][i] for i in range(12)}
    kept = [(k, v.tobytes()) for k, v in train.items()]
    assert all(b in originals for _, b in kept) and len({b for _, b in kept}) == 5  # 5 distinct originals
    assert all(k.split("/")[0] == f"c{originals[b]}" for k, b in kept)  # each under its own label
    other = tmp_path / "other-seed"
    assert main(_idx_argv(idx_pair, other, "--train-images", "5", "--seed", "3")) == 0
    assert {v.tobytes() for v in _pngs(other / "train").values()} != {b for _, b in kept}  # the seed draws it
    full = tmp_path / "all"
    assert main(_idx_argv(idx_pair, full, "--train-images", "100")) == 0  # more than there are: all of them
    assert json.loads((full / "images.json").read_text())["train"] == 12


# --------------------------------------------------------------------------------- --source imagefolder


def make_folder(root: Path, counts: dict[str, int], seed: int = 0, side: int = 8) -> Path:
    """An ImageFolder with `counts[class]` distinct small RGB PNGs per class."""
    rng = np.random.default_rng(seed)
    for c, n in counts.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / c / f"img{i:03d}.png")
    return root


def _links(split: Path) -> dict[str, set[str]]:
    """class → the files its symlinks point at (every entry must be a symlink)."""
    out = {}
    for c in sorted(p.name for p in split.iterdir()):
        entries = sorted((split / c).iterdir())
        assert all(p.is_symlink() for p in entries), entries
        assert all(os.path.isabs(os.readlink(p)) for p in entries)  # valid from anywhere
        out[c] = {str(p.resolve()) for p in entries}
    return out


def test_imagefolder_holds_out_a_fraction_of_every_class(tmp_path):
    src = make_folder(tmp_path / "mine", {"boots": 10, "coats": 20})
    out = tmp_path / "images"
    assert main(["prepare-images", "--source", "imagefolder", "--images", str(src), "--heldout-fraction", "0.2",
                 "--out", str(out)]) == 0
    train, test = _links(out / "train"), _links(out / "test")
    assert {c: len(v) for c, v in test.items()} == {"boots": 2, "coats": 4}
    assert {c: len(v) for c, v in train.items()} == {"boots": 8, "coats": 16}
    for c in ("boots", "coats"):
        assert not train[c] & test[c]  # disjoint
        assert train[c] | test[c] == {str((src / c / p).resolve()) for p in os.listdir(src / c)}  # together: all
        assert all(Path(t).parent == (src / c).resolve() for t in train[c] | test[c])  # under their own class
    info = json.loads((out / "images.json").read_text())
    assert info["source"] == "imagefolder" and info["classes"] == ["boots", "coats"]
    assert info["train"] == 24 and info["test"] == 6 and info["heldout_images"] is None
    # the same seed draws the same split; another seed another one
    again, other = tmp_path / "again", tmp_path / "other"
    prepare_images(str(again), "imagefolder", str(src), heldout_fraction=0.2, seed=0)
    prepare_images(str(other), "imagefolder", str(src), heldout_fraction=0.2, seed=1)
    assert _links(again / "test") == test and _links(again / "train") == train
    assert _links(other / "test") != test


def test_imagefolder_train_images_subsets_only_the_train_split(tmp_path):
    src = make_folder(tmp_path / "mine", {"a": 10, "b": 10})
    info = prepare_images(str(tmp_path / "o"), "imagefolder", str(src), heldout_fraction=0.2, train_images=6)
    assert info["train"] == 6 and info["test"] == 4
    train, test = _links(tmp_path / "o" / "train"), _links(tmp_path / "o" / "test")
    assert sum(map(len, train.values())) == 6 and not (set().union(*train.values()) & set().union(*test.values()))


def test_imagefolder_fraction_that_cannot_split_a_class_is_refused(tmp_path):
    src = make_folder(tmp_path / "mine", {"a": 10, "tiny": 2})
    with pytest.raises(UserError, match=r"mine/tiny: 2 images cannot be split with data.heldout_fraction=0.1"):
        prepare_images(str(tmp_path / "o"), "imagefolder", str(src), heldout_fraction=0.1)
    assert not (tmp_path / "o" / "images.json").exists()


def test_imagefolder_with_a_heldout_folder(tmp_path):
    src = make_folder(tmp_path / "train", {"a": 4, "b": 3})
    held = make_folder(tmp_path / "val", {"a": 2, "b": 2}, seed=1)
    out = tmp_path / "images"
    info = prepare_images(str(out), "imagefolder", str(src), heldout_images=str(held))
    assert info["train"] == 7 and info["test"] == 4 and info["heldout_images"] == str(held)
    assert {c: len(v) for c, v in _links(out / "train").items()} == {"a": 4, "b": 3}  # all of it trains
    test = _links(out / "test")
    assert test == {c: {str((held / c / p).resolve()) for p in os.listdir(held / c)} for c in ("a", "b")}
    # the held-out folder must have the same classes (same class indices)
    wrong = make_folder(tmp_path / "val-wrong", {"a": 2, "c": 2})
    with pytest.raises(UserError, match=r"heldout_images .*val-wrong: class folders \['a', 'c'\].* differ from "
                                        r"data.images .*train: \['a', 'b'\]"):
        prepare_images(str(tmp_path / "o2"), "imagefolder", str(src), heldout_images=str(wrong))
    assert main(["prepare-images", "--source", "imagefolder", "--images", str(src), "--heldout-images", str(wrong),
                 "--out", str(tmp_path / "o3")]) == 2
    assert not (tmp_path / "o3" / "images.json").exists()


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(UserError, match="source 'tinyset' is neither idx nor imagefolder"):
        prepare_images(str(tmp_path / "o"), "tinyset", "x")


# --------------------------------------------------------------------------------- held-out images never trained on


def test_one_image_per_class_names_heldout_images(tmp_path, capsys):
    src = make_folder(tmp_path / "mine", {"a": 1, "b": 1})
    assert main(["prepare-images", "--source", "imagefolder", "--images", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mine/a: 1 image, which no data.heldout_fraction can split" in err
    assert "set data.heldout_images to an ImageFolder of other images of the same classes" in err


@pytest.mark.parametrize("layout", ["same", "inside", "around", "copy"])
def test_heldout_images_overlapping_the_training_images_are_refused(tmp_path, layout):
    src = make_folder(tmp_path / "train", {"a": 3, "b": 3})
    if layout == "copy":  # another folder, but a training image copied into it
        held = make_folder(tmp_path / "val", {"a": 2, "b": 2}, seed=1)
        (held / "b" / "copied.png").write_bytes((src / "a" / "img001.png").read_bytes())
    else:
        held = {"same": src, "inside": src / "a", "around": tmp_path}[layout]
    with pytest.raises(UserError) as e:
        prepare_images(str(tmp_path / "o"), "imagefolder", str(src), heldout_images=str(held))
    words = {"same": "is data.images", "inside": "lies inside data.images", "around": "contains data.images",
             "copy": "1 of 5 held-out images are byte-identical to training images"}[layout]
    assert words in str(e.value) and "point data.heldout_images at a separate folder" in str(e.value), str(e.value)
    assert not (tmp_path / "o" / "images.json").exists()


def test_idx_heldout_pair_with_the_training_content_is_refused(idx_pair, tmp_path):
    p = idx_pair["paths"]
    copy = tmp_path / "copy-of-train-images.gz"
    copy.write_bytes(Path(p["images"]).read_bytes())
    for held in (p["images"], str(copy)):
        with pytest.raises(UserError, match=r"data.heldout_images .* (is|the same content as) data.images"):
            prepare_images(str(tmp_path / "o"), "idx", p["images"], p["labels"], held, p["labels"])


def test_shared_files_hashes_only_files_whose_size_matches(tmp_path, monkeypatch):
    from par.data import split

    files = {}
    for name, data in {"t1": b"x" * 10, "t2": b"y" * 10, "t3": b"z" * 99, "h1": b"y" * 10, "h2": b"w" * 7}.items():
        (tmp_path / name).write_bytes(data)
        files[name] = str(tmp_path / name)
    read = []
    monkeypatch.setattr(split, "_digest", lambda p, real=split._digest: read.append(Path(p).name) or real(p))
    assert split.shared_files([files["h1"], files["h2"]], [files["t1"], files["t2"], files["t3"]]) == \
        [(files["h1"], files["t2"])]
    assert sorted(read) == ["h1", "t1", "t2"]  # t3 and h2 have no partner of their size: never read


def test_dag_time_listing_counts_what_torchvision_lists(tmp_path):
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from par.data.crops import list_images
    from par.data.split import IMAGE_EXTENSIONS, class_counts

    assert IMAGE_EXTENSIONS == IMG_EXTENSIONS
    src = make_folder(tmp_path / "mine", {"a": 2, "b": 3})
    (src / "a" / "notes.txt").write_text("not an image")
    (src / "b" / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(src / "b" / "sub" / "deep.PNG")
    classes, samples = list_images(src)
    assert class_counts(str(src)) == {c: sum(s[1] == i for s in samples) for i, c in enumerate(classes)}
