"""Integration tests against a real single-node Slurm cluster (.ci/slurm.sh, fixture in tests/cluster.py).

Run with ``python -m pytest --slow tests/test_cluster.py``. They need root and apt (or slurm-wlm + munge installed);
the ``slurm_cluster`` fixture fails (does not skip) when the cluster cannot be started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "slurm"


# --------------------------------------------------------------------------------------------------------------------
# helpers


def _pickle_this_module_by_value():
    """submitit pickles the submitted callable with cloudpickle. This module is imported by pytest as a top-level
    module (tests/ on sys.path), which the job's interpreter cannot import: ship its functions/classes by value."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _wait_submitit(cluster, job, timeout: float):
    """Wait for a submitit job without relying on sacct (no accounting here: submitit's own state is UNKNOWN and
    job.result() would block forever if the job died without writing a result). Polls the result pickles and
    Slurm's view of the job; fails fast with the job's logs if Slurm says it ended without a result."""
    deadline = time.monotonic() + timeout
    ended_at = None
    state = ""
    while time.monotonic() < deadline:
        if job.done():
            return
        state = cluster.job_state(job.job_id)
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "COMPLETED"):
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at > 5:  # grace period for the result pickle to appear
                break
        time.sleep(0.3)
    pytest.fail(
        f"submitit job {job.job_id} did not deliver results within {timeout}s (Slurm state {state!r})\n"
        f"--- stdout ---\n{job.stdout()}\n--- stderr ---\n{job.stderr()}\n{cluster.logs()}"
    )


# --------------------------------------------------------------------------------------------------------------------
# (a) plain sbatch


def test_sbatch_wrap_completes(slurm_cluster, tmp_path):
    out = tmp_path / "out-%j.txt"
    r = slurm_cluster.run(
        "sbatch", "--parsable", "-p", slurm_cluster.partition, "-t", "2", "--mem", "100", "-o", out,
        "--wrap", "echo host=$(hostname) job=$SLURM_JOB_ID",
        cwd=tmp_path,
    )
    job_id = r.stdout.strip().split(";")[0]
    assert job_id.isdigit(), r.stdout
    assert slurm_cluster.wait_job(job_id, timeout=60) == "COMPLETED"
    out_file = tmp_path / f"out-{job_id}.txt"
    for _ in range(20):  # the state can flip before the file is flushed
        if out_file.exists() and out_file.read_text().strip():
            break
        time.sleep(0.1)
    assert f"job={job_id}" in out_file.read_text()
    sq = slurm_cluster.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%i|%T|%P").stdout.strip()
    assert sq == f"{job_id}|COMPLETED|{slurm_cluster.partition}"


# --------------------------------------------------------------------------------------------------------------------
# (b) submitit: 2 tasks, fake GPUs, torch.distributed (gloo) all_reduce


