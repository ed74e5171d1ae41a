"""Where this process sits among parallel workers, and whether a Slurm cluster answers.

One implementation, used by every stage that splits work into shards (tokenize, sample).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

from par.errors import UserError


def array_task(environ=None) -> tuple[int, int]:
    """(index, count) of this worker: a Slurm job array, else torchrun's RANK / WORLD_SIZE, else (0, 1).

    A Slurm array need not start at 0 (`--array=1-8`) nor step by 1 (`--array=0-15:2`): the index is
    (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP, so the tasks cover 0..count−1 exactly.
    A list array (`--array=1,3,5`) has no SLURM_ARRAY_TASK_STEP, only MIN, MAX and COUNT: evenly spaced, its step
    is (MAX − MIN) / (COUNT − 1); an uneven list cannot tell a task its position and is refused with the fix.
    """
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" in env:
        task = _env_int(env, "SLURM_ARRAY_TASK_ID")
        lo = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0)
        hi = _env_int(env, "SLURM_ARRAY_TASK_MAX", task)
        count, step = _env_int(env, "SLURM_ARRAY_TASK_COUNT"), _env_int(env, "SLURM_ARRAY_TASK_STEP")
        if not step:  # a list array (or an environment without the variable)
            even = "SLURM_ARRAY_TASK_MAX" in env and count and count > 1 and (hi - lo) % (count - 1) == 0
            step = (hi - lo) // (count - 1) if even else 1
        count = count or (hi - lo) // step + 1
        index = (task - lo) // step
        if (task - lo) % step or not 0 <= index < count:
            raise UserError(f"Slurm array task {task} does not fit the array {lo}-{hi} of {count} tasks (a list "
                            "with uneven gaps does not tell a task its position); submit --array=0-"
                            f"{count - 1}, or pass --shard and --num-shards")
        return index, count
    if "RANK" in env and "WORLD_SIZE" in env:
        return _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    return 0, 1


def _env_int(env, name: str, default: int | None = None) -> int | None:
    text = env.get(name, "")
    if text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text!r} is not an integer; unset it (it is set by Slurm or torchrun)") from None


def array_slot(shard: int | None, num_shards: int | None) -> tuple[int, int]:
    """This process's (slot, slots): the `--shard/--num-shards` flags where given, else the Slurm array task (or
    torchrun's rank; else (0, 1))."""
    if shard is not None and num_shards is not None:  # given in full: the environment has no say
        return shard, num_shards
    index, count = array_task()
    if shard is not None and num_shards is None and count == 1:
        raise UserError("--shard needs --num-shards (or a Slurm job array)")
    return (index if shard is None else shard), (count if num_shards is None else num_shards)


def add_slot_arguments(p) -> None:
    """The flags of a command whose shards are split over slots (an array): which slot, and the last step."""
    p.add_argument("--shard", type=int, help="this process's slot I: handles shards k ≡ I mod K")
    p.add_argument("--num-shards", type=int, help="number of slots K (parallel processes)")
    p.add_argument("--finalize", action="store_true", help="only (re)build manifest.json from complete shards")
    p.add_argument("--summary", help="write this slot's summary (shards written, kept, left to others) as JSON")


def report_slot(summary: dict, shard: int, num: int, summary_path: str | None, unit: str) -> None:
    """What one slot of a sharded job did, on stdout (and as JSON at `summary_path`, the workflow's marker)."""
    import sys

    for item in summary["skipped"]:
        print(f"skipped {item.get('path', item.get('name'))}: {item['reason']}", file=sys.stderr)
    if summary_path:
        from par.io import write_json

        write_json(summary_path, {"slot": shard, "slots": num, **summary})
    s = summary
    print(f"shard slot {shard}/{num}: wrote {len(s['written'])} shard(s), kept {len(s['kept'])} complete, left "
          f"{len(s['others'])} to other workers, skipped {len(s['skipped'])} {unit}(s); " +
          (f"manifest {s['manifest']}" if s["manifest"] else
           f"{len(s['missing'])} of {s['shards_total']} shards still missing (other slots or workers)"))


def slurm_available() -> bool:
    """A Slurm controller answers (not merely: the client tools are installed)."""
    if not shutil.which("sinfo"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def machine_info(device) -> dict:
    """The machine a benchmark ran on: platform, CPUs, torch, the GPU's name, and the load average."""
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):  # a shared machine's other work slows every row (the ratios less so)
        info["load_average_1_5_15_min"] = [round(x, 2) for x in os.getloadavg()]
    return info
