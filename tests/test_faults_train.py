"""Fail clean at every boundary (#18), training side: leftovers of a killed run, stop signals, Snakemake, soaks.

Every test asserts the exit status, the one-line message where there is one, and that the run folder holds nothing
half-written (no `*.tmp`). Subprocesses run `python -m par` with OMP_NUM_THREADS=1, as the workflow does.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from test_sample import tiny_models  # noqa: F401 — the fixture (a tiny GPT and VQ) for the sampling soak
from test_train import make_token_dir, tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
EXIT_PREEMPTED = 75
RESUME = r"; run the same command again to resume"
STOPPED_AT = r"par train: stopped by {sig} at step (\d+)/{total}; checkpoint saved to \S*ckpt\.pt" + RESUME
STOPPED_EARLY = r"par train: stopped by {sig} before its first step: nothing new to save" + RESUME


# -- helpers ---------------------------------------------------------------------------------------


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _train_argv(cfg) -> list[str]:
    args = [sys.executable, "-m", "par", "train"]
    for k, v in cfg.__dict__.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def _start_train(cfg, stderr: Path | None = None, **env) -> subprocess.Popen:
    err = open(stderr, "w") if stderr else subprocess.DEVNULL
    try:
        return subprocess.Popen(_train_argv(cfg), stdout=subprocess.DEVNULL, stderr=err, env=_env(**env))
    finally:
        if stderr:
            err.close()


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _leftovers(folder: Path) -> list[str]:
    """Temporary files of interrupted writes anywhere under `folder` (dot files included)."""
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files
                  if f.endswith(".tmp"))


def _steps(log: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in log.read_text().splitlines()] if log.exists() else []


def _wait_for(cond, proc=None, timeout=120.0, poll=0.02, what="condition"):
    end = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process ended (status {proc.returncode}) before {what}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(poll)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps counts: it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _kill_if_running(*pids):
    for pid in pids:
        if pid and not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def _assert_stopped_and_saved(out: Path, log: Path, *, after_parent_died: bool = False) -> int:
    """The run in `out` stopped on SIGTERM with its one-line message, its checkpoint and log.jsonl agree on the
    step, and nothing half-written is left. Returns that step."""
    text = log.read_text()
    if after_parent_died:
        assert re.search(r"par: parent process \d+ is gone; stopping", text), text[-2000:]
    m = re.fullmatch(STOPPED_AT.format(sig="SIGTERM", total=100000), _last_line(log))
    assert m, text[-2000:]
    step = int(m[1])
    assert _load(out / "ckpt.pt")["step"] == step and _steps(out / "log.jsonl") == list(range(1, step + 1))
    assert _leftovers(out) == []
    return step


def _assert_same(a, b, where="ckpt"):
    """Recursive equality of checkpoint contents, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _load(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 30-step run (in-process), to compare resumed runs against."""
    root = tmp_path_factory.mktemp("reference")
    data = make_token_dir(root / "d")
    from par.train.train import train

    train(tiny_cfg(data, root / "ref", max_steps=30, ckpt_every=1000))
    return data, root / "ref"


# -- 1. leftovers and the log on start-up ----------------------------------------------------------


def test_start_up_removes_a_killed_run_s_temp_files_and_empties_the_log_without_a_checkpoint(tmp_path):
    """Killed before its first checkpoint (twice: 20 and 14 logged steps), and once during a checkpoint save: the
    next start removes the temp files and starts the log afresh (the bug: 34 lines, 20 distinct steps)."""
    from par.train.train import train

    out = tmp_path / "run"
    out.mkdir()
    for name in ("ckpt.pt", "model.pt", "log.jsonl", "config.json"):
        (out / f".{name}.k1l2m3n4.tmp").write_bytes(b"\0" * 4096)
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in [*range(1, 21), *range(1, 15)]]
    (out / "log.jsonl").write_text("\n".join(lines) + '\n{"step": 15, "lo')  # the last line cut by the kill
    train(tiny_cfg(make_token_dir(tmp_path / "d"), out, max_steps=12, ckpt_every=5))
    assert _leftovers(out) == []
    assert _steps(out / "log.jsonl") == list(range(1, 13))
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "ckpt.pt.sha256", "config.json", "log.jsonl",
                                                     "model.pt", "model.pt.sha256"]


def test_resume_cuts_the_log_back_to_the_checkpoint_and_ends_bit_identical(reference, tmp_path, capsys, monkeypatch):
    """Stopped at step 7 (SIGUSR2, in-process), then "killed" after step 10 mid-way through a save and a log line:
    the resumed run drops steps 8-10 from the log, the torn line and the temp file, and ends equal to the reference."""
    import par.train.train as T

    data, ref = reference
    cfg = tiny_cfg(data, tmp_path / "run", max_steps=30, ckpt_every=1000)
    log_step = T.log_step

    def signal_at_7(run, *a, **k):
        log_step(run, *a, **k)
        if run.step == 7:
            os.kill(os.getpid(), signal.SIGUSR2)

    monkeypatch.setattr(T, "log_step", signal_at_7)
    with pytest.raises(SystemExit) as stop:
        T.train(cfg)
    assert stop.value.code == EXIT_PREEMPTED
    assert re.fullmatch(STOPPED_AT.format(sig="SIGUSR2", total=30), _last_line_of(capsys.readouterr().err))
    monkeypatch.setattr(T, "log_step", log_step)
    out = tmp_path / "run"
    assert _load(out / "ckpt.pt")["step"] == 7 and _steps(out / "log.jsonl") == list(range(1, 8))
    with open(out / "log.jsonl", "a") as f:  # what a SIGKILL after step 10 leaves
        f.write("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (8, 9, 10)) + '{"step": 11, "lo')
    half = (out / "ckpt.pt").read_bytes()
    (out / ".ckpt.pt.q8w7e6r5.tmp").write_bytes(half[: len(half) // 2])
    T.train(cfg)
    assert _leftovers(out) == []
    assert _steps(out / "log.jsonl") == list(range(1, 31))
    _assert_same(_load(ref / "model.pt")["model"], _load(out / "model.pt")["model"], "model")
    _assert_same(_load(ref / "ckpt.pt")["optimizer"], _load(out / "ckpt.pt")["optimizer"], "optimizer")


def _last_line_of(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# -- 2. stop signals -------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_at_a_step_boundary_exits_75_and_resumes_bit_identical(reference, tmp_path, sig):
    """(SIGUSR2, Slurm's signal, is covered the same way in test_train.py.)"""
    data, ref = reference
    out, err = tmp_path / "run", tmp_path / "stderr"
    cfg = tiny_cfg(data, out, max_steps=30, ckpt_every=1000)
    p = _start_train(cfg, err)
    try:
        _wait_for(lambda: len(_steps(out / "log.jsonl")) >= 5, p, what="5 steps")
        p.send_signal(sig)
        rc = p.wait(timeout=30)
    finally:
        _kill_if_running(p.pid)
    assert rc == EXIT_PREEMPTED, err.read_text()[-2000:]
    m = re.fullmatch(STOPPED_AT.format(sig=sig.name, total=30), _last_line(err))
    assert m, err.read_text()[-2000:]
    step = int(m[1])
    assert 5 <= step < 30 and _load(out / "ckpt.pt")["step"] == step
    assert not (out / "model.pt").exists() and _leftovers(out) == []
    assert _steps(out / "log.jsonl") == list(range(1, step + 1))
    assert _start_train(cfg).wait() == 0
    _assert_same(_load(ref / "model.pt")["model"], _load(out / "model.pt")["model"], "model")
    _assert_same(_load(ref / "ckpt.pt")["optimizer"], _load(out / "ckpt.pt")["optimizer"], "optimizer")
    assert _steps(out / "log.jsonl") == list(range(1, 31))


# A `par train` whose start-up gets SIGTERM: in data loading, or in the first step (a compilation, made long).
START_UP_DRIVER = """
import os, signal, sys, time
import par.train.train as T
from par.cli import main

phase, argv = sys.argv[1], sys.argv[2:]
if phase == "data":
    load = T.TokenArrays.load.__func__
    def slow_load(cls, d):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(120)  # a long load
        return load(cls, d)
    T.TokenArrays.load = classmethod(slow_load)
else:
    wrap = T.wrap_model
    def wrap_model(run):
        fwd = wrap(run)
        def compiling(*a, **k):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(120)  # a long compilation of the first step
            return fwd(*a, **k)
        return compiling
    T.wrap_model = wrap_model
raise SystemExit(main(argv))
"""


@pytest.mark.parametrize("phase", ["data", "first-step"])
def test_stop_signal_during_start_up_exits_at_once_without_writing_a_checkpoint(tmp_path, phase):
    driver = tmp_path / "driver.py"
    driver.write_text(START_UP_DRIVER)
    out, err = tmp_path / "run", tmp_path / "stderr"
    cfg = tiny_cfg(make_token_dir(tmp_path / "d"), out, max_steps=30)
    with open(err, "w") as f:
        p = subprocess.Popen([sys.executable, str(driver), phase, *_train_argv(cfg)[3:]], stdout=subprocess.DEVNULL,
                             stderr=f, env=_env())
    try:
        rc = p.wait(timeout=30)
    finally:
        _kill_if_running(p.pid)
    assert rc == EXIT_PREEMPTED, err.read_text()[-2000:]
    assert re.fullmatch(STOPPED_EARLY.format(sig="SIGTERM"), _last_line(err)), err.read_text()[-2000:]
    assert not (out / "ckpt.pt").exists() and not (out / "model.pt").exists()
    assert not out.exists() or _leftovers(out) == []


@pytest.mark.slow
def test_stop_signal_while_the_first_step_compiles(tmp_path):
    """--compile true: the signal lands while the first step compiles (tens of seconds on a CPU); the run stops
    within seconds instead of compiling on, and leaves no checkpoint (there is nothing new to save)."""
    out, err = tmp_path / "run", tmp_path / "stderr"
    cfg = tiny_cfg(make_token_dir(tmp_path / "d"), out, max_steps=30, compile=True)
    p = _start_train(cfg, err)
    try:
        _wait_for(lambda: (out / "config.json").exists(), p, what="start-up")  # written just before the first step
        time.sleep(0.5)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        _kill_if_running(p.pid)
    assert rc == EXIT_PREEMPTED, err.read_text()[-2000:]
    assert re.fullmatch(STOPPED_EARLY.format(sig="SIGTERM"), _last_line(err)), err.read_text()[-2000:]
    assert took < 10 and not (out / "ckpt.pt").exists() and _steps(out / "log.jsonl") == []
    assert _leftovers(out) == []


# -- 3. under Snakemake ----------------------------------------------------------------------------

# A child that watches its parent (par.lifecycle), then idles; argv[1]: seconds to wait before it starts watching.
WATCHED_CHILD = """
import sys, time
time.sleep(float(sys.argv[1]))
from par.lifecycle import exit_with_parent
assert exit_with_parent(poll_s=0.1)
print("watching", file=sys.stderr, flush=True)
time.sleep(120)
"""
# The parent: starts it with PAR_EXIT_WITH_PARENT (argv[1]: "1", or "pid" for its own pid), prints its pid, idles.
PARENT = """
import os, subprocess, sys, time
value = str(os.getpid()) if sys.argv[1] == "pid" else sys.argv[1]
with open(sys.argv[2], "w") as err:
    child = subprocess.Popen(sys.argv[3:], stderr=err, env={**os.environ, "PAR_EXIT_WITH_PARENT": value})
print(child.pid, flush=True)
time.sleep(120)
"""


def _start_under_parent(tmp_path, value, child_argv):
    err = tmp_path / "child-stderr"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, value, str(err), *child_argv], stdout=subprocess.PIPE,
                              text=True, env=_env())
    return parent, int(parent.stdout.readline()), err


