"""Learning curves and class information (#24 items 5 and 6): held-out NLL at every checkpoint of `par train`
without changing the training, NLL(null) − NLL(true) in `par nll`, and the curves in `par tables`."""

import json
import math

import numpy as np
import pytest
import torch

from par import io
from par.cli import main
from par.core.model import load_checkpoint
from par.errors import UserError
from par.eval.nll import class_information, heldout_draw, heldout_nll
from par.train.train import train

from test_train import make_token_dir, tiny_cfg


def _records(run_dir):
    return [json.loads(ln) for ln in (run_dir / "log.jsonl").read_text().splitlines()]


def _curve(run_dir):
    return [r for r in _records(run_dir) if "heldout_nll" in r]


def _same_weights(a, b) -> bool:
    wa, wb = (load_checkpoint(p).state_dict() for p in (a / "model.pt", b / "model.pt"))
    return all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def token_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    return make_token_dir(root / "train"), make_token_dir(root / "heldout", num_images=40, seed=1)


# dropout and label dropout on: the curve must not draw from the training's RNG stream (ARPG's forward draws its
# label-dropout noise even when told to drop nothing)
@pytest.mark.parametrize("model", [dict(order="par", n=4), dict(order="arpg", n=1)])
def test_curve_points_leave_training_bit_identical(tmp_path, token_dirs, model):
    data, heldout = token_dirs
    kw = dict(max_steps=12, ckpt_every=5, dropout=0.1, class_dropout=0.2, **model)
    train(tiny_cfg(data, tmp_path / "plain", **kw))
    train(tiny_cfg(data, tmp_path / "curve", curve_tokens=str(heldout), curve_images=24, **kw))
    assert _same_weights(tmp_path / "plain", tmp_path / "curve")
    plain, curve = _records(tmp_path / "plain"), _records(tmp_path / "curve")
    assert [r for r in curve if "loss" in r] and all("loss" in r for r in plain)
    assert [r["loss"] for r in curve if "loss" in r] == [r["loss"] for r in plain]  # the same stream, step by step
    points = _curve(tmp_path / "curve")
    assert [p["step"] for p in points] == [5, 10, 12]  # every checkpoint and the last step
    grid_tokens = 16
    assert [p["tokens_seen"] for p in points] == [s * 8 * grid_tokens for s in (5, 10, 12)]
    assert all(p["heldout_images"] == 24 and p["heldout_nll_se"] > 0 for p in points)
    # the point at the last step is `par nll`'s score of the final weights on the same draw (ARPG: one order)
    codes, labels = heldout_draw(str(heldout), 24)
    final = heldout_nll(load_checkpoint(tmp_path / "curve" / "model.pt"), codes, labels, 7)
    assert points[-1]["heldout_nll"] == pytest.approx(final.mean(), rel=1e-5)


def test_curve_every_and_resume_keep_each_point_once(tmp_path, token_dirs):
    data, heldout = token_dirs
    kw = dict(ckpt_every=5, curve_every=3, curve_tokens=str(heldout), curve_images=16, schedule="constant")
    train(tiny_cfg(data, tmp_path / "whole", max_steps=14, **kw))
    # a run stopped after step 8 (its last checkpoint: step 8) and resumed to 14 (constant LR: the same steps)
    train(tiny_cfg(data, tmp_path / "split", max_steps=8, **kw))
    (tmp_path / "split" / "model.pt").unlink()
    train(tiny_cfg(data, tmp_path / "split", max_steps=14, **kw))
    whole, split = _curve(tmp_path / "whole"), _curve(tmp_path / "split")
    assert [p["step"] for p in whole] == [3, 6, 9, 12, 14]
    assert [p["step"] for p in split] == [3, 6, 8, 9, 12, 14]  # step 8 was the first run's last: scored once
    same = {p["step"]: p["heldout_nll"] for p in whole}
    assert all(p["heldout_nll"] == same[p["step"]] for p in split if p["step"] != 8)
    assert _same_weights(tmp_path / "whole", tmp_path / "split")


