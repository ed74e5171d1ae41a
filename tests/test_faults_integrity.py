"""Issue #26, content integrity: every artefact par commits records its sha256 when it is written (`<file>.sha256`,
copied into a sharded folder's manifest). A same-size change — one flipped bit, so that every value stays valid and
nothing but the digest can tell — is named by its reader (one line, exit 2) and made again by a rerun of its
producer; FID, FVD and NLL never score a damaged input. Also: the hint for a cut-short checkpoint, the free space a
full disk reports, and the mode of `par fetch` downloads.

Each case flips the lowest bit of one stored value (a token code, a pixel, a float's last mantissa bit)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from par import io
from par.cli import main
from par.errors import EnvironmentFault, UserError
from test_data import no_slurm, one_thread  # noqa: F401 — autouse: one thread, no Slurm array in the environment
from test_faults import one_line, run_par, sample_args, small_disk, tiny_models  # noqa: F401 — fixtures
from test_faults_data import TOK, TRAIN, _tree, images, reference, vq_ckpt  # noqa: F401 — fixtures
from test_fetch import SHA, no_waits_no_proxy, server  # noqa: F401 — fixtures
from test_video_tokens import SHARD, Squares, job, make_vq

DAMAGED = r"content differs from the sha256 recorded when it was written \(in [\w.-]+\): damaged or changed since; "


def _flip(path: Path, offset: int) -> None:
    """Flip the lowest bit of the byte at `offset`, in place: same size, one value off by one."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 1]))
    assert path.stat().st_size == size


def _data_offset(path: Path, member: str) -> int:
    """Where the data of the stored zip member `member` starts (an .npy member: its array, past the header)."""
    from par.data.shards import _member_header

    with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        if member.endswith(".npy"):
            return _member_header(f, zf, member.removesuffix(".npy"))[0]
        info = zf.getinfo(member)
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
        return info.header_offset + 30 + int(name_len) + int(extra_len)


def _flip_member(path: Path, member: str, at: int = 0) -> None:
    _flip(path, _data_offset(path, member) + at)


def _flip_tensor(path: Path) -> None:
    """Flip the last mantissa bit of the first float of a torch checkpoint's first tensor (torch.load still reads it)."""
    with zipfile.ZipFile(path) as zf:
        first = sorted((n for n in zf.namelist() if re.search(r"/data/\d+$", n)), key=lambda n: int(n.split("/")[-1]))
    _flip_member(path, first[0])


# ------------------------------------------------------------------------------------------ token shards (images)

def test_a_flipped_code_in_a_token_shard_is_named_by_nll_and_train_and_tokenize_makes_it_again(
        images, vq_ckpt, reference, tmp_path, capsys):
    tok = tmp_path / "tok"
    shutil.copytree(reference, tok)
    assert main(["train", "--data", str(tok), "--out", str(tmp_path / "run"), *TRAIN]) == 0
    shutil.rmtree(tok / "packed")  # so that training reads the shards again
    good = (tok / "shard-00001.npz").read_bytes()
    _flip_member(tok / "shard-00001.npz", "codes.npy")  # code c → c ^ 1: still inside the codebook

    nll = ["nll", "--model", tmp_path / "run" / "model.pt", "--tokens", tok, "--out", tmp_path / "nll.json"]
    status, err = run_par(capsys, *nll)
    assert status == 2 and not (tmp_path / "nll.json").exists()
    one_line(err, rf"^par nll: error: {re.escape(str(tok))}/shard-00001\.npz: {DAMAGED}re-run `par tokenize` "
                  "with the same settings")
    status, err = run_par(capsys, "train", "--data", tok, "--out", tmp_path / "run2", *TRAIN)
    assert status == 2
    one_line(err, rf"shard-00001\.npz: {DAMAGED}re-run `par tokenize`")

    status, err = run_par(capsys, "tokenize", "--images", images, "--vq", vq_ckpt, "--out", tok, *TOK)
    assert status == 0 and re.search(r"shard-00001\.npz differs from the sha256 .*; re-making it", err), err
    assert (tok / "shard-00001.npz").read_bytes() == good
    shutil.rmtree(tok / "packed")
    assert _tree(tok) == _tree(reference)
    assert run_par(capsys, *nll)[0] == 0


