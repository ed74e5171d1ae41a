"""par/data (crops, shards, tokenize, tinyset): ten-crop geometry, sharded tokenisation (resume, job array,
bad images), the shard reader and TokenDataset crop sampling, and the deterministic tiny ImageFolder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from par.cli import main
from par.data.crops import center_crop_arr, list_images, load_rgb, ten_crop_transform
from par.data.shards import CROP_ORDER, NUM_CROPS, TokenDataset, TokenShards, finalize, shard_name, write_shard
from par.data.tokenize import BATCH_DELAY_ENV, tokenize
from par.cluster import array_task
from par.errors import UserError
from par.data.tinyset import make_tinyset
from par.data.tokenizer import VQConfig, VQModel, load_vq, save_vq

REPO = Path(__file__).resolve().parents[1]
SIZE = 32  # image size for tokenisation tests: 2x2 grid with the 16x-downsampling tiny VQ
COMMON = ["--image-size", str(SIZE), "--shard-size", "5", "--batch-size", "2", "--device", "cpu", "--workers", "0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # 2 shared CPU cores; also, one thread everywhere keeps CPU conv results identical between runs
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    for k in list(os.environ):
        if k.startswith("SLURM_ARRAY"):
            monkeypatch.delenv(k)


def _rand_image(rng, w, h, mode="RGB"):
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return img if mode == "RGB" else img.convert(mode)


@pytest.fixture(scope="module")
def vq_ckpt(tmp_path_factory):
    # like the golden vq_tiny: ch 32, ch_mult (1,1,1,1,2), z 32, codebook 64 x 8 (random weights)
    torch.manual_seed(0)
    cfg = VQConfig(codebook_size=64, codebook_embed_dim=8, encoder_ch_mult=(1, 1, 1, 1, 2),
                   decoder_ch_mult=(1, 1, 1, 1, 2), z_channels=32, ch=32)
    path = tmp_path_factory.mktemp("vq") / "vq_tiny.pt"
    save_vq(VQModel(cfg), path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """2 classes x 6 images, assorted sizes and PIL modes (all decodable)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "P", "RGB", "CMYK", "RGBA"]
    for c in ("ant", "bee"):
        (root / c).mkdir()
        for i, mode in enumerate(modes):
            img = _rand_image(rng, int(rng.integers(36, 90)), int(rng.integers(36, 90)), mode)
            img.save(root / c / f"img{i}.{'jpg' if mode == 'CMYK' else 'png'}")
    (root / "bee" / "readme.txt").write_text("not an image extension: ignored, as by ImageFolder")
    return root


def _run(images, vq, out, *extra):
    assert main(["tokenize", "--images", str(images), "--vq", str(vq), "--out", str(out), *COMMON, *extra]) == 0


@pytest.fixture(scope="module")
def tokens(images, vq_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "ref"
    _run(images, vq_ckpt, out)
    return out


# ----------------------------------------------------------------------------- (a) geometry

def test_center_crop_arr_geometry():
    rng = np.random.default_rng(1)
    sq = rng.integers(0, 256, (70, 70, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(center_crop_arr(Image.fromarray(sq), 70)), sq)  # exact size: identity
    for w in (140, 141):  # short side already = size: no resize, centre crop at (w - 70) // 2 = 35
        wide = rng.integers(0, 256, (70, w, 3), dtype=np.uint8)
        assert np.array_equal(np.asarray(center_crop_arr(Image.fromarray(wide), 70)), wide[:, 35:105])
    # short side 142 >= 2*70: BOX-halve to 142x71, bicubic to round(142*70/71) x 70 = 140x70, crop at 35
    big = Image.fromarray(rng.integers(0, 256, (142, 284, 3), dtype=np.uint8))
    want = big.resize((142, 71), Image.BOX).resize((140, 70), Image.BICUBIC)
    got = center_crop_arr(big, 70)
    assert got.size == (70, 70)
    assert np.array_equal(np.asarray(got), np.asarray(want)[:, 35:105])


@pytest.mark.parametrize("size,crop_range,offsets", [
    (384, 1.1, [(0, 0), (0, 38), (38, 0), (38, 38), (19, 19)]),  # spec §8.1: 384 from int(422.4) = 422
    (64, 1.1, [(0, 0), (0, 6), (6, 0), (6, 6), (3, 3)]),  # 64 from int(70.4) = 70
])
def test_ten_crop_offsets_and_flips(size, crop_range, offsets):
    big = int(size * crop_range)
    arr = np.random.default_rng(2).integers(0, 256, (big, big, 3), dtype=np.uint8)
    x = ten_crop_transform(size, crop_range)(Image.fromarray(arr))
    assert x.shape == (10, 3, size, size) and x.dtype == torch.float32
    ref = transforms.Compose([  # the reference extract_codes_c2i.py chain
        transforms.Lambda(lambda im: center_crop_arr(im, big)), transforms.TenCrop(size),
        transforms.Lambda(lambda crops: torch.stack([transforms.ToTensor()(c) for c in crops])),
        transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], inplace=True)])
    assert torch.equal(x, ref(Image.fromarray(arr)))
    assert x.min() >= -1 and x.max() <= 1
    for flip, src in enumerate((arr, arr[:, ::-1])):
        for j, (top, left) in enumerate(offsets):
            want = torch.from_numpy(src[top:top + size, left:left + size].copy()).permute(2, 0, 1) / 255.0
            assert torch.allclose(x[5 * flip + j], (want - 0.5) / 0.5, atol=1e-6), (flip, j)


