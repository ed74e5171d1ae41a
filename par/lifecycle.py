"""A `par` job under Snakemake stops when Snakemake is stopped, and dies with it.

Two gaps in how Snakemake runs local jobs, closed here (the rules' shell lines run ``exec par …``, so the process
Snakemake starts, and whose parent it is, is `par` itself and not a shell around it):

* SIGTERM to Snakemake is "graceful": it stops scheduling and *waits* for the running jobs to finish, which for a
  training run can be days; the signal never reaches them (snakemake/snakemake#448). `forward_sigterm_to_jobs()`
  passes it on to every running job: `par train` saves a checkpoint at the next step boundary and exits with 75,
  other commands stop at once (their writes are atomic).
* `kill -9` of Snakemake (or an OOM kill, a crash) leaves its jobs running as orphans. `exit_with_parent()`, called
  by the CLI, watches for that when ``PAR_EXIT_WITH_PARENT`` is set: a daemon thread polls the parent pid and sends
  this process SIGTERM once it has been re-parented, then SIGKILL if it is still alive after a grace period.
  (``prctl(PR_SET_PDEATHSIG)`` would not do: it fires when the *thread* that forked exits, and Snakemake starts
  jobs from worker threads.)

The workflow turns both on with one call, `jobs_end_with_snakemake()` (workflow/rules/common.smk).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

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
    """Call once from the Snakefile (common.smk): a SIGTERM to this Snakemake process reaches its running jobs
    (`forward_sigterm_to_jobs`), and the `par` jobs it starts stop if it dies (``PAR_EXIT_WITH_PARENT``, this
    process's pid, which their CLI hands to `exit_with_parent`). Returns whether the forwarding is in place."""
    os.environ[ENV] = str(os.getpid())
    return forward_sigterm_to_jobs()


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
