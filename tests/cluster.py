"""Pytest plugin: a real single-node Slurm cluster (munge + slurmctld + slurmd) for the slow integration tests.

Enable it from tests/conftest.py with::

    pytest_plugins = ["cluster"]        # tests/ is on sys.path while conftest.py is imported

Fixtures
--------
``slurm_cluster`` (session)
    Runs ``.ci/slurm.sh up`` unless the cluster in the state dir is already running, yields a :class:`SlurmCluster`
    (``.env``: a copy of ``os.environ`` without the caller's ``SLURM_*`` variables and with ``SLURM_CONF`` set;
    ``.state_dir``; ``.partition``; helpers ``run``/``job_state``/``wait_job``), and at the end of the session runs
    ``.ci/slurm.sh down`` only if it started the cluster itself (``SLURM_CI_KEEP=1`` keeps it running).
    If the cluster cannot be started (no apt, not root, a daemon fails) the fixture FAILS with the script's output;
    it never skips: CI runs ``pytest --slow`` and is expected to be able to start it.
``slurm_env`` (function)
    Same cluster, and additionally applies ``cluster.env`` to ``os.environ`` for the duration of one test
    (needed by in-process clients such as submitit, which call sbatch/squeue/scontrol with ``os.environ``).

State dir: ``$SLURM_STATE_DIR`` if set, else ``<repo>/.slurm-state``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "slurm.sh"

# Job states after which a job will not run (again) by itself.
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
        "REVOKED",
    }
)


def clean_env(slurm_conf: Path | str | None = None, base: dict | None = None) -> dict:
    """A copy of the environment without inherited ``SLURM_*`` variables (a pytest run inside a Slurm job would
    otherwise hand SLURM_JOB_ID, SLURM_NTASKS, ... to sbatch/srun/submitit), with ``SLURM_CONF`` set if given."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("SLURM_")}
    if slurm_conf is not None:
        env["SLURM_CONF"] = str(slurm_conf)
    return env


def _state_dir() -> Path:
    return Path(os.environ.get("SLURM_STATE_DIR") or REPO / ".slurm-state").resolve()


def _daemons_running(state_dir: Path) -> bool:
    """True if munged, slurmctld and slurmd recorded in the state dir are all alive (same check as slurm.sh)."""
    for name in ("munged", "slurmctld", "slurmd"):
        try:
            pid = int((state_dir / "run" / f"{name}.pid").read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError):
            return False
        if comm != name:
            return False
    return True


@dataclasses.dataclass
class SlurmCluster:
    state_dir: Path
    env: dict
    partition: str = "gpu"
    started_here: bool = False
    startup_s: float = 0.0

    @property
    def slurm_conf(self) -> Path:
        return self.state_dir / "slurm.conf"

    def run(self, *cmd, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run a command (e.g. ``"sbatch", "--wrap", "hostname"``) with the cluster's environment."""
        kw.setdefault("env", self.env)
        return subprocess.run([str(c) for c in cmd], check=check, timeout=timeout, text=True, capture_output=True, **kw)

    def job_state(self, job_id: str | int) -> str:
        """Current state of a job from ``scontrol`` (or ``squeue``); "" if Slurm does not know the job (any more).
        No accounting here: finished jobs stay visible for MinJobAge=300 s."""
        r = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        for tok in r.stdout.split():
            if tok.startswith("JobState="):
                return tok.split("=", 1)[1]
        r = self.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T", check=False)
        return r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""

    def wait_job(self, job_id: str | int, timeout: float = 60, poll: float = 0.3) -> str:
        """Poll until the job reaches a terminal state; returns it. Fails the test on timeout."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in TERMINAL_STATES:
                return state
            time.sleep(poll)
        info = self.run("scontrol", "show", "job", job_id, check=False).stdout
        pytest.fail(f"Slurm job {job_id} not finished after {timeout}s (state {state!r}):\n{info}\n{self.logs()}")

    def logs(self, lines: int = 30) -> str:
        out = []
        for f in ("log/slurmctld.log", "log/slurmd.log"):
            p = self.state_dir / f
            if p.exists():
                out.append(f"----- {p} (last {lines} lines) -----")
                out.extend(p.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out)


def _script(cmd: str, state_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, SLURM_STATE_DIR=str(state_dir))
    return subprocess.run(
        ["bash", str(SCRIPT), cmd], env=env, cwd=REPO, text=True, capture_output=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def slurm_cluster():
    state_dir = _state_dir()
    already = _daemons_running(state_dir)
    t0 = time.monotonic()
    try:
        r = _script("up", state_dir, timeout=900)  # includes apt-get install on a fresh machine
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"could not start the local Slurm cluster: {SCRIPT} up: {e!r}", pytrace=False)
    if r.returncode != 0:
        pytest.fail(
            f"could not start the local Slurm cluster: `{SCRIPT} up` exited {r.returncode}\n"
            f"--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}",
            pytrace=False,
        )
    cluster = SlurmCluster(
        state_dir=state_dir,
        env=clean_env(state_dir / "slurm.conf"),
        partition=os.environ.get("SLURM_CI_PARTITION", "gpu"),
        started_here=not already,
        startup_s=time.monotonic() - t0,
    )
    try:
        yield cluster
    finally:
        if cluster.started_here and os.environ.get("SLURM_CI_KEEP", "") in ("", "0"):
            d = _script("down", state_dir, timeout=120)
            if d.returncode != 0:  # pragma: no cover - reported, not raised, at teardown
                print(f"`{SCRIPT} down` exited {d.returncode}:\n{d.stdout}\n{d.stderr}")


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    """The cluster, with its environment applied to os.environ for this test (SLURM_* stripped, SLURM_CONF set)."""
    for k in list(os.environ):
        if k.startswith("SLURM_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.slurm_conf))
    return slurm_cluster