# ----------------------------------------------------------------------------- (b) shards + manifest

def test_tokenize_shards_and_manifest(images, vq_ckpt, tokens):
    m = json.loads((tokens / "manifest.json").read_text())
    assert m["num_shards"] == 3 and m["num_images"] == 12 and m["num_files"] == 12 and m["skipped"] == []
    assert m["grid"] == [2, 2] and m["codebook_size"] == 64 and m["num_classes"] == 2
    assert m["class_names"] == ["ant", "bee"] and m["image_size"] == SIZE and m["crop_range"] == 1.1
    assert m["tokenizer"]["checkpoint"] == str(vq_ckpt.absolute()) and len(m["tokenizer"]["sha256"]) == 64
    assert m["source_root"] == str(images.absolute())
    assert sorted(p.name for p in tokens.iterdir()) == ["manifest.json"] + sorted(
        name for k in range(3) for name in (shard_name(k), shard_name(k) + ".sha256"))  # each shard's digest
    parts = [np.load(tokens / shard_name(k)) for k in range(3)]
    assert [len(p["labels"]) for p in parts] == [5, 5, 2]
    codes = np.concatenate([p["codes"] for p in parts])
    assert codes.dtype == np.int16 and codes.shape == (12, NUM_CROPS, 4)
    assert codes.min() >= 0 and codes.max() < 64
    assert np.concatenate([p["labels"] for p in parts]).tolist() == [0] * 6 + [1] * 6
    assert np.concatenate([p["indices"] for p in parts]).tolist() == list(range(12))
    assert json.loads(str(parts[1]["meta"]))["start"] == 5
    # same codes as encoding the ten crops directly
    _, samples = list_images(images)
    model = load_vq(vq_ckpt)
    with torch.no_grad():
        for i in (0, 4, 9):
            x = ten_crop_transform(SIZE, 1.1)(load_rgb(samples[i][0]))
            assert np.array_equal(model.encode(x)[1].numpy(), codes[i])


def test_crop_range_one_encodes_two_crops_and_gives_the_ten_crop_codes(images, vq_ckpt, tmp_path):
    """crop_range 1 (the small preset): the five positions coincide, so tokenize encodes the centre and its flip
    only and copies their codes; the shards hold the same codes as encoding all ten crops."""
    out = tmp_path / "cr1"
    _run(images, vq_ckpt, out, "--crop-range", "1.0")
    m = json.loads((out / "manifest.json").read_text())
    assert m["crop_range"] == 1.0 and m["num_images"] == 12 and m["crop_order"] == CROP_ORDER
    codes = np.concatenate([np.load(out / shard_name(k))["codes"] for k in range(m["num_shards"])])
    assert codes.shape == (12, NUM_CROPS, 4)
    _, samples = list_images(images)
    model = load_vq(vq_ckpt)
    with torch.no_grad():
        for i in range(12):
            x = ten_crop_transform(SIZE, 1.0)(load_rgb(samples[i][0]))
            assert torch.equal(x[:5], x[4:5].expand(5, -1, -1, -1))  # the premise: one crop, and its mirror
            assert np.array_equal(model.encode(x)[1].numpy(), codes[i]), i
    assert (codes[:, :5] == codes[:, 4:5]).all() and (codes[:, 5:] == codes[:, 9:10]).all()
    assert not (codes[:, 4] == codes[:, 9]).all()  # the flip is encoded, not copied from the unflipped crop


