"""`par fetch`: download a released file (paper preset only: checkpoints, ADM reference batch), pinned by sha256.

Pinning policy — the digest that `<out>` must have comes from, in this order:

1. `--sha256 HEX`: the sha256 setting of this download in config.yaml;
2. `<out>.sha256`, written by an earlier download (`<digest>  <name>`, the format of `sha256sum`), so that
   the first download pins the file and every later run verifies against that pin;
3. none: refused, unless `--allow-unpinned`, which downloads, writes `<out>.sha256` and prints the digest to pin.

The download is pooch's (`pooch.retrieve`: streamed into a temporary file next to `<out>`, verified, then renamed),
so a mismatch or an interruption never leaves a file at `<out>`. An `<out>` that already has the expected digest
is not downloaded again; one that does not is removed and downloaded again. Network errors are retried a few
times here (pooch's own `retry_if_failed` would also download a multi-GB file again after a digest
mismatch, which is no network accident). Tests and the tiny preset never download.
"""

from __future__ import annotations

import logging
import re
import shlex
import sys
import time
from pathlib import Path

from par import io
from par.errors import UserError

RETRIES, BACKOFF = 3, 2.0  # network errors: up to 3 more tries, after 2, 4, 8 s
HEX = re.compile(r"^[0-9a-f]{64}$")


def _digest(text: str, where: str) -> str:
    digest = text.strip().lower().removeprefix("sha256:")
    if not HEX.match(digest):
        raise UserError(f"{where}: {text.strip()!r} is not a sha256 digest (64 hex digits)")
    return digest


def pin_path(out: str | Path) -> Path:
    return Path(f"{out}.sha256")


def read_pin(out: str | Path) -> str:
    """The digest pinned in `<out>.sha256` ('' when there is none)."""
    pin = pin_path(out)
    if not pin.is_file():
        return ""
    return _digest((pin.read_text().split() or [""])[0], str(pin))


def _retrieve(url: str, out: Path, known: str | None) -> str:
    """`pooch.retrieve` onto `out` (absent), retrying network errors; the sha256 of what it downloaded."""
    import pooch
    import requests

    http = pooch.HTTPDownloader(progressbar=sys.stderr.isatty(), chunk_size=1 << 20, timeout=60)
    seen = {}

    def download(url, output_file, pooch_):
        http(url, output_file, pooch_)
        seen["sha256"] = io.sha256_file(output_file)  # pooch deletes a mismatching file: keep its digest

    logger, level = pooch.get_logger(), pooch.get_logger().level
    logger.setLevel(logging.WARNING)  # our messages, not pooch's "use this value as known_hash"
    try:
        for attempt in range(RETRIES + 1):
            try:
                pooch.retrieve(url, known_hash=known and f"sha256:{known}", fname=out.name, path=out.parent,
                               downloader=download)
                return seen["sha256"]
            except requests.RequestException as e:
                status = getattr(e.response, "status_code", None) or 0  # a 404 does not get better by waiting:
                transient = status >= 500 or status == 429 or isinstance(e, (  # retry only what may pass
                    requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError))
                if attempt == RETRIES or not transient:
                    o, u, pin = shlex.quote(str(out)), shlex.quote(url), shlex.quote(str(pin_path(out)))
                    raise UserError(
                        f"{url}: download failed ({type(e).__name__}: {e}); check the URL and the network and "
                        f"rerun, or download it by hand and pin it: `curl -L -o {o} {u} && sha256sum {o} > {pin}` "
                        f"(the next run verifies {out} against that pin)") from None
                print(f"{url}: {type(e).__name__}, retrying in {BACKOFF * 2 ** attempt:g} s", file=sys.stderr)
                time.sleep(BACKOFF * 2 ** attempt)
            except ValueError:  # pooch: digest mismatch (it deleted the download)
                if "sha256" not in seen:
                    raise
                return seen["sha256"]
    finally:
        logger.setLevel(level)


def fetch(url: str, out: str | Path, sha256: str = "", allow_unpinned: bool = False) -> str:
    """Download `url` to `out` verified against its digest (see the module docstring); returns the digest."""
    out = Path(out)
    if sha256:
        known, source = _digest(sha256, "--sha256"), "--sha256 (the sha256 setting in config.yaml)"
    else:
        known, source = read_pin(out), f"the pin {pin_path(out)} of an earlier download"
    if not known and not allow_unpinned:
        raise UserError(f"{url}: no sha256 to verify {out} against; set the sha256 setting of this download in "
                        "config.yaml, or pass --allow-unpinned to download it once and pin the digest it has "
                        f"(written to {pin_path(out)})")
    have = io.sha256_file(out) if out.is_file() else None
    if have and known and have != known:
        print(f"{out}: sha256 {have} is not {known} ({source}): removed, downloading it again", file=sys.stderr)
        out.unlink()
    if have and (have == known or not known):  # verified (or, unpinned, a hand download: pinned as it is)
        digest = have
    else:
        digest = _retrieve(url, out, known or None)
        if out.is_file():
            io.default_mode(out)  # pooch downloads into a 0600 temp file: give it the umask's permissions
        if known and digest != known:
            fix = (f"delete {pin_path(out)} and rerun with --allow-unpinned to pin the new one" if not sha256 else
                   "set its new digest as the sha256 setting of this download in config.yaml")
            raise UserError(f"{url}: sha256 mismatch: expected {known} ({source}), downloaded {digest}; nothing "
                            f"was written to {out}. Rerun if the download was corrupted; if the file was "
                            f"re-released on purpose, {fix}")
    line = f"{digest}  {out.name}\n"
    if not pin_path(out).is_file() or pin_path(out).read_text() != line:
        io.write_text(pin_path(out), line)
    if not known:
        print(f"{out}: unpinned, sha256 {digest} (pinned in {pin_path(out)}); set it as the sha256 setting of "
              "this download in config.yaml", file=sys.stderr)
    return digest


def cmd_fetch(args) -> int:
    print(fetch(args.url, args.out, args.sha256, args.allow_unpinned))
    return 0


def register(sub):
    p = sub.add_parser("fetch", help="download a released file with checksum verification (paper preset)")
    p.add_argument("--url", required=True, help="URL of the released file")
    p.add_argument("--out", required=True, help="where to write it (atomically; <out>.sha256 pins the digest)")
    p.add_argument("--sha256", default="", help="expected digest (empty: the one pinned in <out>.sha256)")
    p.add_argument("--allow-unpinned", action="store_true",
                   help="without any digest: download anyway, and pin the digest it has in <out>.sha256")
    p.set_defaults(func=cmd_fetch)