def _ddp_all_reduce():
    import torch
    import torch.distributed as dist

    import submitit

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    dist.init_process_group("gloo")
    try:
        t = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(t)
        return {
            "rank": env.rank,
            "world_size": env.world_size,
            "local_rank": env.local_rank,
            "sum": t.item(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "master": f"{env.master_addr}:{env.master_port}",
        }
    finally:
        dist.destroy_process_group()


def test_submitit_two_task_gloo_all_reduce(slurm_env, tmp_path):
    import submitit

    _pickle_this_module_by_value()
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
    ex.update_parameters(
        name="ddp_probe",
        timeout_min=5,
        nodes=1,
        cpus_per_task=1,
        gpus_per_node=2,  # -> --gpus-per-node=2: the two fake GPUs (gres gpu:fake:2)
        mem_gb=4,
        slurm_partition=slurm_env.partition,
        slurm_ntasks_per_node=2,
        slurm_signal_delay_s=30,
    )
    job = ex.submit(_ddp_all_reduce)
    _wait_submitit(slurm_env, job, timeout=120)
    results = sorted(job.results(), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 for r in results)
    assert [r["sum"] for r in results] == [3.0, 3.0]  # 1 + 2 on both ranks
    assert all(r["cuda_visible_devices"] == "0,1" for r in results), results  # Slurm bound both fake GPUs
    assert results[0]["master"] == results[1]["master"]


# --------------------------------------------------------------------------------------------------------------------
# (c) submitit checkpoint + requeue


def _make_checkpointable():
    import submitit

    class Counter(submitit.helpers.Checkpointable):
        """First run: counts until the preemption signal arrives (submitit then pickles `self` via checkpoint()
        and requeues the job). Second run: resumes from the pickled state and finishes."""

        def __init__(self):
            self.runs = 0
            self.step = 0
            self.steps_before_requeue = None

        def __call__(self, workdir: str):
            self.runs += 1
            restart = os.environ.get("SLURM_RESTART_COUNT", "0")
            Path(workdir, f"run{self.runs}").write_text(f"job={os.environ.get('SLURM_JOB_ID')} restart={restart}\n")
            if self.runs == 1:
                while True:  # until preempted
                    self.step += 1
                    time.sleep(0.05)
            self.steps_before_requeue = self.step
            for _ in range(5):
                self.step += 1
            return {"runs": self.runs, "step": self.step, "resumed_from": self.steps_before_requeue,
                    "restart_count": int(restart)}

    return Counter


def test_submitit_checkpoint_requeue(slurm_env, tmp_path):
    import submitit

    _pickle_this_module_by_value()
    Counter = _make_checkpointable()
    workdir = tmp_path / "work"
    workdir.mkdir()
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
    ex.update_parameters(
        name="ckpt_probe", timeout_min=5, nodes=1, tasks_per_node=1, cpus_per_task=1, mem_gb=1,
        slurm_partition=slurm_env.partition, slurm_signal_delay_s=30,
    )
    job = ex.submit(Counter(), str(workdir))

    deadline = time.monotonic() + 60
    while not (workdir / "run1").exists():
        assert time.monotonic() < deadline, f"first run never started:\n{job.stderr()}"
        time.sleep(0.2)
    time.sleep(1.0)  # let it count a little
    t_interrupt = time.monotonic()
    job._interrupt()  # preemption, as submitit's own tests do: SIGTERM (ignored), then USR2 -> checkpoint + requeue
    _wait_submitit(slurm_env, job, timeout=90)
    requeue_s = time.monotonic() - t_interrupt
    result = job.result()

    assert result["runs"] == 2
    assert result["restart_count"] == 1
    assert result["resumed_from"] > 0  # state from the first run survived the requeue
    assert result["step"] == result["resumed_from"] + 5
    assert (workdir / "run2").read_text() == f"job={job.job_id} restart=1\n"
    stderr = job.stderr() or ""
    assert "checkpoint" in stderr.lower() or "requeue" in stderr.lower(), stderr
    # AuthInfo=cred_expire=5 in .ci/slurm.sh: a requeued job restarts within seconds, not after ~2-3 minutes
    assert requeue_s < 60, f"requeue took {requeue_s:.0f}s"


# --------------------------------------------------------------------------------------------------------------------
# (d) the repository's Snakemake profile (slurm/config.yaml) against the local cluster

TOY_SNAKEFILE = textwrap.dedent(
    """\
    localrules: all

    rule all:
        input: "b.txt"
        default_target: True

    rule a:
        output: "a.txt"
        resources: runtime=5, mem_mb=500
        shell: "(hostname; echo job=$SLURM_JOB_ID; echo partition=$SLURM_JOB_PARTITION) > {output}"

    rule b:
        input: "a.txt"
        output: "b.txt"
        shell: "(cat {input}; echo job=$SLURM_JOB_ID) > {output}"
    """
)


def test_snakemake_profile_runs_toy_workflow(slurm_cluster, tmp_path):
    assert (PROFILE / "config.yaml").is_file()
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "Snakefile").write_text(TOY_SNAKEFILE)
    cmd = [
        sys.executable, "-m", "snakemake", "--profile", str(PROFILE), "-j", "2",
        "--slurm-init-seconds-before-status-checks", "2",  # the profile's 20 s is for real clusters
    ]
    try:
        r = subprocess.run(cmd, cwd=wf, env=slurm_cluster.env, text=True, capture_output=True, timeout=150)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"snakemake did not finish in 150 s:\n{e.stdout}\n{e.stderr}\n{slurm_cluster.logs()}")
    log = r.stdout + r.stderr
    assert r.returncode == 0, f"{log}\n{slurm_cluster.logs()}"
    assert f"Using profile {PROFILE}" in log
    assert "submitted with SLURM jobid" in log
    lines = (wf / "b.txt").read_text().splitlines()
    jobs = [ln for ln in lines if ln.startswith("job=")]
    assert len(jobs) == 2 and all(j[4:].isdigit() for j in jobs), lines  # both rules ran as Slurm jobs
    assert jobs[0] != jobs[1]
    assert f"partition={slurm_cluster.partition}" in lines  # default-resources slurm_partition from the profile