def test_curve_tokens_of_another_grid_fail_at_start(tmp_path, token_dirs):
    data, _ = token_dirs
    other = make_token_dir(tmp_path / "other", num_images=8, grid=(3, 3))
    with pytest.raises(UserError, match="--curve-tokens .*held-out tokens have 9 per image, the model 16"):
        train(tiny_cfg(data, tmp_path / "run", curve_tokens=str(other)))
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_no_curve_without_tokens_or_images(tmp_path, token_dirs):
    data, heldout = token_dirs
    train(tiny_cfg(data, tmp_path / "a", max_steps=6))
    train(tiny_cfg(data, tmp_path / "b", max_steps=6, curve_tokens=str(heldout), curve_images=0))
    assert _curve(tmp_path / "a") == [] and _curve(tmp_path / "b") == []


# ------------------------------------------------------------------------------------------ class information


def _gpt(class_dropout=0.1, seed=0):
    from par.core.model import Transformer, model_config

    torch.manual_seed(seed)
    gpt = Transformer(model_config("tiny-S", grid=(4, 4), order="par", n=4, vocab_size=16, num_classes=4,
                                   class_dropout_prob=class_dropout))
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    torch.nn.init.normal_(gpt.cls_embedding.embedding_table.weight, std=1.0)
    return gpt.eval()


def test_class_information_is_null_minus_true_nll_and_zero_for_a_label_blind_model():
    gpt = _gpt()
    rng = np.random.default_rng(0)
    codes, labels = rng.integers(0, 16, (12, 16)).astype(np.int16), rng.integers(0, 4, 12)
    info = class_information(gpt, codes, labels, 5)
    null = gpt.config.num_classes  # the null class of CFG
    z = gpt.order.to_order(torch.as_tensor(codes.astype(np.int64)))
    with torch.no_grad():
        want = [gpt(z[i:i + 1], torch.tensor([null]), targets=z[i:i + 1])[1].item()
                - gpt(z[i:i + 1], torch.tensor([int(labels[i])]), targets=z[i:i + 1])[1].item() for i in range(12)]
    np.testing.assert_allclose(info, want, rtol=1e-4, atol=1e-6)
    assert np.abs(info).max() > 1e-3  # a real check: the labels change the logits
    with torch.no_grad():  # every class, the null one included, embedded alike: the label carries nothing
        gpt.cls_embedding.embedding_table.weight[:] = gpt.cls_embedding.embedding_table.weight[0]
    np.testing.assert_allclose(class_information(gpt, codes, labels, 5), 0.0, atol=1e-6)
    with pytest.raises(UserError, match="no null class"):
        class_information(_gpt(class_dropout=0.0), codes, labels, 5)


def test_par_nll_reports_class_information(tmp_path):
    tokens = make_token_dir(tmp_path / "tokens_heldout", num_images=30)
    for name, drop in (("with", 0.1), ("without", 0.0)):
        gpt = _gpt(class_dropout=drop)
        io.torch_save({"model": gpt.state_dict(), "config": gpt.config.to_dict()}, tmp_path / f"{name}.pt")
        assert main(["nll", "--model", str(tmp_path / f"{name}.pt"), "--tokens", str(tokens),
                     "--out", str(tmp_path / f"{name}.json"), "--batch-size", "7"]) == 0
    r = json.loads((tmp_path / "with.json").read_text())
    codes, labels = heldout_draw(str(tokens))
    info = class_information(_gpt(), codes, labels, 30)
    assert r["class_info"] == pytest.approx(info.mean(), rel=1e-5)
    assert r["class_info_se"] == pytest.approx(info.std(ddof=1) / math.sqrt(30), rel=1e-5)
    assert r["class_info_per_image"] == pytest.approx(16 * r["class_info"])
    assert r["nll_null"] == pytest.approx(r["nll"] + r["class_info"])
    assert r["class_info_max_per_image"] == pytest.approx(math.log(4))
    r0 = json.loads((tmp_path / "without.json").read_text())
    assert "class_info" not in r0 and "class_dropout 0" in r0["class_info_unavailable"]


# ------------------------------------------------------------------------------------------ the workflow


