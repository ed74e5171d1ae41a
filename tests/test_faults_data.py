"""Issue #18 ("fail clean at every boundary"), the data side: every case runs a `par` command the way a user
does and checks the exit status, the one-line message (what, where, the fix) and that the output folder holds
nothing new or half-written.

1. token shards are checked against their manifest before training / entropy start;
2. `par tokenize` checks its inputs (a bad --vq …) before it creates --out;
3. `par train-vq` names every image it skips and records them in vq_metrics.json;
4. concurrent `par tokenize` workers on one folder split the shards (a claim per shard);
5. 16-bit grey images are scaled to 8 bit, not clipped white; other high-depth images are refused by name;
6. what a killed `par tokenize` left (temp files, claims) is removed when the next one starts.
"""

import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from par.cli import main
from par.data.tokenize import BATCH_DELAY_ENV

REPO = Path(__file__).resolve().parents[1]
SIZE = 8  # tokenizer input side: a 4x4 grid with the 2x-downsampling VQ below
TOK = ["--image-size", str(SIZE), "--shard-size", "2", "--batch-size", "1", "--device", "cpu", "--workers", "0"]


from test_data import no_slurm, one_thread  # noqa: E402,F401 — the same autouse fixtures (one thread, no array env)


def _tree(root: Path) -> dict:
    """{relative path: bytes} of every file under root (empty if root does not exist)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
        if root.exists() else {}


def _one_error_line(err: str, command: str, pattern: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.fullmatch(rf"par {command}: error: .*{pattern}.*", lines[0]), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def vq_ckpt(tmp_path_factory):
    from par.data.tokenizer import VQConfig, VQModel, save_vq

    torch.manual_seed(0)
    cfg = VQConfig(codebook_size=32, codebook_embed_dim=4, encoder_ch_mult=(1, 2), decoder_ch_mult=(1, 2),
                   z_channels=32, ch=32, enc_res_blocks=1, dec_res_blocks=1)
    path = tmp_path_factory.mktemp("vq") / "vq.pt"
    save_vq(VQModel(cfg), path)
    return path


def _write_images(root: Path, per_class: int = 3, seed: int = 0, size: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _write_images(tmp_path_factory.mktemp("imgs") / "imgs")  # 6 images → 3 shards of 2


@pytest.fixture(scope="module")
def reference(images, vq_ckpt, tmp_path_factory):
    """A complete single-run token folder: the bytes every other run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "tok"
    assert main(["tokenize", "--images", str(images), "--vq", str(vq_ckpt), "--out", str(out), *TOK]) == 0
    return out


# ----------------------------------------------------------------------------- 1. shards vs manifest

GRID, VOCAB, CLASSES, CROPS, PER_SHARD = (4, 4), 16, 2, 10, 8