@pytest.mark.parametrize("value,delay", [("1", 0.0), ("pid", 0.0), ("pid", 2.0)],
                         ids=["flag", "parent-pid", "parent-died-before-the-watch"])
def test_exit_with_parent_ends_an_orphaned_process(tmp_path, value, delay):
    parent, child, err = _start_under_parent(tmp_path, value, [sys.executable, "-c", WATCHED_CHILD, str(delay)])
    try:
        if delay == 0:
            _wait_for(lambda: "watching" in err.read_text(), timeout=60, what="the watchdog")
        parent.kill()  # with delay 2: before the child started watching
        parent.wait()
        _wait_for(lambda: _gone(child), timeout=10 + delay, what="the orphan to exit")
    finally:
        _kill_if_running(parent.pid, child)
    assert re.search(r"par: parent process \d+ is gone; stopping", err.read_text())


def test_exit_with_parent_is_off_unless_asked():
    from par.lifecycle import exit_with_parent

    assert not exit_with_parent(env={})
    assert not exit_with_parent(env={"PAR_EXIT_WITH_PARENT": "0"})


def test_train_under_a_parent_that_dies_saves_and_exits(tmp_path):
    """The CLI starts the watchdog: `par train` whose parent is killed -9 checkpoints at a step boundary and exits."""
    out = tmp_path / "run"
    cfg = tiny_cfg(make_token_dir(tmp_path / "d"), out, max_steps=100_000, ckpt_every=100_000)
    parent, child, err = _start_under_parent(tmp_path, "pid", _train_argv(cfg))
    try:
        _wait_for(lambda: len(_steps(out / "log.jsonl")) >= 5, parent, what="5 steps")
        parent.kill()
        parent.wait()
        _wait_for(lambda: _gone(child), timeout=30, what="the orphaned training to exit")
    finally:
        _kill_if_running(parent.pid, child)
    _assert_stopped_and_saved(out, err, after_parent_died=True)