def test_train_rule_scores_the_curve_on_the_runs_own_heldout_tokens():
    import copy
    from pathlib import Path

    import yaml

    from par.workflow import Experiment

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    e = Experiment(cfg | {"preset": "tiny"})
    assert e.curve_manifest("par-n4/s0") == ["results/tiny/tokens_heldout/manifest.json"]
    assert e.curve_args("par-n4/s0") == "--curve-tokens results/tiny/tokens_heldout"
    assert e.curve_args("video-n4/s1") == "--curve-tokens results/tiny/video/tokens_heldout"
    off = copy.deepcopy(cfg)
    off["presets"]["tiny"]["train"]["curve_images"] = 0  # the preset turns it off; one model turns it back on
    off["presets"]["tiny"]["models"]["par-n16"]["curve_images"] = 64
    e = Experiment(off | {"preset": "tiny"})
    assert e.curve_manifest("par-n4/s0") == [] and e.curve_args("par-n4/s0") == ""
    assert e.curve_args("par-n16/s0") == "--curve-tokens results/tiny/tokens_heldout"
    assert "--curve-images 64" in e.train_args("par-n16/s0")


# ------------------------------------------------------------------------------------------ tables and report

CURVE_STEPS = (50, 100, 150, 200)


def _curve_results(root):
    """test_report's results tree for n=1, n=4, n=16 (3 seeds each) with learning curves in their log.jsonl (n=16's
    NLL gap to n=4 widening from 0 to 0.06 nats), the training regime in config.json and class information in the
    NLL files."""
    from test_report import MODELS, _write, make_results

    preset = make_results(root, {m: MODELS[m] for m in ("raster-n1", "par-n4", "par-n16")})
    gap = {"raster-n1": 0.0, "par-n4": 0.0, "par-n16": 0.02}
    for model, entry in preset["models"].items():
        for k in range(entry["seeds"]):
            run = root / "models" / model / f"s{k}"
            _write(run / "config.json", {"params": 400_000, "steps": 200, "train_images": 20_000,
                                         "train": {"global_batch": 64}, "model": {"grid": [16, 16]}})
            points = [
                {"step": s, "epoch": s * 64 / 20_000, "tokens_seen": s * 64 * 256,
                 "heldout_nll": 3.0 - s / 200 + gap[model] * (s / 50 - 1) + 0.004 * (k - 1), "heldout_nll_se": 0.01,
                 "heldout_images": 256} for s in CURVE_STEPS]
            log = "".join(f'{{"step": {p["step"]}, "loss": 3.0}}\n{json.dumps(p)}\n' for p in points)
            (run / "log.jsonl").write_text(log + '{"step": 201, "heldo')  # a line a kill cut short
            nll = root / "nll" / model / f"s{k}.json"
            _write(nll, json.loads(nll.read_text()) | {
                "class_info_per_image": 1.1 + 0.1 * k, "class_info_per_image_se": 0.05,
                "class_info_max_per_image": math.log(10)})
    return preset