def test_a_token_folder_from_before_digests_is_read_unchecked(reference, tmp_path, capsys):
    tok = tmp_path / "tok"
    shutil.copytree(reference, tok)
    for p in tok.glob("*.sha256"):
        p.unlink()
    m = json.loads((tok / "manifest.json").read_text())
    for s in m["shards"]:
        del s["sha256"]
    (tok / "manifest.json").write_text(json.dumps(m))
    assert main(["train", "--data", str(tok), "--out", str(tmp_path / "run"), *TRAIN]) == 0  # as before digests
    assert main(["tokenize", "--finalize", "--out", str(tok)]) == 0  # records the digests the files have now
    assert all(len(s["sha256"]) == 64 for s in json.loads((tok / "manifest.json").read_text())["shards"])


# ------------------------------------------------------------------------------------------ packed arrays

def test_a_flipped_code_in_the_packed_array_is_packed_again(reference, tmp_path, capsys):
    from par.data.packed import packed

    tok = tmp_path / "tok"
    shutil.copytree(reference, tok)
    codes = np.array(packed(tok)[0])
    good = (tok / "packed" / "codes.npy").read_bytes()
    _flip(tok / "packed" / "codes.npy", np.load(tok / "packed" / "codes.npy", mmap_mode="r").offset)
    capsys.readouterr()
    again = packed(tok)[0]
    assert re.search(r"packed/codes\.npy: differs from the sha256 recorded when it was written; packing it again",
                     capsys.readouterr().err)
    np.testing.assert_array_equal(again, codes)
    assert (tok / "packed" / "codes.npy").read_bytes() == good


# ------------------------------------------------------------------------------------------ video: clips, tokens, FVD

@pytest.fixture
def no_network(monkeypatch):
    """FVD's I3D and FID's Inception must not be reached: a damaged input is refused before."""
    from par.eval import i3d, metrics

    monkeypatch.setattr(i3d, "load_i3d", lambda *a, **k: pytest.fail("I3D reached with a damaged input"))
    monkeypatch.setattr(metrics, "fidhelper_weights", lambda *a, **k: pytest.fail("Inception reached"))


def test_a_flipped_pixel_in_a_clip_shard_is_named_by_tokenize_video_and_fvd_and_prepare_video_makes_it_again(
        tmp_path, capsys, no_network):
    from par.data.clips import prepare_clips

    clips = tmp_path / "clips"
    prepare_clips(Squares(), clips, shard_size=SHARD, progress=False)
    vq = make_vq(tmp_path / "video_vq.pt")
    good = (clips / "clips-00001.npz").read_bytes()
    _flip_member(clips / "clips-00001.npz", "clips.npy", at=1000)

    status, err = run_par(capsys, "tokenize-video", "--clips", clips, "--vq", vq, "--out", tmp_path / "tok",
                          "--device", "cpu")
    assert status == 2 and not (tmp_path / "tok").exists()  # checked before anything is written
    one_line(err, rf"^par tokenize-video: error: {re.escape(str(clips))}/clips-00001\.npz: {DAMAGED}re-run "
                  "`par prepare-video` with the same settings")
    status, err = run_par(capsys, "fvd", "--generated", clips, "--reference", clips, "--out", tmp_path / "fvd.json")
    assert status == 2 and not (tmp_path / "fvd.json").exists()
    one_line(err, rf"clips-00001\.npz: {DAMAGED}re-run `par prepare-video`")

    s = prepare_clips(Squares(), clips, shard_size=SHARD, progress=False)
    assert (s["written"], s["kept"]) == ([1], [0, 2])
    assert (clips / "clips-00001.npz").read_bytes() == good


