"""Atomic file writes: a reader never sees a half-written file (temp file in the same dir + rename)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from par.errors import UserError, as_environment_fault, disk_full


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


def default_mode(path: str | Path) -> None:
    """Give `path` the permissions a plain `open()` would (0666 less the umask): temp files start at 0600."""
    os.chmod(path, 0o666 & ~_umask())


@contextmanager
def atomic_path(path: str | Path, needed: int | None = None, digest: bool = False):
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, else removed.
    A full disk or a permission error while writing becomes one `EnvironmentFault` naming `path`
    (`needed`: the bytes the write needs, for the message). `digest`: record the file's sha256 in
    `<path>.sha256` (`record_digest`), which `check_digest` / `verify` compare the file against later."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    except OSError as e:
        raise (as_environment_fault(e, path, needed) or e) from None
    os.close(fd)
    default_mode(tmp)  # mkstemp creates 0600; final files get the usual permissions
    try:
        yield Path(tmp)
        with record_digest(path, tmp) if digest else _nothing():
            os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if as_environment_fault(e, path, needed) is None:
            raise
        # classified with our partial file still there; reported after removing it, so that the free space
        # in the message is what the user has (not the 0 B our own temp file left)
        Path(tmp).unlink(missing_ok=True)
        raise (as_environment_fault(e, path, needed) or disk_full(path, needed)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def _nothing():
    yield


# -- content digests: a same-size change (a flipped bit, a bad copy) is named, not read -----------------------
#
# `atomic_path(..., digest=True)` writes `<file>.sha256` (`sha256sum` format, so `sha256sum -c` checks it, and the
# same file `par fetch` pins downloads in). Sharded writers' finalize copies each shard's digest into the folder's
# manifest; readers check files against the manifest's record, else the sidecar. A file with no record (written
# before digests, or not by par) is read unchecked, as before.


def digest_path(path: str | Path) -> Path:
    """`<path>.sha256`: the sha256 recorded when `path` was written."""
    return Path(f"{path}.sha256")


def recorded_digests(path: str | Path) -> list[str]:
    """The digests recorded for `path` (newest first; two only while a writer is between its renames); []: none."""
    try:
        text = digest_path(path).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [line.split()[0].lower() for line in text.splitlines() if line.split()]


def _write_digests(path, digests: list[str]) -> None:
    write_text(digest_path(path), "".join(f"{d}  {Path(path).name}\n" for d in digests))


@contextmanager
def record_digest(path: str | Path, tmp: str | Path):
    """Around the rename of `tmp` onto `path`: record tmp's sha256 for `path`. A kill between the two renames
    must not leave a record that matches neither file, so the sidecar lists the new and the old digest until
    the new file is in place."""
    new = sha256_file(tmp)  # read back from the page cache: the writers (zip, memmap, torch.save) seek
    old = [d for d in recorded_digests(path) if d != new]
    _write_digests(path, [new, *old])
    yield
    if old:
        _write_digests(path, [new])


_HASHED: dict[tuple, str] = {}  # (device, inode, size, mtime) → sha256: a file read twice is hashed once


def _current_digest(path: str | Path) -> str:
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(path)
    return _HASHED[key]


def check_digest(path: str | Path) -> bool | None:
    """True if `path`'s content matches the digest recorded for it, False if not (damaged or changed since it
    was written), None if none is recorded."""
    recorded = recorded_digests(path)
    if not recorded:
        return None
    return _current_digest(path) in recorded


def file_digest(path: str | Path) -> str:
    """The sha256 recorded for `path` when it was written (for a manifest); hashed now if none is recorded."""
    recorded = recorded_digests(path)
    if len(recorded) == 1:
        return recorded[0]
    have = _current_digest(path)  # no record (a file from before digests), or a writer killed between renames
    return have if not recorded or have in recorded else recorded[0]


def verify(path: str | Path, fix: str, expected: str | None = None, record: str | None = None) -> None:
    """UserError naming `path` and `fix` unless its content matches `expected` (the digest a manifest, named
    `record`, holds) or, without one, its `<path>.sha256`. Nothing recorded: nothing to check."""
    if expected is not None:
        ok, record = _current_digest(path) == expected, record or "its manifest"
    else:
        ok, record = check_digest(path), digest_path(path).name
    if ok is False:
        raise UserError(f"{path}: content differs from the sha256 recorded when it was written (in {record}): "
                        f"damaged or changed since; {fix}")


# -- claims: concurrent workers split the work on one folder instead of repeating it ----------------------


def lock_path(path) -> Path:
    """The lock file of the claim on `path`: ``<path>.lock``, next to it."""
    return Path(f"{path}.lock")


class Claim:
    """This process's exclusive claim on making one file (an `flock` held on its lock file)."""

    def __init__(self, fd: int | None, lock: Path):
        self.fd, self.lock = fd, lock

    def release(self) -> None:
        """Drop the claim and remove the lock file (safe: while we hold it, the path is our lock's)."""
        if self.fd is None:
            return
        try:
            self.lock.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


def try_claim(path, blocking: bool = False) -> Claim | None:
    """Claim the making of `path` (exclusive `flock` on ``<path>.lock``), or None if another live process
    holds the claim (with `blocking`: wait for it). The kernel drops a lock when its holder dies, so a dead
    worker's claim is simply taken over. The lock file is removed on `Claim.release`; a claimant that locked a
    lock file just removed by its finishing holder retries on the current one (inode check), so at most one
    process holds the claim of a path at a time. Check that the work is still to do after claiming."""
    import fcntl

    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            return Claim(fd, lock)  # no locking on this file system: work as before (no claim, no harm)
        except BaseException:
            os.close(fd)
            raise
        try:
            st = os.stat(lock)
            same = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        except FileNotFoundError:
            same = False
        if same:
            return Claim(fd, lock)
        os.close(fd)  # its holder finished and removed it meanwhile: claim the current lock file instead