def test_curves_are_gathered_and_every_nll_claim_is_judged_at_every_point(tmp_path):
    import pandas as pd
    from scipy import stats

    from par.analysis import tables
    from test_report import TABLES

    preset = _curve_results(tmp_path / "r")
    written = tables.write_tables_for({"tables": TABLES}, preset, "small", tmp_path / "r", tmp_path / "a" / "tables")
    assert {p.name for p in written} >= {"curves.csv", "curve_differences.md", "curve_differences.csv"}
    curves = pd.read_csv(tmp_path / "a" / "tables" / "curves.csv")
    assert len(curves) == 3 * 3 * len(CURVE_STEPS)  # models × seeds × points; the cut last line is skipped
    assert set(curves["step"]) == set(CURVE_STEPS) and (curves["tokens_seen"] == curves["step"] * 64 * 256).all()
    diffs = pd.read_csv(tmp_path / "a" / "tables" / "curve_differences.csv")
    worse = diffs[diffs["comparison"] == "table3b: n=4 better than n=16"].set_index("step")
    assert list(worse.index) == list(CURVE_STEPS)
    assert worse["difference"].tolist() == pytest.approx([0.0, -0.02, -0.04, -0.06], abs=1e-12)  # the gap widens
    # the rule of the Verdicts section: Welch's t test, here on the three seeds of each model at step 100
    at = curves[curves["step"] == 100].groupby("model")["heldout_nll"].apply(list)
    ref = stats.ttest_ind(at["par-n4"], at["par-n16"], equal_var=False)
    assert worse.loc[100, "df"] == pytest.approx(ref.df)
    assert worse["verdict"].tolist() == ["not resolved"] + ["reproduced"] * 3
    md = (tmp_path / "a" / "tables" / "curve_differences.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| table3b: n=4 better than n=16") and "step" not in ln)
    cells = [c.strip() for c in row.split("|")[2:-1]]  # bold where the rule decides at that point
    assert "step 50 (819k tokens)" in md and cells == ["0.000 ± 0.003", "**-0.020 ± 0.003**", "**-0.040 ± 0.003**",
                                                       "**-0.060 ± 0.003**"]
    # class information: a column of every image table, with its ceiling log(classes)
    t2 = (tmp_path / "a" / "tables" / "table2.md").read_text()
    assert "class info / image" in t2 and "1.20 ± 0.06" in t2 and "carry at most log(classes) = 2.30" in t2
    runs = pd.read_csv(tmp_path / "a" / "tables" / "runs.csv")
    assert runs.loc[runs["kind"] == "run", "epochs"].tolist() == pytest.approx([200 * 64 / 20_000] * 9)


def test_the_report_states_the_regime_first_and_draws_the_curves(tmp_path):
    from par.analysis import report, tables
    from test_report import TABLES

    preset = _curve_results(tmp_path / "r")
    tables.write_tables_for({"tables": TABLES}, preset, "small", tmp_path / "r", tmp_path / "a" / "tables")
    md = report.render_report({"tables": TABLES}, preset, "small", tmp_path / "r", tmp_path / "a").read_text()
    first = md.split("\n\n")[1]  # the paragraph under the title
    assert ("**Training regime.** Each run: 200 steps = 12,800 sequences, 0.64 epochs of the 20,000-image train "
            "split, 3.28M tokens seen (raster-n1, par-n4, par-n16).") in first
    section = md[md.index("## Learning curves"):md.index("## Speed vs. quality")]
    assert "![learning curves](figures/learning_curves.png)" in section and "256 held-out images" in section
    assert "### NLL claims along training" in section and "table3b: n=4 better than n=16" in section
    assert (tmp_path / "a" / "figures" / "learning_curves.png").stat().st_size > 10_000
    # runs trained without --curve-tokens: no section, no stale figure in the tables
    for log in (tmp_path / "r" / "models").rglob("log.jsonl"):
        log.unlink()
    tables.write_tables_for({"tables": TABLES}, preset, "small", tmp_path / "r", tmp_path / "a" / "tables")
    assert not (tmp_path / "a" / "tables" / "curves.csv").exists()
    md = report.render_report({"tables": TABLES}, preset, "small", tmp_path / "r", tmp_path / "a").read_text()
    assert "## Learning curves" not in md


# ------------------------------------------------------------------------------------------ the conditioning path


def _class_grid_tokens(root, grids: np.ndarray, per_class: int):
    """A `par tokenize` folder in which the class fixes the image: every image of class c (all ten crops) is the
    token grid `grids[c]`."""
    classes, num = len(grids), len(grids) * per_class
    labels = np.repeat(np.arange(classes), per_class)
    codes = np.repeat(grids[labels][:, None, :], 10, axis=1).astype(np.int16)
    root.mkdir(parents=True)
    np.savez(root / "shard-00000.npz", codes=codes, labels=labels, indices=np.arange(num))
    (root / "manifest.json").write_text(json.dumps({"grid": [4, 4], "codebook_size": 16, "num_classes": classes,
                                                    "num_shards": 1, "num_images": num}))
    return root


