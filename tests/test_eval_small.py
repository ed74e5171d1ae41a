"""The small preset's instruments: classifier-feature KID ± SE and class accuracy (par/eval/classifier.py),
`par train-classifier`, `par evaluate --classifier-weights` without Inception, held-out NLL (par/eval/nll.py)
and the reference / floor sets of `par make-reference --offset --labels --vq`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from par import io
from par.cli import main
from par.core.model import Transformer, model_config
from par.data.imageio import write_adm_npz
from par.errors import UserError
from par.eval.classifier import (_kid_block, build_classifier, features_and_logits, kid_with_se, load_classifier,
                                 sample_quality, save_classifier)
from par.eval.nll import heldout_nll

from test_train import make_token_dir


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------ KID ± SE


def test_kid_block_is_the_unbiased_mmd_with_the_cubic_kernel():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(1.0, 1.0, size=(4, 3))

    def k(x, y):
        return (x @ y / 3 + 1) ** 3

    xx = sum(k(a[i], a[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(k(b[i], b[j]) for i in range(4) for j in range(4) if i != j) / (4 * 3)
    xy = sum(k(a[i], b[j]) for i in range(5) for j in range(4)) / (5 * 4)
    assert _kid_block(a, b) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_with_se_is_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(600, 8))
    same = rng.normal(size=(600, 8))
    kid, se = kid_with_se(same, ref, blocks=10)
    assert se > 0 and abs(kid) < 3 * se  # unbiased: zero within its standard error
    shifted = rng.normal(0.5, 1.0, size=(600, 8))
    kid_s, se_s = kid_with_se(shifted, ref, blocks=10)
    assert se_s > 0 and kid_s > 3 * se_s and kid_s > kid
    # the SE is the spread of the per-block values of both sets shuffled (seed 0): sd / √blocks
    blocks = [_kid_block(a, b) for a, b in zip(*(np.array_split(x, 10) for x in _shuffled(shifted, ref)))]
    assert kid_s == pytest.approx(np.mean(blocks)) and se_s == pytest.approx(np.std(blocks, ddof=1) / math.sqrt(10))
    assert kid_with_se(shifted[:6], ref[:40], blocks=10)[0] == pytest.approx(  # blocks capped by the smaller set
        np.mean([_kid_block(a, b) for a, b in zip(*(np.array_split(x, 3) for x in _shuffled(shifted[:6], ref[:40])))]))
    with pytest.raises(UserError, match="KID needs ≥ 4 samples"):
        kid_with_se(shifted[:3], ref, blocks=10)


def _shuffled(feats, ref, seed=0):
    rng = np.random.default_rng(seed)
    return feats[rng.permutation(len(feats))], ref[rng.permutation(len(ref))]


def test_kid_does_not_depend_on_the_order_of_a_class_sorted_reference():
    """Issue 24's repro: reference features stored class-sorted (as par/data/reference.py keeps them), samples
    from the same 10-cluster distribution in random label order. Cut into contiguous blocks, each reference block
    is about one class and KID is large; both sides shuffled before cutting, it is zero within its error."""
    rng = np.random.default_rng(3)
    classes, per_class, dim = 10, 60, 16
    centres = rng.normal(0, 3, (classes, dim))
    ref = np.concatenate([centres[c] + rng.normal(size=(per_class, dim)) for c in range(classes)])  # class-sorted
    labels = rng.integers(0, classes, classes * per_class)  # random label order, as samples come
    samples = centres[labels] + rng.normal(size=(len(labels), dim))
    contiguous = np.mean([_kid_block(a, b) for a, b in zip(np.array_split(samples, 10), np.array_split(ref, 10))])
    kid, se = kid_with_se(samples, ref, blocks=10)
    assert contiguous > 1.0  # the artefact: every block pair compares one class with all of them
    assert abs(kid) < 3 * se and abs(kid) < contiguous / 100
    assert kid_with_se(samples, ref[::-1].copy(), blocks=10)[0] == pytest.approx(kid, abs=3 * se)  # any order


# ----------------------------------------------------------------------------------- sample_quality


def _random_images(n, side=8, seed=0, low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, (n, side, side, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def random_classifier(tmp_path_factory):
    torch.manual_seed(0)
    model = build_classifier(num_classes=3, width=4, image_size=8)
    # calibrate the batch-norm statistics on images like the test's (as training would), so the features are O(1)
    from par.eval.classifier import _to_input

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average
    calibration = np.concatenate([_random_images(32, seed=20), _random_images(32, seed=21, high=30)])
    with torch.no_grad():
        model.train()(_to_input(calibration, 8))
    model.eval()
    path = tmp_path_factory.mktemp("clf") / "classifier.pt"
    save_classifier(model, path)
    return path


def test_saved_classifier_loads_with_its_meta_in_eval_mode(random_classifier, tmp_path):
    model = load_classifier(random_classifier)
    assert not model.training and model.meta == {"num_classes": 3, "width": 4, "image_size": 8}
    x = _random_images(7, side=12)  # another size: resized to the classifier's input
    f, logits = features_and_logits(model, x, batch_size=3)
    assert f.shape == (7, 16) and logits.shape == (7, 3) and f.dtype == np.float64
    f2, logits2 = features_and_logits(load_classifier(random_classifier), x, batch_size=7)
    np.testing.assert_allclose(logits, logits2, rtol=1e-5, atol=1e-6)  # batching does not matter (eval BN)
    io.torch_save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a `par train-classifier` checkpoint"):
        load_classifier(tmp_path / "other.pt")


def test_sample_quality_scores_features_and_the_requested_classes(random_classifier):
    samples, other = _random_images(40, seed=1), _random_images(40, seed=2, high=30)
    _, logits = features_and_logits(load_classifier(random_classifier), samples)
    predicted = logits.argmax(1)
    labels = predicted.copy()
    labels[:10] = (predicted[:10] + 1) % 3  # 10 of 40 asked for another class than the classifier sees
    q = sample_quality(random_classifier, samples, samples, labels, blocks=4)
    assert q["class_accuracy"] == pytest.approx(0.75)
    hit = np.r_[np.zeros(10), np.ones(30)]
    assert q["class_accuracy_se"] == pytest.approx(hit.std(ddof=1) / math.sqrt(40))
    assert abs(q["cls_fid"]) < 1e-4  # the same images on both sides
    far = sample_quality(random_classifier, other, samples, blocks=4)
    assert far["cls_fid"] > 1e-3 and far["cls_kid"] > 0 and far["cls_kid_se"] > 0
    assert far["class_accuracy"] is None and far["class_accuracy_se"] is None  # no labels given
    with pytest.raises(UserError, match="39 labels for 40 samples; the labels.npy beside the samples is stale"):
        sample_quality(random_classifier, samples, samples, labels[:39], blocks=4)


def test_reference_features_are_computed_once_per_reference_and_classifier(random_classifier, tmp_path,
                                                                          monkeypatch):
    import par.eval.classifier as clf

    monkeypatch.setenv("PAR_CACHE_DIR", str(tmp_path / "cache"))
    samples, ref = _random_images(40, seed=1), _random_images(40, seed=3)
    ref_file = tmp_path / "reference.npz"
    write_adm_npz(ref, ref_file)
    first = sample_quality(random_classifier, samples, ref, blocks=4, reference_path=ref_file)
    calls = []
    real = clf.features_and_logits
    monkeypatch.setattr(clf, "features_and_logits", lambda m, x, *a: calls.append(len(x)) or real(m, x, *a))
    again = sample_quality(random_classifier, samples, ref, blocks=4, reference_path=ref_file)
    assert calls == [40] and again == first  # the samples' features only: the reference's come from the cache
    write_adm_npz(ref[::-1].copy(), ref_file)  # another reference file (its content keys the cache)
    sample_quality(random_classifier, samples, ref[::-1].copy(), blocks=4, reference_path=ref_file)
    assert calls == [40, 40, 40]


# ------------------------------------------------------------------------------- par train-classifier


def _solid_folder(root: Path, per_class: dict[str, int], side: int = 8, seed: int = 0) -> Path:
    """Two trivially separable classes: near-black ('dark') and near-white ('light') images."""
    rng = np.random.default_rng(seed)
    for c, n in per_class.items():
        (root / c).mkdir(parents=True)
        lo, hi = (0, 40) if c == "dark" else (215, 256)
        for i in range(n):
            Image.fromarray(rng.integers(lo, hi, (side, side, 3), dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("bw")
    train = _solid_folder(root / "train", {"dark": 16, "light": 16})
    test = _solid_folder(root / "test", {"dark": 5, "light": 5}, seed=1)
    out = root / "clf"
    assert main(["train-classifier", "--images", str(train), "--heldout", str(test), "--out", str(out),
                 "--image-size", "8", "--width", "4", "--epochs", "10", "--batch-size", "8", "--lr", "0.01"]) == 0
    return out


def test_train_classifier_separates_two_trivial_classes(trained_classifier):
    m = json.loads((trained_classifier / "metrics.json").read_text())
    assert m["test_accuracy"] == 1.0 and m["test_accuracy_se"] == 0.0
    assert m["n_test"] == 10 and m["n_train"] == 32 and m["num_classes"] == 2 and m["steps"] == 40
    assert m["config"]["width"] == 4 and m["seconds"] > 0
    model = load_classifier(trained_classifier / "classifier.pt")
    assert model.meta == {"num_classes": 2, "width": 4, "image_size": 8}
    dark, light = _random_images(6, seed=3, high=40), _random_images(6, seed=4, low=215)
    assert features_and_logits(model, np.concatenate([dark, light]))[1].argmax(1).tolist() == [0] * 6 + [1] * 6


def test_evaluate_without_inception_gives_the_classifier_metrics(trained_classifier, tmp_path, capsys):
    """`evaluate.metrics: ""` (the small preset on CPU): only the classifier metrics, with their sample counts;
    class accuracy from the labels.npy that `par sample` writes beside the samples."""
    samples = tmp_path / "run"
    samples.mkdir()
    x = np.concatenate([_random_images(10, seed=5, high=40), _random_images(10, seed=6, low=215)])
    write_adm_npz(x, samples / "samples.npz")
    np.save(samples / "labels.npy", np.r_[np.zeros(10, int), np.ones(8, int), np.zeros(2, int)])
    ref = np.concatenate([_random_images(12, seed=7, high=40), _random_images(12, seed=8, low=215)])
    write_adm_npz(ref, tmp_path / "reference.npz")
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--samples", str(samples / "samples.npz"), "--reference", str(tmp_path / "reference.npz"),
            "--out", str(out), "--metrics", "", "--kid-blocks", "4",
            "--classifier-weights", str(trained_classifier / "classifier.pt"), "--meta", "run=par-n4/s1"]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    m = r["metrics"]
    assert set(m) == {"cls_fid", "cls_kid", "cls_kid_se", "class_accuracy", "class_accuracy_se"}
    assert m["class_accuracy"] == pytest.approx(0.9) and m["class_accuracy_se"] > 0  # 18 of 20 as asked
    assert m["cls_fid"] >= 0 and m["cls_kid_se"] > 0
    assert set(r["unavailable"]) == {"inception"} and "evaluate.metrics is empty" in r["unavailable"]["inception"]
    assert r["n_samples"] == r["n_samples_classifier"] == 20 and r["n_reference"] == r["n_reference_classifier"] == 24
    assert r["classifier"]["test_accuracy"] == 1.0 and len(r["classifier"]["sha256"]) == 64
    assert r["meta"] == {"run": "par-n4/s1"} and r["seconds"] >= 0
    assert "cls_fid=" in capsys.readouterr().out
    # without the labels file, class accuracy is unavailable (with its reason), the rest stays
    (samples / "labels.npy").unlink()
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["metrics"]["class_accuracy"] is None and "no labels.npy" in r["unavailable"]["class_accuracy"]
    assert r["metrics"]["cls_fid"] >= 0


# ------------------------------------------------------------------------------------------ held-out NLL


def _random_gpt(order: str, n: int, group_attention: str = "full", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    gpt = Transformer(model_config("tiny-S", grid=(4, 4), order=order, n=n, vocab_size=16, num_classes=4,
                                   group_attention=group_attention))
    torch.nn.init.normal_(gpt.output.weight, std=0.5)  # LlamaGen zero-initialises the head: NLL = log V for any order
    return gpt.eval()


@pytest.mark.parametrize("order, n, attention", [("raster", 1, "full"), ("par", 4, "full"), ("raster", 4, "full"),
                                                 ("par", 4, "causal")])
def test_heldout_nll_is_the_teacher_forced_training_loss(order, n, attention):
    """Per-image NLL averaged over images = the training forward's cross-entropy on the same tokens (eval mode):
    what is scored is exactly what the model is trained on (raster codes taken into generation order)."""
    gpt = _random_gpt(order, n, attention)
    rng = np.random.default_rng(2)
    codes, labels = rng.integers(0, 16, (10, 16)), rng.integers(0, 4, 10)
    per_image = heldout_nll(gpt, codes.astype(np.int16), labels, batch_size=3)
    assert per_image.shape == (10,) and not gpt.training
    z = gpt.order.to_order(torch.as_tensor(codes))
    with torch.no_grad():
        loss = gpt(z, torch.as_tensor(labels), targets=z)[1].item()
    assert per_image.mean() == pytest.approx(loss, rel=1e-5)
    assert abs(loss - math.log(16)) > 1e-3  # a real check: the head is not uniform
    # per image: the image's own tokens only
    with torch.no_grad():
        one = gpt(z[3:4], torch.as_tensor(labels[3:4]), targets=z[3:4])[1].item()
    assert per_image[3] == pytest.approx(one, rel=1e-5)


def test_heldout_nll_refuses_tokens_of_another_tokenizer():
    gpt = _random_gpt("par", 4)
    with pytest.raises(UserError, match="held-out tokens have 9 per image, the model 16"):
        heldout_nll(gpt, np.zeros((2, 9), np.int16), np.zeros(2, int), 2)
    with pytest.raises(UserError, match="exceed the model's vocabulary"):
        heldout_nll(gpt, np.full((2, 16), 16, np.int16), np.zeros(2, int), 2)
    with pytest.raises(UserError, match="exceed the model's vocabulary / classes"):
        heldout_nll(gpt, np.zeros((2, 16), np.int16), np.array([0, 4]), 2)


def test_par_nll_scores_the_centre_crop_of_the_heldout_tokens(tmp_path, capsys):
    from par.data.shards import TokenShards

    tokens = make_token_dir(tmp_path / "tokens_heldout", num_images=30, grid=(4, 4), vocab=16, classes=4)
    gpt = _random_gpt("par", 4, seed=1)
    io.torch_save({"model": gpt.state_dict(), "config": gpt.config.to_dict()}, tmp_path / "model.pt")
    out = tmp_path / "nll" / "par-n4" / "s0.json"
    argv = ["nll", "--model", str(tmp_path / "model.pt"), "--tokens", str(tokens), "--out", str(out),
            "--batch-size", "7"]
    assert main(argv) == 0  # nll.images 0: every held-out image
    r = json.loads(out.read_text())
    shards = TokenShards(tokens)
    assert shards.centre_crop == 4  # the 10-crop order's "center"
    codes, labels = shards.load(crop=4)
    want = heldout_nll(gpt, codes, labels, 30)
    assert r["nll"] == pytest.approx(want.mean(), rel=1e-6)
    assert r["nll_se"] == pytest.approx(want.std(ddof=1) / math.sqrt(30), rel=1e-6)
    assert r["bits_per_token"] == pytest.approx(r["nll"] / math.log(2))
    assert r["n_images"] == 30 and r["tokens_per_image"] == 16 and r["order"] == gpt.order.name and r["n"] == 4
    assert r["split"] == "test" and r["crop"] == "center" and r["weights"] == "model"
    other = heldout_nll(gpt, shards.load(crop=0)[0], labels, 30)  # another crop: another number
    assert abs(other.mean() - r["nll"]) > 1e-6
    assert "nats/token over 30 held-out images" in capsys.readouterr().out
    assert main(argv + ["--images", "20"]) == 0  # a subset of the held-out images
    assert json.loads(out.read_text())["n_images"] == 20
    assert main(argv + ["--weights", "ema"]) == 2  # no EMA copy in this checkpoint: a one-line error


# ------------------------------------------------------------------------------- make-reference (floors)


@pytest.fixture(scope="module")
def heldout_folder(tmp_path_factory):
    """3 classes × 10 distinct 16-px RGB images; `lookup` maps an image's bytes to its class index."""
    root = tmp_path_factory.mktemp("heldout") / "test"
    rng = np.random.default_rng(0)
    lookup = {}
    for c, name in enumerate(("c0", "c1", "c2")):
        (root / name).mkdir(parents=True)
        for i in range(10):
            img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
            lookup[img.tobytes()] = c
    return root, lookup