@contextmanager
def claim(path: str | Path):
    """`try_claim` as a context manager: yields whether this process holds the claim on making `path`."""
    held = try_claim(path)
    try:
        yield held is not None
    finally:
        if held is not None:
            held.release()


def shard_state(path, read_meta, problem, command: str, quiet: bool = False) -> str:
    """"missing", "damaged", "unreadable" or "complete" for one shard file of a sharded writer (`par tokenize`,
    `prepare-video`, `tokenize-video`, `sample`): "damaged" if its content differs from the sha256 recorded when
    it was written (checked first: a flipped bit in its metadata must not pass for another run's shard); then
    `read_meta(path)` reads its metadata (None: no metadata to check), `problem(meta)` says why it does not
    belong to this run (then a UserError: another run's shards are never overwritten silently). All but
    "complete" are made again."""
    import sys

    path = Path(path)
    if not path.exists():
        return "missing"
    if check_digest(path) is False:
        if not quiet:
            print(f"par {command}: {path} differs from the sha256 recorded when it was written (damaged); "
                  "re-making it", file=sys.stderr)
        return "damaged"
    if read_meta is None:
        return "complete"
    try:
        meta = read_meta(path)
    except Exception as e:  # noqa: BLE001 — unreadable: ours to redo (writes are atomic, so rare)
        if not quiet:
            print(f"par {command}: {path} is unreadable ({type(e).__name__}: {e}); re-making it", file=sys.stderr)
        return "unreadable"
    why = problem(meta)
    if why:
        raise UserError(f"{path}: written by a different run ({why}); use a fresh --out or delete the old shards")
    return "complete"


def make_shards(shards, path_of, state, make, size_of, bar) -> tuple[list, list, list, list]:
    """The loop of every sharded writer (clips, video tokens): claim shard k's file `path_of(k)`, tidy what a killed
    writer left, keep it if `state(k)` is "complete", else `make(k)`; a shard another live process holds is left
    to it. `bar` advances by `size_of(k)` for each kept or left shard (`make` advances it itself). Returns
    (written, kept, others, what each `make` returned)."""
    written, kept, others, made = [], [], [], []
    for k in shards:
        held = try_claim(path_of(k))
        if held is None:  # another live worker is making it
            others.append(k)
            bar.update(size_of(k))
            continue
        try:
            remove_stale_temps(path_of(k))
            if state(k) == "complete":
                kept.append(k)
                bar.update(size_of(k))
            else:
                made.append(make(k))
                written.append(k)
        finally:
            held.release()
    return written, kept, others, made


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

    # through a file object: torch.save names the archive after a path, and the temp name is random, so the same
    # object would give different bytes (and sha256) on every save
    with atomic_path(path, needed=_tensor_bytes(obj), digest=True) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load_npz(path: str | Path, *keys: str) -> dict:
    """All arrays of an .npz file, checking that the named keys are present (one UserError naming the file)."""
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path")
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a readable .npz file ({e}); regenerate it") from None
    for k in keys:
        if k not in arrays:
            raise UserError(f"{path}: no array {k!r} (has {sorted(arrays) or 'none'}); pass the right file")
    return arrays


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h, buf = hashlib.sha256(), bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):  # one reused buffer: streaming, no allocation per block
            h.update(view[:n])
    return h.hexdigest()


def torch_load(path: str | Path):
    """`torch.load(weights_only=True)` on the CPU. Reference trainers pickle an argparse `args` entry next to
    the weights; that one class is allow-listed, never `weights_only=False`. The file is first checked against
    the sha256 `torch_save` recorded next to it (`verify`; a checkpoint without one is loaded unchecked).
    Errors: one line naming the file."""
    import argparse

    import torch

    from par.errors import UserError

    if not Path(path).is_file():
        raise UserError(f"{path}: checkpoint file not found")
    verify(path, f"restore it from a copy or make it again (replaced on purpose? delete {digest_path(path)})")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint file not found") from None
    except Exception as e:  # noqa: BLE001 — surface one clear line
        # the fix first, then torch's specific reason (not its generic paragraphs, which suggest weights_only=False)
        reason = " ".join(p.strip().replace("\n", " ") for p in str(e).split("\n\n")
                          if p.strip() and not p.lstrip().startswith(("Weights only load failed", "Check the doc")))
        reason = reason.split("WeightsUnpickler error:", 1)[-1].strip()
        # only a refused class (a GLOBAL the weights-only unpickler blocks) is fixed by re-saving; anything else
        # is a damaged, cut-short or foreign file
        fix = ("re-save it as a plain state dict" if "global" in str(e).lower() else
               "it is damaged, cut short or not a checkpoint: copy, download or make it again")
        raise UserError(f"{path}: cannot be read with torch.load(weights_only=True); {fix} "
                        f"({type(e).__name__}: {reason or str(e).strip().splitlines()[0]})") from None


def write_manifest(path: str | Path, manifest: dict) -> Path:
    """Write a folder's manifest JSON atomically; concurrent writers (the slots of an array) take turns on a claim,
    each first removing the temp files a killed writer left."""
    held = try_claim(path, blocking=True)
    try:
        remove_stale_temps(path)
        write_json(path, manifest)
    finally:
        held.release()
    return Path(path)
