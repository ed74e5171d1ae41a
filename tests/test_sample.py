"""Sharded sampling: resumable shards, exact index coverage, ADM npz format, decode path."""

import json

import numpy as np
import pytest
import torch

from par.cli import main


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from par import io
    from par.core.model import Transformer, model_config
    from par.data.tokenizer import VQConfig, VQModel, save_vq

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vq = VQModel(VQConfig(ch=32, encoder_ch_mult=(1, 1, 1, 1, 2), decoder_ch_mult=(1, 1, 1, 1, 2), z_channels=32,
                          codebook_size=64, codebook_embed_dim=8))
    save_vq(vq, root / "vq.pt")
    gpt = Transformer(model_config("tiny-S", grid=(4, 4), order="par", n=4, vocab_size=64, num_classes=5))
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    io.torch_save({"model": gpt.state_dict(), "config": gpt.config.to_dict()}, root / "gpt.pt")
    return root


def _args(models, out, *extra):
    return ["sample", "--model", str(models / "gpt.pt"), "--vq", str(models / "vq.pt"), "--out", str(out),
            "--num-samples", "10", "--shard-size", "4", "--batch-size", "3", "--image-size", "32", *extra]


def test_sharded_sampling_resumes_and_covers_every_index(tiny_models, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(_args(tiny_models, full)) == 0
    # a "killed" run: only shard 1 of 3 exists; the rerun completes exactly the missing ones
    assert main(_args(tiny_models, part, "--shard", "1", "--num-shards", "3")) == 0
    assert sorted(p.name for p in (part / "shards").iterdir()) == ["samples-00001.npz", "samples-00001.npz.sha256"]
    assert main(_args(tiny_models, part, "--finalize")) == 0
    a, b = np.load(full / "samples.npz"), np.load(part / "samples.npz")
    assert list(a.keys()) == ["arr_0"]
    assert a["arr_0"].dtype == np.uint8 and a["arr_0"].shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])  # shards do not depend on who made them
    np.testing.assert_array_equal(np.load(full / "labels.npy"), np.load(part / "labels.npy"))
    meta = json.loads((full / "sampling.json").read_text())
    assert meta["forward_calls"] == 7 and meta["num_samples"] == 10 and meta["seconds_per_image_batch1"] > 0
    from PIL import Image

    assert Image.open(full / "grid.png").size == (10 * 32, 5 * 32)  # 5 classes (of at most 10) × 10 samples


def test_finalize_refuses_holes_and_changed_settings(tiny_models, tmp_path):
    out = tmp_path / "s"
    assert main(_args(tiny_models, out, "--shard", "0", "--num-shards", "3")) == 0
    assert main(_args(tiny_models, out, "--shard", "0", "--num-shards", "3", "--finalize")) == 2  # holes
    assert main(_args(tiny_models, out, "--cfg-scale", "3.0")) == 2  # other settings, same folder


def test_changed_checkpoint_discards_stale_shards(tiny_models, tmp_path, capsys):
    """A retrained model (same settings, same folder, e.g. a forced workflow rerun) must not reuse old shards."""
    import shutil

    from par import io
    from par.core.model import Transformer, model_config

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    out = tmp_path / "s"
    assert main(_args(models, out, "--shard", "0", "--num-shards", "3")) == 0
    old = np.load(out / "shards" / "samples-00000.npz")["tokens"]
    torch.manual_seed(1)
    gpt = Transformer(model_config("tiny-S", grid=(4, 4), order="par", n=4, vocab_size=64, num_classes=5))
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    io.torch_save({"model": gpt.state_dict(), "config": gpt.config.to_dict()}, models / "gpt.pt")
    assert main(_args(models, out)) == 0
    assert "discarding 1 stale shard" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert main(_args(models, fresh)) == 0
    np.testing.assert_array_equal(np.load(out / "samples.npz")["arr_0"], np.load(fresh / "samples.npz")["arr_0"])
    assert not np.array_equal(np.load(out / "shards" / "samples-00000.npz")["tokens"], old)


def test_folder_from_an_older_version_without_new_fields_is_accepted(tiny_models, tmp_path):
    out = tmp_path / "s"
    assert main(_args(tiny_models, out, "--shard", "0", "--num-shards", "3")) == 0
    rec = json.loads((out / "job.json").read_text())
    del rec["compile"]  # a field added later, at its default
    (out / "job.json").write_text(json.dumps(rec))
    assert main(_args(tiny_models, out, "--shard", "1", "--num-shards", "3")) == 0
    assert len(list((out / "shards").glob("*.npz"))) == 2  # shard 0 kept: same inputs, same settings


@pytest.mark.slow
def test_compiled_sampling_matches_eager(tiny_models, tmp_path):
    """--compile true (static KV cache, compiled decode step) gives the same samples as the eager sampler."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert main(_args(tiny_models, eager, "--temperature", "0")) == 0
    assert main(_args(tiny_models, compiled, "--temperature", "0", "--compile", "true")) == 0
    assert json.loads((compiled / "job.json").read_text())["compile"] is True
    np.testing.assert_array_equal(np.load(eager / "samples.npz")["arr_0"], np.load(compiled / "samples.npz")["arr_0"])


def test_decode_matches_reference_quantisation(tiny_models):
    from par.eval.sample import decode_to_uint8
    from par.data.tokenizer import load_vq

    vq = load_vq(tiny_models / "vq.pt")
    codes = torch.randint(0, 64, (2, 16))
    img = decode_to_uint8(vq, codes, (4, 4), 64)
    with torch.no_grad():
        x = vq.decode_codes(codes, (4, 4))
    ref = torch.clamp(127.5 * x + 128, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(img, ref)


def test_worker_processes_split_the_shards_and_give_the_same_samples(tiny_models, tmp_path):
    """`--procs 2` (a job's GPUs; CPU processes here): every shard made once, by one of the workers, and the
    packed samples equal one process's."""
    assert main(_args(tiny_models, tmp_path / "one")) == 0
    assert main(_args(tiny_models, tmp_path / "two", "--procs", "2")) == 0
    for name in ("samples.npz", "labels.npy"):
        a, b = np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name)
        np.testing.assert_array_equal(a["arr_0"] if name.endswith("npz") else a, b["arr_0"] if name.endswith("npz") else b)
    assert sorted(p.name for p in (tmp_path / "two" / "shards").glob("*.npz")) == [f"samples-0000{k}.npz" for k in range(3)]


def test_a_sampling_job_with_several_gpus_runs_a_worker_per_gpu():
    import yaml

    from par.workflow import Experiment

    cfg = yaml.safe_load(open(__import__("pathlib").Path(__file__).parent.parent / "config.yaml"))
    cfg["preset"] = "paper"
    assert "--procs 8" in Experiment(cfg).sample_args("par-L-n4/s0")  # resources.sample: 8 GPUs
    cfg["preset"] = "tiny"
    assert "--procs" not in Experiment(cfg).sample_args("par-n4/s0")


def test_balanced_labels_give_every_class_its_share(tiny_models, tmp_path):
    assert main(_args(tiny_models, tmp_path / "b", "--labels", "balanced")) == 0
    labels = np.load(tmp_path / "b" / "labels.npy")
    assert labels.tolist() == [i % 5 for i in range(10)]  # 5 classes, 10 samples: 2 each
    assert main(_args(tiny_models, tmp_path / "r")) == 0
    assert np.load(tmp_path / "r" / "labels.npy").tolist() != labels.tolist()
    assert json.loads((tmp_path / "b" / "sampling.json").read_text())["job"]["labels"] == "balanced"
