"""Every GPU stage runs where its job says (issue #23, item 3): one resolution of the `device` setting
(`par.devices.resolve`), and each stage's model and batches end up on the device it returns. No GPU here: `auto`
is checked against a stand-in CUDA, and the stages against a recording resolver (the device must reach the model,
not just be parsed)."""

import numpy as np
import pytest
import torch

from par import devices
from par.errors import UserError


def test_auto_is_this_jobs_gpu_when_cuda_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert devices.resolve("auto") == torch.device("cuda", 2)
    assert devices.resolve("") == devices.resolve(None) == torch.device("cuda", 2)


def test_auto_is_the_cpu_without_cuda_and_cuda_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="--device cuda:1: no CUDA device"):
        devices.resolve("cuda:1")
    with pytest.raises(UserError, match="--device gpu0: expected"):
        devices.resolve("gpu0")


@pytest.fixture
def recorder(monkeypatch):
    """`resolve` that records what each stage asked for and answers the CPU (the only device here)."""
    asked = []

    def resolve(device="auto"):
        asked.append(device)
        return torch.device("cpu")

    monkeypatch.setattr(devices, "resolve", resolve)
    return asked


def _tiny_model():
    from par.core.model import build, model_config

    return build(model_config("tiny-S", grid=(4, 4), order="par", n=4, vocab_size=16, num_classes=4))


class _Shards:
    centre_crop, crop_order = 0, ["center"]

    def __init__(self, path):
        pass

    def load(self, crop):
        rng = np.random.default_rng(0)
        return rng.integers(0, 16, (6, 16)).astype(np.int16), rng.integers(0, 4, 6)


def test_nll_scores_on_the_jobs_device(recorder, monkeypatch, tmp_path):
    """Before: `par nll` loaded the model on the CPU whatever the job's GPU (a 3B model scored on CPU cores)."""
    import par.core.model
    import par.data.shards
    from par.config import NLLSettings
    from par.eval.nll import run_nll

    placed = []
    model = _tiny_model()
    original_to = model.to

    def to(*args, **kw):
        placed.append(args[0] if args else kw.get("device"))
        return original_to(*args, **kw)

    monkeypatch.setattr(model, "to", to)
    monkeypatch.setattr(par.core.model, "load_checkpoint", lambda *a, **k: model)
    monkeypatch.setattr(par.data.shards, "TokenShards", _Shards)
    record = run_nll("m.pt", "tokens", str(tmp_path / "nll.json"), NLLSettings(device="cuda:3"))
    assert recorder == ["cuda:3"] and placed == [torch.device("cpu")] and record["device"] == "cpu"


def test_sampling_tokenizing_fvd_and_evaluation_ask_for_the_jobs_device(recorder, monkeypatch):
    from par.data.tokenize import _device
    from par.eval.metrics import _use_cuda

    _device("cuda:1")
    _use_cuda("cuda:2")
    assert recorder == ["cuda:1", "cuda:2"]


def test_fvd_puts_the_i3d_on_the_jobs_device(recorder, i3d_weights):
    from par.eval.i3d import load_i3d

    model = load_i3d(i3d_weights, device="cuda:5")
    assert recorder == ["cuda:5"] and next(model.parameters()).device == torch.device("cpu")


def test_train_vq_trains_on_the_jobs_device(recorder, tmp_path):
    from PIL import Image

    from par.config import VQTrainJob
    from par.data.vqtrain import train_vq

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "img" / c / f"{i}.png")
    m = train_vq(VQTrainJob(images=str(tmp_path / "img"), out=str(tmp_path / "vq"), image_size=16, steps=2,
                            batch_size=2, heldout=2, ch=32, ch_mult="1,2", device="cuda:4"))
    assert recorder == ["cuda:4"] and m["device"] == "cpu"