def _make_reference(folder, out, *extra):
    return main(["make-reference", "--images", str(folder), "--size", "16", "--out", str(out), *extra])


def test_offsets_give_disjoint_sets_with_their_labels(heldout_folder, tmp_path):
    folder, lookup = heldout_folder
    assert _make_reference(folder, tmp_path / "reference.npz", "--max-images", "12") == 0
    assert _make_reference(folder, tmp_path / "real.npz", "--offset", "12", "--max-images", "10",
                           "--labels", str(tmp_path / "real.npy")) == 0
    ref, real = (np.load(tmp_path / f"{n}.npz")["arr_0"] for n in ("reference", "real"))
    assert ref.shape == (12, 16, 16, 3) and real.shape == (10, 16, 16, 3)
    ref_set, real_set = {x.tobytes() for x in ref}, {x.tobytes() for x in real}
    assert len(ref_set) == 12 and len(real_set) == 10 and not ref_set & real_set  # disjoint
    assert ref_set | real_set <= set(lookup)  # the images themselves (16 px: the centre crop is the identity)
    labels = np.load(tmp_path / "real.npy")
    assert labels.dtype == np.int64 and labels.tolist() == [lookup[x.tobytes()] for x in real]
    # the order is fixed: the same call gives the same set, and the rest of the split follows
    assert _make_reference(folder, tmp_path / "again.npz", "--max-images", "12") == 0
    assert np.array_equal(np.load(tmp_path / "again.npz")["arr_0"], ref)
    assert _make_reference(folder, tmp_path / "rest.npz", "--offset", "22") == 0
    rest = {x.tobytes() for x in np.load(tmp_path / "rest.npz")["arr_0"]}
    assert len(rest) == 8 and rest | ref_set | real_set == set(lookup)
    assert _make_reference(folder, tmp_path / "over.npz", "--offset", "25", "--max-images", "10") == 2
    assert not (tmp_path / "over.npz").exists()


