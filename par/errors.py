"""The error path of `par`: what a failure means decides its exit status.

* ``UserError`` — bad input (a file, a flag, a config key): one line naming it and the fix; exit 2.
* ``EnvironmentFault`` — the machine said no (disk full, permission denied, out of memory): one line naming the
  path and, for a full disk, how much space was needed; exit 3.
* anything else is a bug: its traceback is kept; exit 1.
"""

from __future__ import annotations

import errno
import os
import shutil

EXIT_USER, EXIT_ENVIRONMENT = 2, 3
_DISK_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_ACCESS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


class UserError(Exception):
    """Bad input. `par` prints it as one line (naming the file/field and the fix) and exits with status 2."""


class EnvironmentFault(Exception):
    """The environment failed us (disk, permissions, memory). One line naming the path; exit status 3."""


def _free_bytes(path) -> int | None:
    p = os.path.abspath(path)
    while p and not os.path.exists(p):
        p = os.path.dirname(p)
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def disk_full(path, needed: int | None = None) -> EnvironmentFault:
    free = _free_bytes(path)
    need = f"needs about {_size(needed)}, " if needed else ""
    return EnvironmentFault(f"{path}: disk full ({need}{_size(free)} free there); free some space or point the "
                            "output elsewhere, then rerun (nothing was half-written)")


def as_environment_fault(exc: BaseException, path=None, needed: int | None = None) -> EnvironmentFault | None:
    """The environment fault behind `exc`, or None when it is not one (then it is a bug or a user error)."""
    if isinstance(exc, EnvironmentFault):
        return exc
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return EnvironmentFault(f"out of memory{f' while writing {path}' if path else ''} ({exc}); lower the "
                                "batch size or ask for more memory")
    if isinstance(exc, OSError):
        where = exc.filename or path or "?"
        if exc.errno in _DISK_ERRNOS:
            return disk_full(where, needed)
        if exc.errno in _ACCESS_ERRNOS:
            return EnvironmentFault(f"{where}: {os.strerror(exc.errno).lower()}; fix its permissions or choose "
                                    "another output folder")
    # torch.save reports a full disk as a RuntimeError from its zip writer ("unexpected pos …", "failed writing")
    if isinstance(exc, RuntimeError) and path is not None and any(
            s in str(exc) for s in ("unexpected pos", "failed writing", "file write failed")):
        free = _free_bytes(path)
        if free is not None and free < max(needed or 0, 1 << 20):
            return disk_full(path, needed)
    return None