def _nearest(x: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """Index of the nearest template (squared distance) of every row of `x`."""
    d = ((x[:, None].astype(np.float64) - templates[None].astype(np.float64)) ** 2).reshape(len(x), len(templates), -1)
    return d.sum(-1).argmin(1)


@pytest.mark.slow
@pytest.mark.parametrize("order, n", [("par", 4), ("raster", 1)])
def test_the_class_label_reaches_the_samples_end_to_end(tmp_path, order, n):
    """#24 item 6: `par train` → model.pt → `par sample` with labels (CFG, so the null class too) → the samples
    show the class they were asked for, as tokens and as decoded images; `par nll` measures the class information the
    model uses, near its ceiling log(4) here; the learning curve falls."""
    from par.data.tokenizer import VQConfig, VQModel, save_vq
    from par.eval.sample import decode_to_uint8

    grids = np.random.default_rng(0).integers(0, 16, (4, 16))  # 4 classes, each one fixed 4×4 token grid
    tokens = _class_grid_tokens(tmp_path / "tokens", grids, per_class=16)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tokens), "--out", str(run), "--curve-tokens", str(tokens), "--size", "tiny-S",
                 "--order", order, "--n", str(n), "--global-batch", "16", "--lr", "0.003", "--max-steps", "120",
                 "--schedule", "constant", "--dropout", "0", "--class-dropout", "0.2", "--ckpt-every", "40",
                 "--launcher", "inprocess", "--seed", "1"]) == 0
    curve = _curve(run)
    assert [p["step"] for p in curve] == [40, 80, 120] and curve[-1]["heldout_nll"] < min(0.1, curve[0]["heldout_nll"])

    torch.manual_seed(0)  # an untrained VQ decoder: a fixed map from token grids to images, all we need here
    vq = VQModel(VQConfig(ch=32, encoder_ch_mult=(1, 1, 1, 1, 2), decoder_ch_mult=(1, 1, 1, 1, 2), z_channels=32,
                          codebook_size=16, codebook_embed_dim=8))
    save_vq(vq, tmp_path / "vq.pt")
    out = tmp_path / "samples"
    assert main(["sample", "--model", str(run / "model.pt"), "--vq", str(tmp_path / "vq.pt"), "--out", str(out),
                 "--num-samples", "80", "--shard-size", "80", "--batch-size", "40", "--image-size", "32",
                 "--labels", "random", "--cfg-scale", "1.5", "--seed", "3"]) == 0
    shard = np.load(out / "shards" / "samples-00000.npz")
    labels = np.load(out / "labels.npy")
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3]
    token_accuracy = (_nearest(shard["tokens"], grids) == labels).mean()
    templates = decode_to_uint8(vq, torch.as_tensor(grids), (4, 4), 32)  # each class's image, as `par sample` decodes
    image_accuracy = (_nearest(np.load(out / "samples.npz")["arr_0"], templates) == labels).mean()
    assert token_accuracy >= 0.95 and image_accuracy >= 0.95, (token_accuracy, image_accuracy)

    assert main(["nll", "--model", str(run / "model.pt"), "--tokens", str(tokens), "--out", str(tmp_path / "nll.json")
                 ]) == 0
    r = json.loads((tmp_path / "nll.json").read_text())
    assert r["class_info_max_per_image"] == pytest.approx(math.log(4))
    # the label fixes the image: the model uses (nearly) all of log(4); more where its null branch, trained on a
    # fifth of the batches, is still worse than the mixture of its class branches
    assert r["class_info_per_image"] > 0.8 * math.log(4), r


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_ranks_score_the_same_curve_as_one_process(tmp_path, token_dirs, kind):
    """Rank 0 scores alone under DDP; under FSDP every rank joins the forward (it gathers the shards), else the
    run would hang. Weights and curve are those of one process."""
    from test_parallel import _assert_same, _train, _weights

    data, heldout = token_dirs
    curve = ["--curve-tokens", str(heldout), "--curve-images", "16", "--curve-every", "2"]
    single = _train(data, tmp_path / "single", *curve)
    run = _train(data, tmp_path / kind, "--parallel", kind, *curve, ranks=2)
    _assert_same(_weights(run), _weights(single))
    one, two = _curve(single), _curve(run)
    assert [p["step"] for p in two] == [2, 4]
    assert [p["heldout_nll"] for p in two] == pytest.approx([p["heldout_nll"] for p in one], abs=1e-4)
