"""Training at scale on 2 gloo processes: DDP and FSDP2 reach the weights of one process, gradient accumulation
keeps the global batch, and a sharded checkpoint resumes on another world size."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_train import make_token_dir

# PAR n=4, no dropout (ranks draw different dropout masks), constant LR: runs differ only by how they split the work
COMMON = ["--size", "tiny-S", "--order", "par", "--n", "4", "--global-batch", "8", "--lr", "0.003", "--schedule",
          "constant", "--dropout", "0", "--class-dropout", "0", "--log-every", "1", "--ckpt-every", "100",
          "--seed", "3", "--launcher", "inprocess"]


def _train(data, out, *extra, ranks=1, steps=4):
    cmd = ["-m", "par", "train", "--data", str(data), "--out", str(out), "--max-steps", str(steps), *COMMON, *extra]
    if ranks > 1:
        # "--": torchrun would read the run's own flags (--n …) as abbreviations of its options
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m", "par", "--", *cmd[2:]]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=600,
                       env={**env, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(out)


def _weights(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)["model"]


def _assert_same(a: dict, b: dict, atol=2e-5):
    assert list(a) == list(b)
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, worst


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_token_dir(tmp_path_factory.mktemp("tokens"), num_images=64, grid=(4, 4), vocab=16, classes=4)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    return _train(data, tmp_path_factory.mktemp("single") / "run")


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_ranks_reach_the_weights_of_one_process(data, single, tmp_path, kind):
    run = _train(data, tmp_path / kind, "--parallel", kind, ranks=2)
    _assert_same(_weights(run), _weights(single))
    assert (run / ("ckpt.dcp" if kind == "fsdp" else "ckpt.pt")).exists()
    assert not (run / "ckpt.dcp.tmp").exists()


def test_gradient_accumulation_keeps_the_global_batch(data, single, tmp_path):
    _assert_same(_weights(_train(data, tmp_path / "micro", "--micro-batch", "3")), _weights(single))


def test_activation_checkpointing_changes_memory_not_weights(data, single, tmp_path):
    _assert_same(_weights(_train(data, tmp_path / "ac", "--activation-checkpointing", "true")), _weights(single))
    # ... and it does change memory: what autograd keeps for the backward pass, with the training wiring
    from par.core.model import build, model_config
    from par.train.memory import saved_bytes
    from par.train.parallel import checkpoint_activations

    def kept(checkpointing):
        torch.manual_seed(0)
        model = build(model_config("tiny-S", grid=(4, 4), order="par", n=4, vocab_size=16, num_classes=4)).train()
        if checkpointing:
            checkpoint_activations(model)
        tokens = torch.randint(0, 16, (8, 16))
        return saved_bytes(model, tokens, torch.zeros(8, dtype=torch.long), amp=False)

    assert kept(True) < 0.6 * kept(False)


def test_hybrid_sharding_on_a_2x2_mesh_reaches_the_weights_of_one_process(data, single, tmp_path):
    """HSDP as on 2 nodes × 2 GPUs: shard over 2 ranks, replicate across the 2 pairs (4 gloo processes)."""
    run = _train(data, tmp_path / "hsdp", "--parallel", "fsdp", "--fsdp-shard-group", "2", ranks=4)
    _assert_same(_weights(run), _weights(single))


@pytest.mark.parametrize("then", ["fsdp", "ddp"])
def test_a_sharded_checkpoint_resumes_on_another_world_size(data, tmp_path, then):
    """FSDP on 2 ranks stops at step 2 (its ckpt.dcp); the run goes on in one process to step 4 and ends where an
    uninterrupted one-process run ends."""
    run = _train(data, tmp_path / "r", "--parallel", "fsdp", ranks=2, steps=2)
    (run / "model.pt").unlink()
    _train(data, run, "--parallel", then, steps=4)
    _assert_same(_weights(run), _weights(_train(data, tmp_path / "straight", steps=4)))


def test_fsdp_with_ema_is_refused_with_the_fix(data, tmp_path):
    r = subprocess.run([sys.executable, "-m", "par", "train", "--data", str(data), "--out", str(tmp_path / "e"),
                        "--max-steps", "1", "--parallel", "fsdp", "--ema", "true", *COMMON], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "--parallel ddp, or without --ema" in r.stderr
