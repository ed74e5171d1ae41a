"""Atomic file writes: a reader never sees a half-written file (temp file in the same dir + rename)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from par.errors import as_environment_fault


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_prefix(path: str | Path) -> str:
    """Name prefix of the temporary files `atomic_path` makes next to `path` (`.<name>.<random>.tmp`)."""
    return f".{Path(path).name}."


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove temporary files a killed writer of `path` left behind (call it where one writer owns `path`)."""
    path = Path(path)
    stale = sorted(path.parent.glob(temp_prefix(path) + "*.tmp")) if path.parent.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_path(path: str | Path, needed: int | None = None):
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, else removed.
    A full disk or a permission error while writing becomes one `EnvironmentFault` naming `path`
    (`needed`: the bytes the write needs, for the message)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    except OSError as e:
        raise (as_environment_fault(e, path, needed) or e) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; final files get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        fault = as_environment_fault(e, path, needed)
        if fault is None:
            raise
        raise fault from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _tensor_bytes(obj) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def torch_save(obj, path: str | Path) -> None:
    import torch

    with atomic_path(path, needed=_tensor_bytes(obj)) as tmp:
        torch.save(obj, tmp)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def torch_load(path: str | Path):
    """`torch.load(weights_only=True)` on the CPU. Reference trainers pickle an argparse `args` entry next to
    the weights; that one class is allow-listed, never `weights_only=False`. Errors: one line naming the file."""
    import argparse

    import torch

    from par.errors import UserError

    if not Path(path).is_file():
        raise UserError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint file not found") from None
    except Exception as e:  # noqa: BLE001 — surface one clear line
        msg = str(e).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        # the fix first: a long torch message must not push it out of sight
        raise UserError(f"{path}: cannot be read with torch.load(weights_only=True); re-save it as a plain state "
                        f"dict ({type(e).__name__}: {msg[0] if msg else ''})") from None
