"""Cluster launch of `par train` through submitit (Slurm, or subprocesses on this machine).

* DDP ranks come from submitit's `TorchDistributedEnvironment` (one task per GPU, any number of nodes).
* Timeouts and preemptions: Slurm signals the job (USR2, 90 s ahead), the training loop checkpoints at
  the next step boundary and submitit requeues the same job; it resumes from `ckpt.pt`. A run lasting
  weeks crosses as many time limits as it needs (`max_requeues`).
* Re-attach: the Slurm job id is recorded in `<out>/job.json`. Running the same command again while that
  job is pending or running waits for it instead of submitting a duplicate, so re-running the
  workflow is safe.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from par import io
from par.errors import UserError

ALIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
         "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}


@dataclass
class ClusterConfig:
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0  # 0 → one per GPU (at least 1)
    cpus_per_task: int = 4
    mem_gb: int = 0  # 0 → partition default
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""  # e.g. "a100"
    time_min: int = 24 * 60
    max_requeues: int = 200
    signal_delay_s: int = 90
    poll_s: float = 10.0

    @property
    def ntasks(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @classmethod
    def from_args(cls, args) -> "ClusterConfig":
        return cls(**{f.name: getattr(args, f"cluster_{f.name}") for f in dataclasses.fields(cls)
                      if getattr(args, f"cluster_{f.name}", None) is not None})


def add_cluster_arguments(p):
    g = p.add_argument_group("cluster (with --launcher local|slurm)")
    for f in dataclasses.fields(ClusterConfig):
        typ = {"int": int, "float": float}.get(f.type, str)
        g.add_argument("--" + f.name.replace("_", "-"), dest=f"cluster_{f.name}", type=typ, default=None)


class TrainJob:
    """The submitit callable. Subclasses Checkpointable lazily (submitit is a workflow-only dependency)."""

    def __call__(self, cfg_dict: dict) -> str:
        import submitit

        from par.train import TrainConfig, train

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return str(train(TrainConfig(**cfg_dict)))

    def checkpoint(self, cfg_dict: dict):
        """Called by submitit on timeout/preemption, after the loop has saved `ckpt.pt`: requeue as is."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, cfg_dict)


def _executor(cluster: ClusterConfig, folder: Path, launcher: str, name: str):
    import submitit

    ex = submitit.AutoExecutor(folder=folder, cluster=None if launcher == "slurm" else "local",
                               slurm_max_num_timeout=cluster.max_requeues)
    if launcher == "slurm" and ex.cluster != "slurm":
        raise UserError("--launcher slurm: no Slurm found (srun is not on PATH); use --launcher local or inprocess")
    params = dict(name=name, nodes=cluster.nodes, tasks_per_node=cluster.ntasks, cpus_per_task=cluster.cpus_per_task,
                  timeout_min=cluster.time_min, slurm_signal_delay_s=cluster.signal_delay_s)
    if cluster.gpus_per_node:
        params["gpus_per_node"] = cluster.gpus_per_node
    if cluster.mem_gb:
        params["mem_gb"] = cluster.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(cluster, key):
            params[f"slurm_{key}"] = getattr(cluster, key)
    ex.update_parameters(**params)
    return ex


def slurm_state(job_id: str) -> str | None:
    """State from `squeue` (works without accounting); None once the job has left the queue."""
    r = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True)
    state = r.stdout.strip().splitlines()
    return state[0] if r.returncode == 0 and state else None


def run_training(cfg, cluster: ClusterConfig, launcher: str = "slurm") -> Path:
    """Submit (or re-attach to) the training job of `cfg.out` and wait for its final model file."""
    out = Path(cfg.out)
    final = out / "model.pt"
    if final.exists():
        return final
    out.mkdir(parents=True, exist_ok=True)
    record = out / "job.json"
    job_id = None
    if launcher == "slurm" and record.exists():
        prev = json.loads(record.read_text())
        if slurm_state(prev["job_id"]) in ALIVE:
            job_id = prev["job_id"]
            print(f"re-attaching to Slurm job {job_id} ({out})", flush=True)
    if job_id is None:
        ex = _executor(cluster, out / "submitit", launcher, name=f"par-{out.name}")
        job = ex.submit(TrainJob(), dataclasses.asdict(cfg))
        job_id = job.job_id
        io.write_json(record, {"job_id": job_id, "launcher": launcher, "folder": str(out / "submitit"),
                               "submitted": time.time()})
        print(f"submitted {launcher} job {job_id} ({out})", flush=True)
        if launcher == "local":
            job.result()  # raises with the job's traceback on failure
    if launcher == "slurm":
        while slurm_state(job_id) in ALIVE:
            time.sleep(cluster.poll_s)
    if not final.exists():
        raise UserError(f"training job {job_id} ended without writing {final}; see logs in {out / 'submitit'}")
    return final