def test_a_flipped_code_in_a_video_token_shard_is_named_and_tokenize_video_makes_it_again(tmp_path, capsys):
    from par.data.clips import prepare_clips
    from par.data.shards import TokenShards
    from par.data.video_tokens import tokenize_video

    clips, tok = tmp_path / "clips", tmp_path / "tok"
    prepare_clips(Squares(), clips, shard_size=SHARD, progress=False)
    vq = make_vq(tmp_path / "video_vq.pt")
    tokenize_video(job(clips, vq, tok), progress=False)
    good = (tok / "shard-00001.npz").read_bytes()
    _flip_member(tok / "shard-00001.npz", "codes.npy")
    with pytest.raises(UserError, match=rf"shard-00001\.npz: {DAMAGED}re-run `par tokenize-video` with the same"):
        TokenShards(tok).load()
    status, err = run_par(capsys, "train", "--data", tok, "--out", tmp_path / "run", *TRAIN)
    assert status == 2
    one_line(err, rf"shard-00001\.npz: {DAMAGED}re-run `par tokenize-video`")
    s = tokenize_video(job(clips, vq, tok), progress=False)
    assert (s["written"], s["kept"]) == ([1], [0, 2])
    assert (tok / "shard-00001.npz").read_bytes() == good
    TokenShards(tok).load()


def test_damaged_generated_clips_and_reference_statistics_never_reach_fvd(tmp_path, capsys, no_network):
    from par.eval.fvd import write_stats
    from par.eval.sample import write_clips_npz

    clips = np.random.default_rng(0).integers(0, 256, (4, 9, 16, 16, 3), dtype=np.uint8)
    write_clips_npz(tmp_path / "samples.npz", clips, np.arange(4))
    write_stats(tmp_path / "stats.npz", np.zeros(400), np.eye(400), n=4, frames=9)
    _flip_member(tmp_path / "stats.npz", "mu.npy")
    status, err = run_par(capsys, "fvd", "--generated", tmp_path / "samples.npz", "--reference", tmp_path / "stats.npz",
                          "--out", tmp_path / "fvd.json")
    assert status == 2
    one_line(err, rf"stats\.npz: {DAMAGED}rerun `par fvd-stats`")
    _flip_member(tmp_path / "samples.npz", "clips.npy", at=77)
    status, err = run_par(capsys, "fvd", "--generated", tmp_path / "samples.npz", "--reference", tmp_path / "stats.npz",
                          "--out", tmp_path / "fvd.json")
    assert status == 2
    one_line(err, rf"samples\.npz: {DAMAGED}make it again \(a samples\.npz: rerun `par sample`")


# ------------------------------------------------------------------------------------------ samples and FID

def test_a_flipped_pixel_in_a_sample_shard_or_samples_npz_is_named_and_par_sample_makes_it_again(
        tiny_models, tmp_path, capsys, no_network):
    from par.config import SampleJob
    from par.eval.sample import finalize

    out = tmp_path / "s"
    assert run_par(capsys, *sample_args(tiny_models, out))[0] == 0
    shard, npz = out / "shards" / "samples-00001.npz", out / "samples.npz"
    good_npz = npz.read_bytes()
    with np.load(shard) as z:
        good_images = z["images"]
    shutil.copy(npz, tmp_path / "reference.npz")  # no .sha256 next to it: read unchecked

    _flip_member(shard, "images.npy", at=5)
    job = SampleJob(model=str(tiny_models / "gpt.pt"), vq=str(tiny_models / "vq.pt"), out=str(out), num_samples=6,
                    shard_size=2, batch_size=2, image_size=16)
    with pytest.raises(UserError, match=rf"samples-00001\.npz: {DAMAGED}run `par sample` again without --finalize"):
        finalize(job)  # what packs the shards into samples.npz
    _flip_member(npz, "arr_0.npy", at=5)
    status, err = run_par(capsys, "evaluate", "--samples", npz, "--reference", tmp_path / "reference.npz",
                          "--out", tmp_path / "fid.json")
    assert status == 2 and not (tmp_path / "fid.json").exists()
    one_line(err, rf"^par evaluate: error: {re.escape(str(npz))}: {DAMAGED}make it again \(samples: rerun `par sample`")

    status, err = run_par(capsys, *sample_args(tiny_models, out))
    assert status == 0 and "samples-00001.npz differs from the sha256" in err
    with np.load(shard) as z:  # made again (only its `seconds` differ)
        np.testing.assert_array_equal(z["images"], good_images)
    assert npz.read_bytes() == good_npz