def _token_dir(root: Path, bad: str | None = None) -> Path:
    """Two np.savez shards and a hand-written manifest that says int16 codes; shard 1 spoilt as `bad` says."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for k in range(2):
        n, crops, tokens = PER_SHARD, CROPS, int(np.prod(GRID))
        if k == 1 and bad == "crops":
            crops = 5
        if k == 1 and bad == "grid":
            tokens = 9  # a 3x3 grid's shard
        codes = rng.integers(0, VOCAB, (n, crops, tokens)).astype(np.int16)
        labels = rng.integers(0, CLASSES, n)
        if k == 1:
            if bad == "dtype":
                codes = codes.astype(np.float32)
            elif bad == "code":
                codes[3, 2, 5] = VOCAB  # one code of a larger codebook
            elif bad == "negative":
                codes[6, 0, 0] = -1
            elif bad == "label":
                labels[4] = CLASSES
        np.savez(root / f"shard-{k:05d}.npz", codes=codes, labels=labels, indices=np.arange(n) + k * n)
    (root / "manifest.json").write_text(json.dumps({
        "grid": list(GRID), "codebook_size": VOCAB, "num_classes": CLASSES, "num_crops": CROPS,
        "codes_dtype": "int16", "num_shards": 2, "num_images": 2 * PER_SHARD}))
    return root


TRAIN = ["--launcher", "inprocess", "--size", "tiny-S", "--order", "raster", "--n", "1", "--global-batch", "4",
         "--max-steps", "1", "--schedule", "constant"]
SHARD_ERRORS = {  # spoilt shard → what the one line must say about shard-00001.npz
    "dtype": r"shard-00001\.npz: codes are float32, manifest\.json says int16; re-run `par tokenize`",
    "grid": r"shard-00001\.npz: 9 codes per crop, but the grid 4×4 in manifest\.json needs 16; re-run",
    "crops": r"shard-00001\.npz: 5 crops per image, manifest\.json says 10; re-run",
    "code": r"shard-00001\.npz: image 3 has code 16, outside 0\.\.15 \(codebook_size 16 in manifest\.json\);",
    "negative": r"shard-00001\.npz: image 6 has code -1, outside 0\.\.15 ",
    "label": r"shard-00001\.npz: image 4 has label 2, outside 0\.\.1 \(num_classes 2 in manifest\.json\);",
}


@pytest.mark.parametrize("bad", list(SHARD_ERRORS))
def test_train_checks_every_shard_against_the_manifest(bad, tmp_path, capsys):
    data = _token_dir(tmp_path / "tok", bad)
    before = _tree(tmp_path)
    capsys.readouterr()
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *TRAIN])
    _one_error_line(capsys.readouterr().err, "train", SHARD_ERRORS[bad])
    assert rc == 2
    assert _tree(tmp_path) == before  # no run folder, nothing touched


def test_entropy_checks_the_shards_it_reads(vq_ckpt, tmp_path, capsys):
    data = _token_dir(tmp_path / "tok", "code")
    before = _tree(tmp_path)
    capsys.readouterr()
    rc = main(["entropy", "features", "--codes", str(data), "--codebook", str(vq_ckpt),
               "--num-images", str(2 * PER_SHARD), "--out", str(tmp_path / "features.npz")])
    _one_error_line(capsys.readouterr().err, "entropy", SHARD_ERRORS["code"])
    assert rc == 2
    assert _tree(tmp_path) == before


def test_good_shards_still_train(tmp_path):
    data = _token_dir(tmp_path / "tok")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *TRAIN]) == 0
    assert (tmp_path / "run" / "model.pt").is_file()


# ----------------------------------------------------------------------------- 2. inputs before outputs

def test_tokenize_bad_vq_creates_no_output_folder(images, tmp_path, capsys):
    bad = tmp_path / "not-a-vq.pt"
    bad.write_bytes(b"this is not a checkpoint")
    out = tmp_path / "out" / "tok"
    before = _tree(tmp_path)
    capsys.readouterr()
    rc = main(["tokenize", "--images", str(images), "--vq", str(bad), "--out", str(out), *TOK])
    _one_error_line(capsys.readouterr().err, "tokenize", re.escape(str(bad)) + r": cannot be read")
    assert rc == 2
    assert not (tmp_path / "out").exists() and _tree(tmp_path) == before


def test_tokenize_checks_image_size_against_the_vq_before_creating_output(images, vq_ckpt, tmp_path, capsys):
    out = tmp_path / "tok"
    capsys.readouterr()
    rc = main(["tokenize", "--images", str(images), "--vq", str(vq_ckpt), "--out", str(out),
               *TOK, "--image-size", "9"])
    _one_error_line(capsys.readouterr().err, "tokenize", r"--image-size 9: must be a multiple of the VQ downsampling")
    assert rc == 2
    assert not out.exists()


# ----------------------------------------------------------------------------- 3. train-vq names its skips

VQ_TRAIN = ["--image-size", "16", "--ch", "32", "--ch-mult", "1,2", "--z-channels", "32", "--codebook-size", "16",
            "--steps", "2", "--batch-size", "2", "--heldout", "2", "--restart-every", "0"]


def test_train_vq_reports_and_records_skipped_images(tmp_path, capsys):
    root = _write_images(tmp_path / "imgs", per_class=3, size=20)
    (root / "a" / "fake.png").write_text("not a PNG")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "b" / "trunc.jpg")
    data = (root / "b" / "trunc.jpg").read_bytes()
    (root / "b" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "vq"
    capsys.readouterr()
    assert main(["train-vq", "--images", str(root), "--out", str(out), *VQ_TRAIN]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert len(err) == 2, err
    assert re.fullmatch(r"par train-vq: skipped a/fake\.png: UnidentifiedImageError: cannot identify .*", err[0])
    assert re.fullmatch(r"par train-vq: skipped b/trunc\.jpg: OSError: (?i:.*truncated.*)", err[1])
    m = json.loads((out / "vq_metrics.json").read_text())
    assert m["num_skipped"] == 2 and [s["path"] for s in m["skipped"]] == ["a/fake.png", "b/trunc.jpg"]
    assert all(s["reason"] for s in m["skipped"])
    assert m["train_images"] + m["heldout_images"] == 6
    assert sorted(p.name for p in out.iterdir()) == ["vq.pt", "vq.pt.sha256", "vq_metrics.json"]


def test_train_vq_with_no_usable_images_fails_cleanly(tmp_path, capsys):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            (root / c / f"{i}.png").write_text("not a PNG")
    out = tmp_path / "vq"
    capsys.readouterr()
    rc = main(["train-vq", "--images", str(root), "--out", str(out), *VQ_TRAIN])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("par train-vq: skipped ")]
    _one_error_line("\n".join(err), "train-vq", r"0 readable images \(4 skipped, listed above\), need more than "
                                                r"--heldout 2")
    assert rc == 2
    assert not out.exists()


# ----------------------------------------------------------------------------- 4. workers split the shards

def test_a_shard_claimed_by_a_live_worker_is_left_to_it(images, vq_ckpt, reference, tmp_path, capsys):
    out = tmp_path / "tok"
    out.mkdir()
    # another worker is making shard 1: it holds the claim and is half-way through writing the shard
    lock = os.open(out / "shard-00001.npz.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    theirs = out / ".shard-00001.npz.k3x9q.tmp"
    theirs.write_bytes(b"half a shard")
    try:
        capsys.readouterr()
        assert main(["tokenize", "--images", str(images), "--vq", str(vq_ckpt), "--out", str(out), *TOK]) == 0
        stdout = capsys.readouterr().out
        assert "wrote 2 shard(s)" in stdout and "left 1 to other workers" in stdout, stdout
        assert sorted(p.name for p in out.iterdir()) == [theirs.name, "shard-00000.npz", "shard-00000.npz.sha256",
                                                         "shard-00001.npz.lock", "shard-00002.npz",
                                                         "shard-00002.npz.sha256"]  # no manifest: shard 1 is missing
    finally:
        os.close(lock)  # the other worker dies: its claim is dropped, its files stay
    assert main(["tokenize", "--images", str(images), "--vq", str(vq_ckpt), "--out", str(out), *TOK]) == 0
    assert "wrote 1 shard(s)" in capsys.readouterr().out  # only the dead worker's shard
    assert _tree(out) == _tree(reference)  # same bytes, manifest written, no lock or temp file left


def _worker(images, vq, out):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_ARRAY")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
               **{BATCH_DELAY_ENV: "0.4"})
    return subprocess.Popen([sys.executable, "-m", "par", "tokenize", "--images", str(images), "--vq", str(vq),
                             "--out", str(out), *TOK], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_workers_on_one_folder_split_the_shards(images, vq_ckpt, reference, tmp_path):
    out = tmp_path / "tok"
    procs = [_worker(images, vq_ckpt, out) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    wrote = [int(re.search(r"wrote (\d+) shard", o).group(1)) for o, _ in results]
    assert sum(wrote) == 3, results  # each shard computed once (before: both computed all three)
    assert _tree(out) == _tree(reference)


# ----------------------------------------------------------------------------- 5. 16-bit images

def test_16bit_grey_png_is_scaled_not_clipped(tmp_path, capsys):
    from par.data.crops import load_rgb
    from par.data.imageio import read_images

    v = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257 + np.arange(16)[:, None] * 7).clip(0, 65535)
    v = v.astype(np.uint16)
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(v).save(folder / "grey16.png")
    assert Image.open(folder / "grey16.png").mode == "I;16"
    want = np.repeat(((v.astype(np.int64) + 128) // 257).astype(np.uint8)[..., None], 3, axis=2)
    assert np.array_equal(np.asarray(load_rgb(folder / "grey16.png")), want)  # tokenize, train-vq, make-reference
    assert np.array_equal(read_images(folder)[0], want)  # sample folders read by evaluation
    # through the command: make-reference packs it unchanged (16 px, no resize) and says nothing
    capsys.readouterr()
    assert main(["make-reference", "--images", str(_one_class(folder)), "--size", "16",
                 "--out", str(tmp_path / "ref.npz")]) == 0
    assert capsys.readouterr().err == ""
    assert np.array_equal(np.load(tmp_path / "ref.npz")["arr_0"][0], want)


def _one_class(folder: Path) -> Path:
    root = folder.parent / "imagefolder"
    (root / "c").mkdir(parents=True)
    for p in folder.iterdir():
        (root / "c" / p.name).write_bytes(p.read_bytes())
    return root


def test_8bit_images_load_as_before_and_float_images_are_refused_by_name(tmp_path):
    from par.data.crops import BadImage, load_rgb
    from par.data.imageio import read_images

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    for mode in ("RGB", "L", "P", "RGBA", "LA", "1"):
        img = Image.fromarray(rgb).convert(mode)
        img.save(tmp_path / f"{mode}.png")
        assert np.array_equal(np.asarray(load_rgb(tmp_path / f"{mode}.png")),
                              np.asarray(Image.open(tmp_path / f"{mode}.png").convert("RGB"))), mode
    Image.fromarray(rng.random((12, 12), dtype=np.float32) * 1000).save(tmp_path / "float.tiff")
    with pytest.raises(BadImage, match=r"floating-point samples \(PIL mode F\).*re-export"):
        load_rgb(tmp_path / "float.tiff")
    Image.fromarray((rng.random((12, 12)) * 70000).astype(np.int32)).save(tmp_path / "int32.tiff")
    with pytest.raises(BadImage, match=r"32-bit integer samples \(PIL mode I\)"):
        load_rgb(tmp_path / "int32.tiff")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes((tmp_path / "RGB.png").read_bytes())
    assert np.array_equal(read_images(folder)[0], rgb)


# ----------------------------------------------------------------------------- 6. a killed run's leftovers

def test_leftovers_of_a_killed_tokenize_are_removed_at_start(images, vq_ckpt, reference, tmp_path, capsys):
    out = tmp_path / "tok"
    out.mkdir()
    # what `kill -9` leaves at various moments: shard 0 done but its claim not yet removed, shard 1 half-written
    # (its temp file and its claim), and a half-written manifest of a finalizing worker
    for name in ("shard-00000.npz", "shard-00000.npz.sha256"):
        (out / name).write_bytes((reference / name).read_bytes())
    leftovers = ["shard-00000.npz.lock", "shard-00001.npz.lock", ".shard-00001.npz.a1b2c3.tmp",
                 ".manifest.json.z9y8x7.tmp"]
    for name in leftovers:
        (out / name).write_bytes(b"partial")
    capsys.readouterr()
    assert main(["tokenize", "--images", str(images), "--vq", str(vq_ckpt), "--out", str(out), *TOK]) == 0
    assert "wrote 2 shard(s), kept 1 complete" in capsys.readouterr().out
    assert _tree(out) == _tree(reference)  # the leftovers are gone, the shards are the single run's bytes
