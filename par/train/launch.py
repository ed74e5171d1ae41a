"""`par train`: launch a training run in this process, or through submitit (Slurm, or subprocesses here).

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
from pathlib import Path

from par import io
from par.cluster import slurm_available
from par.config import ClusterSettings, TrainJob, add_arguments, from_args
from par.errors import UserError

ALIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
         "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}


class SubmititTrainJob:
    """The submitit callable. Subclasses Checkpointable lazily (submitit is a workflow-only dependency)."""

    def __call__(self, cfg_dict: dict) -> str:
        import submitit

        from par.train.train import train

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return str(train(TrainJob(**cfg_dict)))

    def checkpoint(self, cfg_dict: dict):
        """Called by submitit on timeout/preemption, after the loop has saved `ckpt.pt`: requeue as is."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, cfg_dict)


def _executor(cluster: ClusterSettings, folder: Path, launcher: str, name: str):
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


def run_training(cfg: TrainJob, cluster: ClusterSettings, launcher: str = "slurm") -> Path:
    """Submit (or re-attach to) the training job of `cfg.out` and wait for its final model file."""
    out = Path(cfg.out)
    final = out / "model.pt"
    if final.exists():
        return final
    out.mkdir(parents=True, exist_ok=True)
    record = out / "job.json"
    io.remove_stale_temps(record)  # a launcher killed while recording its job
    job_id = None
    if launcher == "slurm" and record.exists():
        prev = json.loads(record.read_text())
        if slurm_state(prev["job_id"]) in ALIVE:
            job_id = prev["job_id"]
            print(f"re-attaching to Slurm job {job_id} ({out})", flush=True)
    if job_id is None:
        ex = _executor(cluster, out / "submitit", launcher, name=f"par-{out.name}")
        job = ex.submit(SubmititTrainJob(), dataclasses.asdict(cfg))
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


# -- the command -----------------------------------------------------------------------------------


def cmd_train(args) -> int:
    cfg = from_args(TrainJob, args, config_file=args.config)
    cluster = from_args(ClusterSettings, args, dest_prefix="cluster_")
    launcher = cfg.launcher
    if launcher == "auto":
        launcher = "slurm" if slurm_available() else "inprocess"
    if launcher == "inprocess":
        from par.train.train import train

        print(train(cfg))
    else:
        print(run_training(cfg, cluster, launcher=launcher))
    return 0


def register(sub):
    p = sub.add_parser("train", help="train a PAR / LlamaGen model (in-process, local DDP or Slurm via submitit)")
    p.add_argument("--config", help="JSON/YAML file with training fields (flags override it)")
    add_arguments(p, TrainJob)
    add_arguments(p, ClusterSettings, group="cluster (with --launcher local|slurm)", dest_prefix="cluster_")
    p.set_defaults(func=cmd_train)