def test_vq_floor_writes_reconstructions_of_the_same_images(heldout_folder, tmp_path):
    from par.data.tokenizer import VQConfig, VQModel, save_vq

    folder, _ = heldout_folder
    torch.manual_seed(0)
    save_vq(VQModel(VQConfig(codebook_size=16, codebook_embed_dim=4, encoder_ch_mult=(1, 2), decoder_ch_mult=(1, 2),
                             z_channels=32, ch=32, enc_res_blocks=1, dec_res_blocks=1)), tmp_path / "vq.pt")
    common = ["--offset", "12", "--max-images", "10"]
    assert _make_reference(folder, tmp_path / "real.npz", *common, "--labels", str(tmp_path / "real.npy")) == 0
    for side in ("16", "8"):  # at the VQ's own input side, or resized to it and back
        out = tmp_path / f"recon{side}.npz"
        assert _make_reference(folder, out, *common, "--vq", str(tmp_path / "vq.pt"), "--vq-size", side,
                               "--labels", str(tmp_path / f"recon{side}.npy")) == 0
        recon, real = np.load(out)["arr_0"], np.load(tmp_path / "real.npz")["arr_0"]
        assert recon.shape == real.shape == (10, 16, 16, 3) and recon.dtype == np.uint8
        assert not np.array_equal(recon, real)  # reconstructions, not copies
        assert np.array_equal(np.load(tmp_path / f"recon{side}.npy"), np.load(tmp_path / "real.npy"))