def test_sigterm_to_snakemake_reaches_its_running_jobs(monkeypatch):
    """Snakemake's own SIGTERM handler only stops scheduling and waits for running jobs; the workflow's hook
    (par.lifecycle.forward_sigterm_to_jobs, called by common.smk) passes the signal on to them."""
    from snakemake.scheduling.job_scheduler import JobScheduler
    from snakemake.shell import shell

    from par.lifecycle import forward_sigterm_to_jobs

    monkeypatch.setattr(JobScheduler, "exit_gracefully", JobScheduler.exit_gracefully)  # undone after the test
    assert forward_sigterm_to_jobs() and forward_sigterm_to_jobs()  # idempotent
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        monkeypatch.setitem(shell._processes, 987654, job)

        class Scheduler:  # what Snakemake's handler touches
            _lock, _open_jobs, _user_kill = threading.Lock(), threading.Semaphore(0), None

        sched = Scheduler()
        JobScheduler.exit_gracefully(sched)
        assert job.wait(timeout=10) == -signal.SIGTERM
        assert sched._user_kill == "graceful"  # and Snakemake's own handling still runs
    finally:
        _kill_if_running(job.pid)



def test_sigint_to_snakemake_takes_the_sigterm_path(monkeypatch):
    """Snakemake turns SIGINT into KeyboardInterrupt (cancel, jobs not told, outputs left incomplete); the workflow's
    hook (par.lifecycle.sigint_like_sigterm) sends the first one down the SIGTERM path; the second is Snakemake's."""
    from snakemake.scheduling.job_scheduler import JobScheduler

    from par.lifecycle import sigint_like_sigterm

    told = []
    monkeypatch.setattr(JobScheduler, "__init__", lambda self: None)  # both undone after the test
    monkeypatch.setattr(JobScheduler, "exit_gracefully", lambda self, *args: told.append(self))
    previous = signal.getsignal(signal.SIGINT)
    try:
        assert sigint_like_sigterm() and sigint_like_sigterm()  # idempotent
        scheduler = JobScheduler()
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(lambda: told == [scheduler], timeout=5, what="the SIGTERM path")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert told == [scheduler]

