"""The GPU acceptance suite (issue #23): `python -m pytest -m gpu tests/gpu` on a machine with CUDA.

Every test records its numbers into one report, written at the end of the session to
`analysis/bench/gpu-acceptance.json` (or $PAR_GPU_REPORT) with the machine named. Without CUDA every test skips.
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # the CPU suite's fixtures (make_token_dir, …)

REPORT: dict = {"checks": {}, "failures": []}


@pytest.fixture(scope="session")
def report():
    """A dict each test fills under its own name: REPORT["checks"][name] = {...}."""
    return REPORT["checks"]


def pytest_runtest_logreport(report):
    if report.when == "call" and report.failed and "tests/gpu/" in report.nodeid:
        REPORT["failures"].append({"test": report.nodeid, "error": str(report.longrepr)[-2000:]})


def pytest_sessionfinish(session, exitstatus):
    if not torch.cuda.is_available() or not REPORT["checks"]:
        return
    from par import io
    from par.cluster import machine_info
    from par.provenance import git_commit

    out = Path(os.environ.get("PAR_GPU_REPORT", ROOT / "analysis" / "bench" / "gpu-acceptance.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    REPORT.update({"commit": git_commit(), "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                   "machine": machine_info(torch.device("cuda", 0)), "torch": torch.__version__,
                   "exit_status": int(exitstatus)})
    io.write_json(out, REPORT)
