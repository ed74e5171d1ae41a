"""A `par` job under Snakemake stops when Snakemake is stopped, and dies with it.

Two gaps in how Snakemake runs local jobs, closed here (the rules' shell lines run ``exec par …``, so the process
Snakemake starts, and whose parent it is, is `par` itself and not a shell around it):

* SIGTERM to Snakemake is "graceful": it stops scheduling and *waits* for the running jobs to finish, which for a
  training run can be days; the signal never reaches them (snakemake/snakemake#448). `forward_sigterm_to_jobs()`
  passes it on to every running job: `par train` saves a checkpoint at the next step boundary and exits with 75,
  other commands stop at once (their writes are atomic).
* SIGINT to Snakemake alone (`kill -INT`, or Ctrl-C where only Snakemake gets it) raises KeyboardInterrupt: it
  cancels without telling the jobs, waits for them anyway, and leaves a finished output marked incomplete (the rerun
  then needs --rerun-incomplete). `sigint_like_sigterm()` sends the first SIGINT down the SIGTERM path above; a
  second one is Snakemake's own (cancel at once).
* `kill -9` of Snakemake (or an OOM kill, a crash) leaves its jobs running as orphans. `exit_with_parent()`, called
  by the CLI, watches for that when ``PAR_EXIT_WITH_PARENT`` is set: a daemon thread polls the parent pid and sends
  this process SIGTERM once it has been re-parented, then SIGKILL if it is still alive after a grace period.
  (``prctl(PR_SET_PDEATHSIG)`` would not do: it fires when the *thread* that forked exits, and Snakemake starts
  jobs from worker threads.)

The workflow turns all of it on with one call, `jobs_end_with_snakemake()` (workflow/rules/common.smk).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

ENV = "PAR_EXIT_WITH_PARENT"  # "1", or the pid of the process that is expected to be our parent
POLL_S = 1.0
GRACE_S = 600.0  # SIGTERM → SIGKILL: time enough to save a large checkpoint
_watching = False  # one watchdog per process


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_with_parent(env=None, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> bool:
    """When ``PAR_EXIT_WITH_PARENT`` is set: end this process (SIGTERM, then SIGKILL after `grace_s`) once its
    parent is gone. Its value is ``1`` or the pid of the expected parent; with a pid, a parent that died before
    this call counts too. Returns whether the watchdog runs."""
    global _watching
    value = (os.environ if env is None else env).get(ENV, "")
    if not value or value == "0":
        return False
    if _watching:
        return True
    _watching = True
    parent = os.getppid()
    expected = int(value) if value.isdigit() and int(value) > 1 else None
    if expected is not None and expected != parent and not _alive(expected):
        gone = True  # re-parented before we got here
    else:
        gone = False

    def watch():
        if not gone:
            while os.getppid() == parent:
                time.sleep(poll_s)
        print(f"par: parent process {expected or parent} is gone; stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="par-exit-with-parent", daemon=True).start()
    return True


def jobs_end_with_snakemake() -> bool:
    """Call once from the Snakefile (common.smk): a SIGTERM (or a first SIGINT, `sigint_like_sigterm`) to this
    Snakemake process reaches its running jobs (`forward_sigterm_to_jobs`), and the `par` jobs it starts stop if
    it dies (``PAR_EXIT_WITH_PARENT``, this process's pid, which their CLI hands to `exit_with_parent`). Returns
    whether the forwarding is in place."""
    os.environ[ENV] = str(os.getpid())
    forwards = forward_sigterm_to_jobs()
    return sigint_like_sigterm() and forwards


def sigint_like_sigterm() -> bool:
    """Make the first SIGINT to this Snakemake process do what SIGTERM does (`JobScheduler.exit_gracefully`, which
    `forward_sigterm_to_jobs` extends to the jobs); the second SIGINT cancels at once, as Snakemake alone does.
    The handler is installed when the scheduler installs its SIGTERM one. Returns False (and changes nothing) when
    this Snakemake version does not have the internals it relies on."""
    try:
        from snakemake.scheduling.job_scheduler import JobScheduler
    except ImportError:
        return False
    init = JobScheduler.__init__
    if getattr(init, "sigint_like_sigterm", False):
        return True
    if not hasattr(JobScheduler, "exit_gracefully"):
        return False

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)

        def on_sigint(signum, frame):
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the next one: Snakemake's KeyboardInterrupt
            print("snakemake: SIGINT: stopping as on SIGTERM (running jobs are told, training checkpoints); "
                  "interrupt again to cancel at once", file=sys.stderr, flush=True)
            self.exit_gracefully(signum, frame)

        try:
            signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread (Snakemake's own SIGTERM handler is missing there too)
            pass

    __init__.sigint_like_sigterm = True
    JobScheduler.__init__ = __init__
    return True


def forward_sigterm_to_jobs() -> bool:
    """Make a SIGTERM to this Snakemake process also reach the jobs it runs locally (call it from the Snakefile).

    Snakemake's own SIGTERM handler (`JobScheduler.exit_gracefully`) only stops scheduling new jobs; this wraps it
    so that it first sends SIGTERM to every running shell job. Returns False (and changes nothing) when this
    Snakemake version does not have the internals it relies on."""
    try:
        from snakemake.scheduling.job_scheduler import JobScheduler
        from snakemake.shell import shell
    except ImportError:
        return False
    graceful = getattr(JobScheduler, "exit_gracefully", None)
    if graceful is None or not isinstance(getattr(shell, "_processes", None), dict):
        return False
    if getattr(graceful, "forwards_sigterm", False):
        return True

    def exit_gracefully(self, *args):
        for proc in list(dict(shell._processes).values()):
            try:
                proc.send_signal(signal.SIGTERM)
            except (OSError, ValueError):
                pass
        return graceful(self, *args)

    exit_gracefully.forwards_sigterm = True
    exit_gracefully.__doc__ = graceful.__doc__
    JobScheduler.exit_gracefully = exit_gracefully
    return True


# ------------------------------------------------------------------ Snakemake's lock, after a kill -9 of its owner
#
# Snakemake's lock files (.snakemake/locks/<i>.{input,output}.lock) list files, not their owner, so after a kill -9
# every rerun fails with LockException until `snakemake --unlock`, which would also break a live run's lock. Each
# run of this workflow records, beside its own lock files, who holds them (`record_lock_owner`, at onstart); the
# next run removes exactly the lock files whose recorded owner is gone (`clear_stale_locks`, when the Snakefile is
# read). A record lives in the lock folder, so Snakemake's own unlock (or --unlock) removes it with the locks.

OWNER_GLOB = "owner-*.json"


def _started(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot, with the boot's id), None if there is no such process; tells a
    reused pid from the recorded one."""
    if not Path("/proc/self/stat").exists():  # no /proc here: whether the pid exists is all we can tell
        return "alive" if _alive(pid) else None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"


def record_lock_owner(persistence) -> Path | None:
    """Record this process as the owner of the lock files Snakemake's `persistence` holds (call from `onstart`).
    Returns the record, or None when this Snakemake keeps its locks elsewhere (no record: no automatic clearing)."""
    from par.io import write_json

    locks = [Path(p) for p in (getattr(persistence, "_lockfile", None) or {}).values()]
    if not locks:
        return None
    record = locks[0].parent / f"owner-{os.getpid()}.json"
    write_json(record, {"pid": os.getpid(), "host": socket.gethostname(), "started": _started(os.getpid()),
                        "locks": sorted(p.name for p in locks)})
    return record


def clear_stale_locks(snakemake_dir: str | Path = ".snakemake") -> list[str]:
    """Remove the lock files whose recorded owner, a Snakemake on this host, is gone; one line per owner cleared.
    Lock files without a record, or held by a live process or another host's, are left to Snakemake (whose
    LockException then names `--unlock`)."""
    lockdir, cleared = Path(snakemake_dir) / "locks", []
    for record in sorted(lockdir.glob(OWNER_GLOB)):
        try:
            owner = json.loads(record.read_text())
            pid, host, started, locks = owner["pid"], owner["host"], owner["started"], owner["locks"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign: not ours to judge
        now = _started(pid)
        if host != socket.gethostname() or (now is not None and (now == started or now == "alive")):
            continue
        for name in locks:
            (lockdir / Path(name).name).unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        cleared.append(f"removed the stale lock of Snakemake {pid} ({', '.join(locks)} in {lockdir}): that process "
                       "is gone (killed?); `snakemake --unlock` is not needed")
    return cleared
