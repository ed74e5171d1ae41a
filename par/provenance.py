"""Which code produced a result: the git commit of the working tree, and whether it had uncommitted changes.

`par train` records it in its run's config.json and `par sample` in sampling.json, so every per-run row of
runs.csv names the commit that trained and the one that sampled it; `par report` states the commit it rendered at.
Results made before this was recorded have no commit: readers show them as "unrecorded", never a guess.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

UNRECORDED = "unrecorded"  # a result file written before commits were recorded


def _git(args, cwd) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10).stdout


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit checked out at `cwd` (default: this package's repository), "<sha>+dirty" when tracked files
    outside `analysis/` differ from it; None outside a git repository (an installed package)."""
    cwd = cwd or Path(__file__).resolve().parent
    state = git_state(cwd=cwd)
    if state is None:
        return None
    sha, files = state
    return sha + ("+dirty" if files else "")


def git_state(analysis: str | Path = "analysis", cwd: str | Path | None = None) -> tuple[str, list[str]] | None:
    """(HEAD's sha, tracked files changed against it). The report's output folder (`analysis/`, and `analysis`
    wherever it lies in the repository) does not count: the run rewrites it. None without git or a repository."""
    try:
        top = _git(["rev-parse", "--show-toplevel"], cwd).strip()
        if not top:
            return None
        sha = _git(["rev-parse", "HEAD"], top).strip()
        if not sha:
            return None
        excluded = {"analysis"}
        rel = os.path.relpath(Path(analysis).resolve(), Path(top).resolve())
        if not rel.startswith(".."):
            excluded.add(rel)
        spec = ["--", "."] + [f":(exclude){p}" for p in sorted(excluded)]
        status = _git(["status", "--porcelain", "--untracked-files=no", *spec], top)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sha, [line[3:] for line in status.splitlines() if line.strip()]  # porcelain: "XY path"


def git_provenance(analysis: str | Path = "analysis", cwd: str | Path | None = None) -> str:
    """`<commit> (clean)`, or `<commit> with uncommitted changes (files…)`; "unknown" without git."""
    state = git_state(analysis, cwd)
    if state is None:
        return "unknown"
    sha, files = state
    if not files:
        return f"{sha} (clean)"
    shown = ", ".join(files[:8]) + (f", … ({len(files)} files)" if len(files) > 8 else "")
    return f"{sha} with uncommitted changes ({shown})"


def recorded(meta: dict | None) -> str:
    """The commit a result file records (`commit`), or "unrecorded" when it has none."""
    return str((meta or {}).get("commit") or UNRECORDED)
