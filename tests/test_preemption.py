"""Preemption and resume you can trust (issue #23, item 4).

* Under submitit a preemption's SIGTERM and a timeout's SIGUSR2 both checkpoint and requeue: submitit's local
  executor runs the job, the test signals it mid-run, and the requeued job ends with the uninterrupted run's
  weights. (Before: submitit's own handler only logged TERM, so a preempted job lost everything since its last
  periodic checkpoint.)
* Resume takes the newest checkpoint across both formats (`ckpt.pt`, `ckpt.dcp/`), never an older one.
"""

import json
import signal
import time
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest
import torch

from par.train.launch import SubmititTrainJob, _executor
from par.config import ClusterSettings
from par.train.train import newest_checkpoint, train
from test_train import make_token_dir, tiny_cfg


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2], ids=["TERM", "USR2"])
def test_a_signalled_submitit_job_checkpoints_requeues_and_ends_as_if_uninterrupted(tmp_path, sig):
    data = make_token_dir(tmp_path / "d")
    train(tiny_cfg(data, tmp_path / "ref", max_steps=80, ckpt_every=1000))
    cfg = tiny_cfg(data, tmp_path / "run", max_steps=80, ckpt_every=1000)
    ex = _executor(ClusterSettings(cpus_per_task=1, time_min=10), tmp_path / "run" / "submitit", "local", "pre")
    job = ex.submit(SubmititTrainJob(), asdict(cfg))
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 5):
        assert time.monotonic() < deadline and not job.done(), job.stderr()
        time.sleep(0.05)
    for task in psutil.Process(job._process.pid).children():  # the training task under submitit's local controller
        task.send_signal(sig)  # TERM: a preemption; USR2: what Slurm sends ahead of a time limit
    job.result()
    logs = "".join(p.read_text() for p in sorted((tmp_path / "run" / "submitit").glob("*_log.*")))
    assert "Requeued job" in logs, logs[-3000:]  # checkpointed and requeued, not merely run to the end
    assert f"stopped by {signal.Signals(sig).name}" in logs
    a, b = _weights(tmp_path / "ref" / "model.pt"), _weights(tmp_path / "run" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, 81))


def test_resume_takes_the_newest_checkpoint_across_formats(tmp_path):
    """A ckpt.dcp from an earlier FSDP stint (step 4) beside a newer ckpt.pt (step 8): the run resumes at 8."""
    data = make_token_dir(tmp_path / "d")
    run = tmp_path / "run"
    train(tiny_cfg(data, run, max_steps=8, ckpt_every=4))
    (run / "model.pt").unlink()
    (run / "ckpt.dcp").mkdir()
    torch.save({"step": 4, "rng": []}, run / "ckpt.dcp" / "meta.pt")
    fmt, step, _ = newest_checkpoint(run)
    assert (fmt, step) == ("pt", 8)
    train(tiny_cfg(data, run, max_steps=12, ckpt_every=4))  # would fail loading the fake dcp if it won
    assert torch.load(run / "model.pt", weights_only=True)["step"] == 12
