"""Training through submitit on the real local Slurm (tests/cluster.py): DDP, requeue, re-attach."""

import json
import subprocess
import sys
import time
from dataclasses import asdict

import pytest
import torch

from par.config import ClusterSettings
from par.train.launch import SubmititTrainJob, _executor, run_training
from par.train.train import train
from test_train import make_token_dir, tiny_cfg

pytestmark = pytest.mark.slow


def _losses(run_dir):
    return [json.loads(l)["loss"] for l in (run_dir / "log.jsonl").read_text().splitlines()]


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def _cluster(**kw):
    return ClusterSettings(partition="gpu", cpus_per_task=1, time_min=10, poll_s=0.5, **kw)


def test_two_task_gloo_ddp_matches_single_process(slurm_env, tmp_path):
    data = make_token_dir(tmp_path / "d")
    kw = dict(max_steps=12, dropout=0.0, class_dropout=0.0)  # dropout streams are per rank by design
    single = tiny_cfg(data, tmp_path / "single", **kw)
    train(single)
    ddp = tiny_cfg(data, tmp_path / "ddp", **kw)
    final = run_training(ddp, _cluster(tasks_per_node=2, gpus_per_node=2), launcher="slurm")
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "single"), abs=1e-5)
    a, b = _weights(tmp_path / "single" / "model.pt"), _weights(final)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_timeout_requeue_resumes_to_identical_weights(slurm_env, tmp_path):
    data = make_token_dir(tmp_path / "d")
    ref = tiny_cfg(data, tmp_path / "ref", max_steps=60, ckpt_every=1000)
    train(ref)
    cfg = tiny_cfg(data, tmp_path / "run", max_steps=60, ckpt_every=1000)
    job = _executor(_cluster(), tmp_path / "run" / "submitit", "slurm", "requeue-test").submit(SubmititTrainJob(), asdict(cfg))
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 5):
        assert time.monotonic() < deadline, slurm_env.logs()
        time.sleep(0.1)
    job._interrupt()  # what Slurm does before a time limit: USR2 → checkpoint at the step boundary → requeue
    slurm_env.wait_job(job.job_id, timeout=180)
    assert (tmp_path / "run" / "model.pt").exists(), slurm_env.logs()
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert ck["step"] == 60
    logs = "".join(p.read_text() for p in sorted((tmp_path / "run" / "submitit").glob("*_log.*")))
    assert "Requeued job" in logs, logs[-3000:]  # submitit requeued it: the run did not just go on to the end
    a, b = _weights(tmp_path / "ref" / "model.pt"), _weights(tmp_path / "run" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"] for l in log.read_text().splitlines()]
    assert steps == list(range(1, 61))


def test_rerun_reattaches_instead_of_submitting_twice(slurm_env, tmp_path):
    data = make_token_dir(tmp_path / "d")
    cfg = tiny_cfg(data, tmp_path / "run", max_steps=150, ckpt_every=1000, launcher="slurm")
    cmd = [sys.executable, "-m", "par", "train", "--partition", "gpu", "--cpus-per-task", "1",
           "--time-min", "10", "--poll-s", "0.5"]
    for k, v in asdict(cfg).items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=slurm_env.env)
    record = tmp_path / "run" / "job.json"
    deadline = time.monotonic() + 60
    while not record.exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    job_id = json.loads(record.read_text())["job_id"]
    while slurm_env.job_state(job_id) not in ("RUNNING",):
        assert time.monotonic() < deadline + 60
        time.sleep(0.2)
    second = subprocess.run(cmd, capture_output=True, text=True, env=slurm_env.env, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"re-attaching to Slurm job {job_id}" in second.stdout
    assert json.loads(record.read_text())["job_id"] == job_id  # nothing new was submitted
    assert first.wait(timeout=300) == 0
    assert (tmp_path / "run" / "model.pt").exists()
    names = slurm_env.run("squeue", "-h", "-o", "%j").stdout.split()
    assert not any(n == f"par-{cfg.out.split('/')[-1]}" for n in names)