def _workflow_dir(tmp_path: Path) -> Path:
    """A tiny-preset workflow folder with ready token shards and one model that trains (almost) forever."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    t = cfg["presets"]["tiny"]
    # no learning curve: its held-out tokens would first need the whole tokenizer chain
    t["train"].update(max_steps=100_000, ckpt_every=100_000, log_every=1, launcher="inprocess", curve_images=0)
    t["models"] = {"raster-n1": t["models"]["raster-n1"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    make_token_dir(tmp_path / "results/tiny/tokens")
    return tmp_path


def _snakemake_train(wd: Path) -> subprocess.Popen:
    env = _env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("OMP_NUM_THREADS")
    return subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", "-s", str(ROOT / "workflow/Snakefile"),
                             "--directory", str(wd), "results/tiny/models/raster-n1/s0/model.pt"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _job_of(snakemake: subprocess.Popen, timeout=120) -> int:
    """Snakemake's child: with `exec par` in the rule, `par train` itself and not a shell around it."""
    import psutil

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for kid in psutil.Process(snakemake.pid).children():  # other helpers come and go (e.g. `scontrol`)
            try:
                cmd = kid.cmdline()
            except psutil.NoSuchProcess:
                continue
            if len(cmd) > 2 and cmd[2] == "train":
                assert "par" in os.path.basename(cmd[1]), cmd  # python …/bin/par train …, no shell in between
                return kid.pid
        assert snakemake.poll() is None, "snakemake ended before starting the training job"
        time.sleep(0.1)
    pytest.fail("snakemake started no job")