def test_a_flipped_pixel_in_a_made_reference_is_named_by_evaluate_and_make_reference_makes_it_again(
        images, tmp_path, capsys, no_network):
    ref = tmp_path / "ref.npz"
    make = ["make-reference", "--images", images, "--size", 8, "--out", ref]
    assert run_par(capsys, *make)[0] == 0
    good = ref.read_bytes()
    shutil.copy(ref, tmp_path / "samples.npz")
    _flip_member(ref, "arr_0.npy", at=3)
    status, err = run_par(capsys, "evaluate", "--samples", tmp_path / "samples.npz", "--reference", ref,
                          "--out", tmp_path / "fid.json")
    assert status == 2
    one_line(err, rf"ref\.npz: {DAMAGED}make it again \(.*`par make-reference`")
    assert run_par(capsys, *make)[0] == 0 and ref.read_bytes() == good


def test_damaged_fid_reference_statistics_are_refused(tmp_path, capsys, no_network):
    stats = tmp_path / "VIRTUAL_stats.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    Path(f"{stats}.sha256").write_text(f"{io.sha256_file(stats)}  {stats.name}\n")  # as `par fetch` pins downloads
    np.savez(tmp_path / "s.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    _flip_member(stats, "sigma.npy", at=8)
    status, err = run_par(capsys, "evaluate", "--samples", tmp_path / "s.npz", "--reference-stats", stats,
                          "--out", tmp_path / "fid.json")
    assert status == 2
    one_line(err, rf"VIRTUAL_stats\.npz: {DAMAGED}download or make it again")


# ------------------------------------------------------------------------------------------ checkpoints

def test_a_flipped_bit_in_ckpt_pt_is_named_at_resume(reference, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(reference), "--out", str(run), *TRAIN]) == 0
    for name in ("model.pt", "model.pt.sha256"):
        (run / name).unlink(missing_ok=True)  # as if stopped after its last checkpoint
    _flip_tensor(run / "ckpt.pt")
    more = [a if a != "1" or TRAIN[i - 1] != "--max-steps" else "2" for i, a in enumerate(TRAIN)]
    status, err = run_par(capsys, "train", "--data", reference, "--out", run, *more)
    assert status == 2
    one_line(err, rf"{re.escape(str(run))}/ckpt\.pt: {DAMAGED}restore it from a copy or make it again \(replaced on "
                  r"purpose\? delete .*ckpt\.pt\.sha256\)")


def test_a_flipped_bit_in_a_model_checkpoint_is_named_by_sample(tiny_models, tmp_path, capsys):
    model = tmp_path / "gpt.pt"
    for name in ("gpt.pt", "gpt.pt.sha256"):
        if (tiny_models / name).exists():
            shutil.copy(tiny_models / name, tmp_path / name)
    _flip_tensor(model)
    args = sample_args(tiny_models, tmp_path / "s")
    args[args.index("--model") + 1] = model
    status, err = run_par(capsys, *args)
    assert status == 2 and not (tmp_path / "s").exists()
    one_line(err, rf"gpt\.pt: {DAMAGED}restore it")


def test_a_cut_short_checkpoint_says_so_instead_of_re_save(tmp_path):
    path = tmp_path / "model.pt"
    io.torch_save({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match=DAMAGED):  # recorded digest: named as damaged
        io.torch_load(path)
    io.digest_path(path).unlink()  # a copy without its .sha256
    with pytest.raises(UserError) as info:
        io.torch_load(path)
    assert "damaged, cut short or not a checkpoint" in str(info.value) and "re-save" not in str(info.value)


# ------------------------------------------------------------------------------------------ full disk, fetch mode

def test_disk_full_reports_the_space_left_without_our_partial_file(small_disk):
    from par.errors import _size

    with pytest.raises(EnvironmentFault) as info:
        with io.atomic_path(small_disk / "big.bin") as tmp:
            tmp.write_bytes(b"x" * (shutil.disk_usage(small_disk).total * 2))
    free = re.search(r"([\d.]+ [KMG]?B) free there\)", str(info.value))
    assert free and free.group(1) == _size(shutil.disk_usage(small_disk).free) != "0 B", str(info.value)
    assert list(small_disk.iterdir()) == []


def test_fetch_gives_the_download_the_umask_s_permissions(server, tmp_path):
    out = tmp_path / "w.pt"
    old = os.umask(0o022)
    try:
        assert main(["fetch", "--url", f"{server.url}/w.pt", "--out", str(out), "--sha256", SHA]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