def test_job_array_slots_match_single_run(images, vq_ckpt, tokens, tmp_path):
    out = tmp_path / "arr"
    _run(images, vq_ckpt, out, "--shard", "1", "--num-shards", "2", "--summary", str(tmp_path / "slot1.json"))
    assert sorted(p.name for p in out.iterdir()) == [shard_name(1), shard_name(1) + ".sha256"]  # k = 1 (mod 2) only
    summary = json.loads((tmp_path / "slot1.json").read_text())  # what the workflow's slot job leaves
    assert (summary["slot"], summary["slots"], summary["written"], summary["missing"]) == (1, 2, [1], [0, 2])
    with pytest.raises(UserError, match="2 of 3 shards missing"):
        finalize(out)
    assert main(["tokenize", "--finalize", "--out", str(out)]) == 2
    _run(images, vq_ckpt, out, "--shard", "0", "--num-shards", "2")  # the last finisher writes the manifest
    for name in [shard_name(k) for k in range(3)] + ["manifest.json"]:
        assert (out / name).read_bytes() == (tokens / name).read_bytes(), name


@pytest.mark.parametrize("first", [0, 1, 5])
def test_array_task_covers_every_index_once(first):
    """`--array=0-7`, `--array=1-8`, `--array=5-12`: the 8 tasks get indices 0..7, each once (the old sampler
    helper ignored SLURM_ARRAY_TASK_MIN, so `--array=1-8` skipped shard 0 and ran past the last)."""
    assert array_task({}) == (0, 1)
    got = [array_task({"SLURM_ARRAY_TASK_ID": str(t), "SLURM_ARRAY_TASK_MIN": str(first),
                       "SLURM_ARRAY_TASK_MAX": str(first + 7), "SLURM_ARRAY_TASK_COUNT": "8"})
           for t in range(first, first + 8)]
    assert got == [(i, 8) for i in range(8)]