def _stop_mid_training(wd: Path, out: Path, steps: int, stop) -> int:
    """Start Snakemake on the training job, let it log `steps` steps, stop Snakemake with `stop(snakemake)`, wait for
    the job to go; Snakemake's exit status."""
    sm = _snakemake_train(wd)
    job = None
    try:
        job = _job_of(sm)
        _wait_for(lambda: len(_steps(out / "log.jsonl")) >= steps, sm, what=f"step {steps}")
        stop(sm)
        _wait_for(lambda: _gone(job), timeout=30, what="the training job to stop")
        return sm.wait(timeout=60)
    finally:
        _kill_if_running(sm.pid, job)


@pytest.mark.slow
def test_snakemake_sigterm_and_kill_9_stop_the_training_job_which_then_resumes(tmp_path):
    wd = _workflow_dir(tmp_path)
    out, job_log = wd / "results/tiny/models/raster-n1/s0", wd / "results/tiny/logs/train/raster-n1/s0.log"
    # SIGTERM to snakemake: the job saves at a step boundary and exits (Snakemake alone would wait for it to finish)
    assert _stop_mid_training(wd, out, 10, lambda sm: sm.send_signal(signal.SIGTERM)) == 1  # the job "failed" (75)
    first = _assert_stopped_and_saved(out, job_log)
    assert not (out / "model.pt").exists()
    # kill -9 of snakemake: the orphaned job notices, saves and exits; the run had resumed from `first`
    _stop_mid_training(wd, out, first + 10, lambda sm: sm.kill())
    assert _assert_stopped_and_saved(out, job_log, after_parent_died=True) >= first + 10


@pytest.mark.slow
def test_snakemake_sigint_stops_the_training_job_like_sigterm_and_the_rerun_needs_no_flag(tmp_path):
    wd = _workflow_dir(tmp_path)
    out, job_log = wd / "results/tiny/models/raster-n1/s0", wd / "results/tiny/logs/train/raster-n1/s0.log"
    # to Snakemake alone, as `kill -INT`
    assert _stop_mid_training(wd, out, 10, lambda sm: sm.send_signal(signal.SIGINT)) == 1
    first = _assert_stopped_and_saved(out, job_log)
    assert not (out / "model.pt").exists()
    # no --rerun-incomplete: the run resumes from its checkpoint
    _stop_mid_training(wd, out, first + 3, lambda sm: sm.send_signal(signal.SIGTERM))
    assert _assert_stopped_and_saved(out, job_log) >= first + 3


def test_a_stale_lock_is_cleared_only_when_its_owner_is_gone(tmp_path):
    from par.lifecycle import _started, clear_stale_locks

    locks = tmp_path / ".snakemake/locks"
    locks.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owners = {"dead": (dead.pid, "x:1"), "alive": (os.getpid(), _started(os.getpid())),
              "reused": (os.getpid(), "another-boot:1"), "elsewhere": (dead.pid, "x:1")}
    for i, (name, (pid, started)) in enumerate(owners.items()):
        (locks / f"{i}.input.lock").write_text("results/a\n")
        host = "another-host" if name == "elsewhere" else __import__("socket").gethostname()
        (locks / f"owner-{name}.json").write_text(json.dumps({"pid": pid, "host": host, "started": started,
                                                                "locks": [f"{i}.input.lock"]}))
    (locks / "9.output.lock").write_text("results/b\n")  # no record: Snakemake's to judge
    cleared = clear_stale_locks(tmp_path / ".snakemake")
    assert len(cleared) == 2 and all("is gone (killed?); `snakemake --unlock` is not needed" in c for c in cleared)
    assert sorted(p.name for p in locks.iterdir()) == ["1.input.lock", "3.input.lock", "9.output.lock",
                                                       "owner-alive.json", "owner-elsewhere.json"]