# ------------------------------------------------------------------ regressions


def test_classifier_weights_with_reference_stats_is_unavailable_not_a_crash(random_classifier, tmp_path):
    write_adm_npz(_random_images(6), tmp_path / "samples.npz")
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    out = tmp_path / "r.json"
    assert main(["evaluate", "--samples", str(tmp_path / "samples.npz"), "--reference-stats",
                 str(tmp_path / "stats.npz"), "--out", str(out), "--metrics", "",
                 "--classifier-weights", str(random_classifier)]) == 0
    r = json.loads(out.read_text())
    assert r["metrics"]["cls_fid"] is None and "needs reference images" in r["unavailable"]["classifier"]


def test_nll_images_are_drawn_from_every_class(tmp_path, monkeypatch):
    import par.eval.nll as N
    from par.config import NLLSettings

    root = tmp_path / "tokens_heldout"  # as `par tokenize` writes an ImageFolder: sorted by class
    root.mkdir()
    rng = np.random.default_rng(0)
    codes, labels = rng.integers(0, 16, (40, 10, 16)).astype(np.int16), np.repeat(np.arange(4), 10)
    for k, sl in enumerate((slice(0, 20), slice(20, 40))):
        np.savez(root / f"shard-{k:05d}.npz", codes=codes[sl], labels=labels[sl], indices=np.arange(40)[sl])
    (root / "manifest.json").write_text(json.dumps({"grid": [4, 4], "codebook_size": 16, "num_classes": 4,
                                                    "num_shards": 2, "num_images": 40}))
    gpt = _random_gpt("par", 4)
    io.torch_save({"model": gpt.state_dict(), "config": gpt.config.to_dict()}, tmp_path / "model.pt")
    seen = []
    real = N.heldout_nll
    monkeypatch.setattr(N, "heldout_nll", lambda model, c, y, bs, *a: seen.append(np.asarray(y)) or real(model, c, y, bs, *a))
    r = N.run_nll(str(tmp_path / "model.pt"), str(root), str(tmp_path / "nll.json"), NLLSettings(images=20))
    assert r["n_images"] == 20
    assert sorted(set(np.concatenate(seen).tolist())) == [0, 1, 2, 3]  # a fixed draw over the whole split