def test_array_task_with_step_and_torchrun():
    env = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "6", "SLURM_ARRAY_TASK_STEP": "2"}
    assert [array_task({**env, "SLURM_ARRAY_TASK_ID": str(t)}) for t in (0, 2, 4, 6)] == [(i, 4) for i in range(4)]
    assert array_task({"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    with pytest.raises(UserError, match="does not fit"):
        array_task({**env, "SLURM_ARRAY_TASK_ID": "3"})


def test_input_errors(images, vq_ckpt, tokens, tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        tokenize(tmp_path / "nope", vq_ckpt, tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        tokenize(tmp_path / "empty", vq_ckpt, tmp_path / "o")
    with pytest.raises(UserError, match="--vq .*no such file"):
        tokenize(images, tmp_path / "vq.pt", tmp_path / "o")
    with pytest.raises(UserError, match="--shard 2"):
        tokenize(images, vq_ckpt, tmp_path / "o", shard=2, num_shards=2)
    with pytest.raises(UserError, match="different run"):  # existing shards from other settings: refuse
        tokenize(images, vq_ckpt, tokens, image_size=SIZE, crop_range=1.2, shard_size=5)
    assert main(["tokenize", "--images", str(tmp_path / "nope"), "--vq", str(vq_ckpt), "--out", "x"]) == 2


# ----------------------------------------------------------------------------- (c) kill and resume

def test_kill_and_resume_is_byte_identical(images, vq_ckpt, tokens, tmp_path):
    out = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_ARRAY")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
               **{BATCH_DELAY_ENV: "0.4"})
    cmd = [sys.executable, "-m", "par", "tokenize", "--images", str(images), "--vq", str(vq_ckpt),
           "--out", str(out), *COMMON]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / shard_name(0)
    deadline = time.monotonic() + 60
    while not first.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard written within 60 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # now inside shard 1 (0.4 s per 2-image batch)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / shard_name(1)).exists() and not (out / "manifest.json").exists()
    before = first.stat()
    s = tokenize(images, vq_ckpt, out, image_size=SIZE, shard_size=5, batch_size=2, device="cpu", workers=0,
                 progress=False)
    assert s["kept"] == [0] and s["written"] == [1, 2] and s["manifest"]
    assert first.stat().st_mtime_ns == before.st_mtime_ns and first.stat().st_ino == before.st_ino  # not redone
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tokens.iterdir())  # no temp files
    for k in range(3):
        a, b = np.load(out / shard_name(k)), np.load(tokens / shard_name(k))
        for key in ("codes", "labels", "indices", "meta"):
            assert np.array_equal(a[key], b[key]), (k, key)
        assert (out / shard_name(k)).read_bytes() == (tokens / shard_name(k)).read_bytes()
    assert json.loads((out / "manifest.json").read_text()) == json.loads((tokens / "manifest.json").read_text())
    # a third run finds everything done and changes nothing
    s = tokenize(images, vq_ckpt, out, image_size=SIZE, shard_size=5, batch_size=2, device="cpu", workers=0,
                 progress=False)
    assert s["written"] == [] and s["kept"] == [0, 1, 2]


# ----------------------------------------------------------------------------- (d) bad images

def test_corrupt_images_are_reported_and_skipped(vq_ckpt, tmp_path):
    root, rng = tmp_path / "imgs", np.random.default_rng(3)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            _rand_image(rng, 40, 40).save(root / c / f"ok{i}.png")
    _rand_image(rng, 64, 64).save(root / "a" / "trunc.jpg", quality=95)
    data = (root / "a" / "trunc.jpg").read_bytes()
    (root / "a" / "trunc.jpg").write_bytes(data[: len(data) * 2 // 3])  # truncated JPEG
    (root / "b" / "fake.png").write_text("this is not a PNG")  # non-image with an image extension
    _, samples = list_images(root)
    bad = {i: f"{Path(p).parent.name}/{Path(p).name}" for i, (p, _) in enumerate(samples)
           if Path(p).name in ("trunc.jpg", "fake.png")}
    assert sorted(bad.values()) == ["a/trunc.jpg", "b/fake.png"]

    out = tmp_path / "tok"
    s = tokenize(root, vq_ckpt, out, image_size=SIZE, shard_size=4, batch_size=3, device="cpu", workers=0,
                 progress=False)
    assert s["manifest"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["num_files"] == 8 and m["num_images"] == 6 and m["num_skipped"] == 2
    assert {e["index"]: e["path"] for e in m["skipped"]} == bad
    reasons = {e["path"]: e["reason"] for e in m["skipped"]}
    assert "truncated" in reasons["a/trunc.jpg"] and "cannot identify" in reasons["b/fake.png"]
    indices = np.concatenate([np.load(out / shard_name(k))["indices"] for k in range(m["num_shards"])])
    assert sorted(indices.tolist() + list(bad)) == list(range(8))  # no holes except the skipped ones
    metas = [json.loads(str(np.load(out / shard_name(k))["meta"])) for k in range(2)]
    assert sum(len(x["skipped"]) for x in metas) == 2  # also recorded in the shards
    ds = TokenDataset(out, crop=0)
    assert len(ds) == 6 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]


# ----------------------------------------------------------------------------- (e) TokenDataset

def test_token_dataset_crops(tokens):
    codes = np.concatenate([np.load(tokens / shard_name(k))["codes"] for k in range(3)]).astype(np.int64)
    ds = TokenDataset(tokens, crop="random", seed=0)
    assert len(ds) == 12 and ds.grid == (2, 2) and ds.num_classes == 2 and ds.codebook_size == 64
    i = int(np.argmax([len({tuple(c) for c in codes[j]}) for j in range(12)]))  # item with most distinct crops
    distinct = {tuple(c) for c in codes[i]}
    assert len(distinct) >= 2
    draws = [ds[i] for _ in range(200)]
    assert all(c.dtype == torch.int64 and c.shape == (4,) and y.item() == i // 6 for c, y in draws)
    seen = {tuple(c.tolist()) for c, _ in draws}
    assert seen == distinct  # every draw is one of the 10 crops; all of them come up
    again = TokenDataset(tokens, crop="random", seed=0)
    assert all(torch.equal(again[i][0], c) for c, _ in draws)  # same seed, same draws
    for crop in (0, 7):
        fixed = TokenDataset(tokens, crop=crop)
        for j in (0, 5, 11):
            c, y = fixed[j]
            assert np.array_equal(c.numpy(), codes[j, crop]) and y.item() == j // 6
            assert torch.equal(fixed[j][0], c)
    x, y = next(iter(torch.utils.data.DataLoader(TokenDataset(tokens), batch_size=5, shuffle=False)))
    assert x.shape == (5, 4) and x.dtype == torch.int64 and y.tolist() == [0] * 5
    with pytest.raises(UserError, match="crop=10"):
        TokenDataset(tokens, crop=10)


def test_token_dataset_errors(tokens, tmp_path):
    with pytest.raises(UserError, match="manifest.json: missing"):
        TokenDataset(tmp_path)
    partial = tmp_path / "partial"
    partial.mkdir()
    for p in tokens.iterdir():
        if p.name != shard_name(2):
            (partial / p.name).write_bytes(p.read_bytes())
    with pytest.raises(UserError, match="shard-00002.npz: missing"):
        TokenDataset(partial)


def test_shard_reader_takes_the_centre_crop_from_metadata(tokens, vq_ckpt, tmp_path):
    from par.analysis import entropy

    codes = np.concatenate([np.load(tokens / shard_name(k))["codes"] for k in range(3)])
    labels = np.concatenate([np.load(tokens / shard_name(k))["labels"] for k in range(3)])
    reader = TokenShards(tokens)
    assert reader.crop_order == CROP_ORDER and reader.centre_crop == 4 and reader.num_crops == NUM_CROPS
    assert (reader.grid, reader.codebook_size, reader.num_classes) == ((2, 2), 64, 2)
    got, got_labels = reader.load()
    assert np.array_equal(got, codes) and got.dtype == np.int16 and np.array_equal(got_labels, labels)
    assert np.array_equal(reader.load(crop=reader.centre_crop, num=7)[0], codes[:7, 4])
    assert not np.array_equal(codes[:, 0], codes[:, 4])  # else the checks below could not tell the crops apart

    moved = tmp_path / "moved"  # the same shards, but a manifest that puts the centre crop first
    moved.mkdir()
    for p in tokens.iterdir():
        (moved / p.name).write_bytes(p.read_bytes())
    m = json.loads((moved / "manifest.json").read_text())
    m["crop_order"] = CROP_ORDER[4:] + CROP_ORDER[:4]
    (moved / "manifest.json").write_text(json.dumps(m))
    assert TokenShards(moved).centre_crop == 0
    book = entropy._read_codebook(vq_ckpt)
    pick = np.sort(np.random.default_rng(0).permutation(len(codes))[:7])  # the fixed draw (shards are class-sorted)
    for src, crop in ((tokens, 4), (moved, 0)):
        out = tmp_path / f"features-{src.name}.npz"
        assert main(["entropy", "features", "--codes", str(src), "--codebook", str(vq_ckpt), "--num-images", "7",
                     "--out", str(out)]) == 0
        np.testing.assert_array_equal(np.load(out)["features"], book[codes[pick, crop]].reshape(7, 2, 2, -1)
                                      .astype(np.float32))

    # a single shard file whose own metadata records the order
    write_shard(tmp_path / "one.npz", codes[:3], labels[:3], range(3), {"crop_order": m["crop_order"]})
    assert np.array_equal(entropy._read_codes(tmp_path / "one.npz", 3, None), codes[:3, 0])
    write_shard(tmp_path / "one.npz", codes[:3], labels[:3], range(3), {"crop_order": [f"c{i}" for i in range(10)]})
    with pytest.raises(UserError, match="no 'center' crop; choose one with --crop"):
        entropy._read_codes(tmp_path / "one.npz", 3, None)
    assert np.array_equal(entropy._read_codes(tmp_path / "one.npz", 3, 7), codes[:3, 7])


# ----------------------------------------------------------------------------- (f) tiny set

def test_make_tinyset_deterministic(tmp_path):
    def tree(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert main(["make-tinyset", "--out", str(tmp_path / "a"), "--images-per-class", "3", "--size", "16"]) == 0
    make_tinyset(tmp_path / "b", images_per_class=3, size=16, seed=0)
    make_tinyset(tmp_path / "c", images_per_class=3, size=16, seed=1)
    a, b, c = tree(tmp_path / "a"), tree(tmp_path / "b"), tree(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a != c
    classes, samples = list_images(tmp_path / "a")
    assert len(classes) >= 8 and len(samples) == 3 * len(classes)
    assert all(n.startswith(f"c{i:02d}_") for i, n in enumerate(classes))
    img = Image.open(samples[0][0])
    assert img.mode == "RGB" and img.size == (16, 16)
    # classes are photos, not noise: mean colours differ between classes
    means = [np.mean([np.asarray(Image.open(p), np.float32).mean((0, 1)) for p, y in samples if y == k], 0)
             for k in range(len(classes))]
    assert min(np.abs(means[i] - means[j]).max() for i in range(len(means)) for j in range(i)) > 2