@pytest.mark.slow
def test_after_kill_9_of_snakemake_the_rerun_clears_its_stale_lock(tmp_path):
    wd = _workflow_dir(tmp_path)
    out, locks = wd / "results/tiny/models/raster-n1/s0", wd / ".snakemake/locks"
    sm = _snakemake_train(wd)
    job = None
    try:
        job = _job_of(sm)
        _wait_for(lambda: list(locks.glob("owner-*.json")), sm, what="the lock owner's record")
        _wait_for(lambda: len(_steps(out / "log.jsonl")) >= 3, sm, what="3 steps")
        sm.kill()
        sm.wait()
        _wait_for(lambda: _gone(job), timeout=30, what="the orphaned training job to stop")
    finally:
        _kill_if_running(sm.pid, job)
    assert list(locks.glob("*.lock"))  # what made every rerun fail with LockException until --unlock
    err = tmp_path / "rerun.err"
    env = _env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    with open(err, "w") as f:
        sm = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", "-s", str(ROOT / "workflow/Snakefile"),
                               "--directory", str(wd), "results/tiny/models/raster-n1/s0/model.pt"],
                              stdout=subprocess.DEVNULL, stderr=f, env=env)
    job = None
    try:
        job = _job_of(sm)  # the rerun got past the lock and resumed the training
        sm.send_signal(signal.SIGTERM)
        _wait_for(lambda: _gone(job), timeout=30, what="the training job to stop")
        sm.wait(timeout=60)
    finally:
        _kill_if_running(sm.pid, job)
    assert re.search(r"removed the stale lock of Snakemake \d+ .*is gone", err.read_text()), err.read_text()[-3000:]

# -- 4. kill-at-random soaks -----------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_soak_training_ends_bit_identical(tmp_path):
    """Six SIGKILLs — during start-up, mid-step, during a checkpoint save — each followed by a resume; the run ends
    with the weights and optimizer state of an uninterrupted run, a log without repeats, and no temp files."""
    data = make_token_dir(tmp_path / "d")
    ref_cfg = tiny_cfg(data, tmp_path / "ref", max_steps=60, ckpt_every=4)
    ref = _start_train(ref_cfg)  # alongside the soak
    out = tmp_path / "run"
    cfg = tiny_cfg(data, out, max_steps=60, ckpt_every=4)
    rng = np.random.default_rng(int(time.time()))
    landed = []
    try:
        for moment in ("start-up", "mid-step", "checkpoint save", "mid-step", "checkpoint save", "start-up"):
            resumed_from = _load(out / "ckpt.pt")["step"] if (out / "ckpt.pt").exists() else 0
            old_temps, launched = set(_leftovers(out) if out.exists() else []), time.time()
            p = _start_train(cfg)

            def this_run_logged(target):  # the log's mtime first: a log rewritten by this run holds only its steps
                log = out / "log.jsonl"
                return log.exists() and log.stat().st_mtime >= launched and max(_steps(log), default=0) >= target

            def this_run_saving():
                return out.exists() and any(f.startswith(".ckpt.pt.") and f not in old_temps for f in os.listdir(out))

            if moment == "start-up":  # a random moment before this run's first step
                end = time.monotonic() + rng.uniform(0.2, 6.0)
                while time.monotonic() < end and not this_run_logged(resumed_from + 1):
                    time.sleep(0.005)
            elif moment == "mid-step":  # after this run saved a checkpoint (ckpt_every=4)
                target = resumed_from + int(rng.integers(5, 12))
                _wait_for(lambda: this_run_logged(target), p, poll=0.005, what="steps")
            else:  # in this run's second checkpoint save
                _wait_for(lambda: this_run_logged(resumed_from + 5), p, poll=0.005, what="a first checkpoint")
                _wait_for(this_run_saving, p, poll=0, what="a checkpoint save")
            assert p.poll() is None, f"the run finished before the {moment} kill"
            p.send_signal(signal.SIGKILL)
            p.wait()
            left = sorted(set(_leftovers(out) if out.exists() else []) - old_temps)
            landed.append((moment, resumed_from, max(_steps(out / "log.jsonl"), default=0), left))
            assert not (out / "model.pt").exists()
            if (out / "ckpt.pt").exists():
                assert _load(out / "ckpt.pt")["step"] >= resumed_from  # never half-written, never behind
        assert _start_train(cfg).wait() == 0
        assert ref.wait() == 0
    finally:
        _kill_if_running(ref.pid)
    print("kills (moment, resumed from, last logged step, temp files it left):", landed)
    assert any(left for moment, _, _, left in landed if moment == "checkpoint save"), landed  # one hit a save
    _assert_same(_load(tmp_path / "ref/model.pt"), _load(out / "model.pt"), "model.pt")
    a, b = _load(tmp_path / "ref/ckpt.pt"), _load(out / "ckpt.pt")
    _assert_same(a["model"], b["model"], "model")
    _assert_same(a["optimizer"], b["optimizer"], "optimizer")
    assert _steps(out / "log.jsonl") == list(range(1, 61))
    assert _leftovers(out) == []


