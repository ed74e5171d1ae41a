"""Device discipline of collectives (par/train/comm.py): a tensor reaches a process group only on the device its
backend serves, and no other module calls a collective. NCCL is not on this machine: a "cuda:gloo" group stands in
for it (it refuses CPU tensors exactly as NCCL does), and a recording stand-in of torch.distributed checks every
tensor the helpers hand over."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from par.train import comm

ROOT = Path(__file__).resolve().parents[1]
COLLECTIVE = re.compile(r"\b(?:dist|torch\.distributed)\.(?:all_reduce|all_gather\w*|broadcast\w*|reduce_scatter\w*|"
                        r"barrier|reduce|gather|scatter|init_process_group|new_group)\(")


@pytest.fixture
def group():
    """A one-process group of the requested backend string, torn down after the test."""
    made = []

    def make(backend: str):
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        made.append(backend)

    yield make
    if dist.is_initialized():
        dist.destroy_process_group()


def test_only_comm_calls_collectives():
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "par").rglob("*.py") if p.name != "comm.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if COLLECTIVE.search(line)]
    assert not offenders, f"collectives outside par/train/comm.py: {offenders}"


def test_a_cpu_tensor_in_an_accelerator_group_fails_and_the_helper_targets_the_accelerator(group):
    """The bug class of issue #23, on CPU: the pre-fix `should_stop` all-reduced a CPU tensor, which an accelerator
    group (NCCL; here cuda:gloo) refuses. The helper asks the group which device it serves instead."""
    group("cuda:gloo")
    with pytest.raises(RuntimeError, match="device type cpu"):
        dist.all_reduce(torch.tensor([1]), op=dist.ReduceOp.MAX)  # what the old code did
    assert comm.group_device().type == "cuda"
    with pytest.raises((RuntimeError, AssertionError)):  # no CUDA here: the move itself fails, proof that the
        comm.any_flag(True)  # helper moves to the accelerator instead of handing the group a CPU tensor


def test_group_device_follows_the_backend(group):
    group("gloo")  # cpu:gloo,cuda:gloo: the CPU is served
    assert comm.group_device() == torch.device("cpu")


class StandIn:
    """torch.distributed as an accelerator group would behave: every tensor must be on `device` (a stand-in, the
    meta device), otherwise it raises NCCL's error."""

    def __init__(self, device):
        self.device, self.seen = torch.device(device), []

    def check(self, t):
        self.seen.append(t.device)
        if t.device != self.device:
            raise RuntimeError(f"No backend type associated with device type {t.device.type}")

    def all_reduce(self, t, op=None):
        self.check(t)

    def broadcast(self, t, src=0):
        self.check(t)


def test_every_helper_hands_the_group_its_own_device(monkeypatch):
    fake = StandIn("meta")
    monkeypatch.setattr(comm, "initialized", lambda: True)
    monkeypatch.setattr(comm, "group_device", lambda: fake.device)
    monkeypatch.setattr(comm, "_host", lambda t: torch.zeros(t.shape, dtype=t.dtype))  # meta has no values
    monkeypatch.setattr(comm.dist, "all_reduce", fake.all_reduce)
    monkeypatch.setattr(comm.dist, "broadcast", fake.broadcast)
    monkeypatch.setattr(comm.dist, "get_world_size", lambda: 2)
    assert comm.any_flag(True) is False  # the stand-in returns zeros: only the device is under test here
    comm.mean(torch.tensor(3.0))
    comm.broadcast(torch.tensor([1, 2]))
    assert fake.seen and all(d == fake.device for d in fake.seen)
    # and the stand-in does catch the bug: a CPU tensor handed over directly
    with pytest.raises(RuntimeError, match="device type cpu"):
        fake.all_reduce(torch.tensor([1]))


SCRIPT = """
import os, torch
from par.train import comm
rank, world, _ = comm.init(torch.device("cpu"))
stop = comm.any_flag(rank == 1)
m = comm.mean(torch.tensor(float(rank)))
objs = comm.all_gather_objects({"rank": rank})
b = comm.broadcast(torch.tensor([rank + 10]))
comm.barrier()
print(f"RESULT {rank} {stop} {m.item()} {[o['rank'] for o in objs]} {b.item()}")
comm.destroy()
"""


def test_helpers_on_two_gloo_ranks(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(script)], capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                                                        **_env()})
    assert r.returncode == 0, r.stderr[-2000:]
    # the two ranks share one stdout pipe, so their lines can interleave: pick the records out, not the lines
    lines = sorted(re.findall(r"RESULT \d \S+ \S+ \[[^]]*\] \d+", r.stdout))
    assert lines == ["RESULT 0 True 0.5 [0, 1] 10", "RESULT 1 True 0.5 [0, 1] 10"]


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
