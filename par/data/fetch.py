"""`par fetch`: download a released file (paper preset only: checkpoints, ADM reference batch), verified.

Written to a temp file and renamed, so an interrupted download never leaves a file that looks complete.
With `--sha256` the digest must match; without it, the digest is printed and written next to the file
(`<file>.sha256`) so it can be pinned in config.yaml. Tests and the tiny preset never download.
"""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

from par import io
from par.errors import UserError


def fetch(url: str, out: str | Path, sha256: str = "") -> str:
    out = Path(out)
    h = hashlib.sha256()
    with io.atomic_path(out) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 22):
                    h.update(chunk)
                    f.write(chunk)
        except OSError as e:
            raise UserError(f"{url}: download failed ({e}); download it by hand to {out}") from e
        digest = h.hexdigest()
        if sha256 and digest != sha256.lower():
            raise UserError(f"{url}: sha256 {digest} != expected {sha256}; the file changed or is corrupt")
    io.write_text(Path(f"{out}.sha256"), f"{digest}  {out.name}\n")
    return digest


def cmd_fetch(args) -> int:
    print(fetch(args.url, args.out, args.sha256))
    return 0


def register(sub):
    p = sub.add_parser("fetch", help="download a released file with checksum verification (paper preset)")
    p.add_argument("--url", required=True, help="URL of the released file")
    p.add_argument("--out", required=True, help="where to write it (atomically; <out>.sha256 records the digest)")
    p.add_argument("--sha256", default="", help="expected digest (empty: record it)")
    p.set_defaults(func=cmd_fetch)