def _sample_argv(models: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "par", "sample", "--model", str(models / "gpt.pt"), "--vq", str(models / "vq.pt"),
            "--out", str(out), "--num-samples", "48", "--shard-size", "4", "--batch-size", "2", "--image-size", "32"]


@pytest.mark.slow
def test_sigkill_soak_sampling_ends_byte_identical(tiny_models, tmp_path):  # noqa: F811
    """Six SIGKILLs of `par sample` — during start-up, between and in shards, while packing — each followed by a
    rerun; the final samples.npz is byte-identical to a clean run's and no temp file is left."""
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    ref = subprocess.Popen(_sample_argv(tiny_models, ref_out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=_env())
    shards = out / "shards"

    def done():
        return len(list(shards.glob("samples-*.npz"))) if shards.exists() else 0

    rng = np.random.default_rng(int(time.time()))
    landed = []
    try:
        for moment in ("start-up", "sampling", "sampling", "start-up", "packing", "packing"):
            before, launched = done(), time.time()
            p = subprocess.Popen(_sample_argv(tiny_models, out), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=_env())
            if moment == "start-up":
                time.sleep(rng.uniform(0.2, 3.0))
            elif moment == "sampling" and before < 11:
                target = before + int(rng.integers(1, 12 - before))
                _wait_for(lambda: done() >= target, p, poll=0.005, what="shards")
            else:  # every shard there: kill while samples.npz, labels.npy, grid.png and sampling.json are written

                def packing():
                    return done() == 12 and any(f.is_file() and f.name != "job.json" and f.stat().st_mtime >= launched
                                                for f in out.iterdir())

                _wait_for(packing, p, poll=0.005, what="packing")
                time.sleep(rng.uniform(0.0, 0.3))
            if p.poll() is not None:
                pytest.fail(f"sampling finished before the {moment} kill")
            p.send_signal(signal.SIGKILL)
            p.wait()
            landed.append((moment, done(), _leftovers(out) if out.exists() else []))
            for f in shards.glob("samples-*.npz") if shards.exists() else []:
                np.load(f)["tokens"]  # every visible shard is whole
            if (out / "samples.npz").exists():
                np.load(out / "samples.npz")["arr_0"]
        assert subprocess.run(_sample_argv(tiny_models, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=_env()).returncode == 0
        assert ref.wait() == 0
    finally:
        _kill_if_running(ref.pid)
    print("kills (moment, shards done, temp files left):", landed)
    assert len(landed) >= 5, landed
    assert (out / "samples.npz").read_bytes() == (ref_out / "samples.npz").read_bytes()
    np.testing.assert_array_equal(np.load(out / "labels.npy"), np.load(ref_out / "labels.npy"))
    assert _leftovers(out) == [], landed
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref_out.iterdir())
