"""Training loop: learning, exact kill/resume, schedules, DDP equivalence."""

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

from par.errors import UserError
from par.core.model import load_checkpoint
from par.config import TrainJob as TrainConfig
from par.train.train import EXIT_PREEMPTED, TokenArrays, lr_at, train, update_ema


def make_token_dir(root: Path, num_images=64, grid=(4, 4), vocab=16, classes=4, crops=10, seed=0) -> Path:
    """A `par tokenize`-format directory with learnable structure: class c → codes near c*vocab/classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, num_images)
    base = (labels * (vocab // classes))[:, None, None]
    codes = (base + rng.integers(0, 2, (num_images, crops, int(np.prod(grid))))).astype(np.int16)
    root.mkdir(parents=True, exist_ok=True)
    half = num_images // 2
    for k, sl in enumerate((slice(0, half), slice(half, None))):
        np.savez(root / f"shard-{k:05d}.npz", codes=codes[sl], labels=labels[sl],
                 indices=np.arange(num_images)[sl])
    (root / "manifest.json").write_text(json.dumps({"grid": list(grid), "codebook_size": vocab, "num_classes": classes,
                                                    "num_shards": 2, "num_images": num_images}))
    return root


def tiny_cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), size="tiny-S", order="par", n=4, global_batch=8, lr=3e-3,
                max_steps=24, schedule="constant", ckpt_every=5, log_every=1, seed=3)
    return TrainConfig(**{**base, **kw})


def test_batches_are_a_function_of_step_and_independent_of_world(tmp_path):
    data = TokenArrays.load(make_token_dir(tmp_path / "d"))
    a, la = data.batch(5, 8, seed=1)
    assert a.shape == (8, 16) and la.shape == (8,)
    assert not torch.equal(data.batch(6, 8, seed=1)[0], a)
    # Every row tagged with its (image, crop): code = 10·image + crop at every position, label = image.
    num, ncrop, batch = 64, 10, 8
    codes = (torch.arange(num)[:, None, None] * ncrop + torch.arange(ncrop)[None, :, None]).expand(num, ncrop, 16)
    tagged = TokenArrays(codes.to(torch.int16).contiguous(), torch.arange(num), (4, 4), num * ncrop, num)

    def rows(step, rank=0, world=1):
        x, lab = tagged.batch(step, batch, seed=1, rank=rank, world=world)
        assert torch.equal(x, x[:, :1].expand_as(x)) and torch.equal(x[:, 0] // ncrop, lab)  # crops stay whole
        return [(int(v) // ncrop, int(v) % ncrop) for v in x[:, 0]]

    steps = range(40)  # 5 epochs of 8 steps
    single = {s: rows(s) for s in steps}
    # a pure function of the step: the same rows when asked again, in any order, and other rows at other steps
    assert {s: rows(s) for s in reversed(steps)} == single
    assert len({tuple(r) for r in single.values()}) == len(steps)
    for e in range(5):  # epoch-wise shuffle without replacement: each epoch's steps hold every image once
        assert sorted(i for s in range(8 * e, 8 * e + 8) for i, _ in single[s]) == list(range(num))
    # independent of the world size: the ranks' shares together are exactly the single-process batch, crops included
    for world in (2, 4):
        for s in steps:
            parts = [rows(s, r, world) for r in range(world)]
            assert all(len(p) == batch // world for p in parts)
            assert sorted(sum(parts, [])) == sorted(single[s]), (world, s)
    # crops are drawn uniformly over the 10 ten-crop variants (320 draws: 32 expected per crop)
    counts = np.bincount([c for r in single.values() for _, c in r], minlength=ncrop)
    assert len(counts) == ncrop and counts.min() >= 16 and counts.max() <= 48, counts


def test_training_learns_and_writes_artifacts(tmp_path):
    cfg = tiny_cfg(make_token_dir(tmp_path / "d"), tmp_path / "run", max_steps=60, dropout=0.0, class_dropout=0.0)
    final = train(cfg)
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 61))
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(log[0])
    from par.core.model import load_checkpoint

    model = load_checkpoint(final)  # weights_only=True, config carried in the file
    assert model.config.n == 4 and model.order.num_calls == 7


def test_cosine_schedule_with_warmup():
    cfg = TrainConfig(lr=1.0, warmup_epochs=1, schedule="cosine")
    assert lr_at(0, 100, 10, cfg) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, cfg) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, cfg) == pytest.approx(0.5)
    assert lr_at(99, 100, 10, cfg) < 1e-3
    assert lr_at(50, 100, 10, TrainConfig(lr=2.0, schedule="constant")) == 2.0


def _run_cli(cfg: TrainConfig, env=None):
    args = [sys.executable, "-m", "par", "train"]
    for k, v in cfg.__dict__.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_update_ema_is_the_reference_update():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    w0 = a.weight.detach().clone()
    update_ema(a, b, 0.9)
    torch.testing.assert_close(a.weight, 0.9 * w0 + 0.1 * b.weight.detach(), rtol=0, atol=1e-7)
    update_ema(a, b, 0.0)  # decay 0 copies (how the reference initialises its EMA)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


@pytest.mark.parametrize("ema", [False, True])
def test_sigusr2_checkpoints_at_step_boundary_then_resumes(tmp_path, ema):
    data = make_token_dir(tmp_path / "d")
    cfg = tiny_cfg(data, tmp_path / "run", max_steps=30, ckpt_every=1000, ema=ema, ema_decay=0.9)
    p = _run_cli(cfg)
    log = tmp_path / "run" / "log.jsonl"
    while not (log.exists() and len(log.read_text().splitlines()) >= 5):
        assert p.poll() is None
        time.sleep(0.02)
    p.send_signal(signal.SIGUSR2)
    assert p.wait() == EXIT_PREEMPTED
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert 5 <= ck["step"] < 30 and not (tmp_path / "run" / "model.pt").exists()
    assert _run_cli(cfg).wait() == 0
    ref = tiny_cfg(data, tmp_path / "ref", max_steps=30, ckpt_every=1000, ema=ema, ema_decay=0.9)
    train(ref)
    for weights in ("model", "ema") if ema else ("model",):
        a = load_checkpoint(tmp_path / "ref" / "model.pt", weights=weights).state_dict()
        b = load_checkpoint(tmp_path / "run" / "model.pt", weights=weights).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), weights
    if ema:  # the EMA is its own set of weights, and resuming restored it exactly (checked above)
        m = load_checkpoint(tmp_path / "run" / "model.pt").state_dict()
        e = load_checkpoint(tmp_path / "run" / "model.pt", weights="ema").state_dict()
        assert not torch.equal(m["output.weight"], e["output.weight"])
    else:
        with pytest.raises(UserError, match="no 'ema' weights"):
            load_checkpoint(tmp_path / "run" / "model.pt", weights="ema")
