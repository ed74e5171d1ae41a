"""The single `par` command line. Every Snakemake rule calls one of these subcommands.

Each command module exposes ``register(subparsers)``, which adds its parser(s) and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit status.
Heavy imports stay inside those callables so `par --help` is quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path

from par.errors import UserError

COMMAND_MODULES = [
    "par.golden",  # check-golden
    "par.data",  # tokenize, make-tinyset
    "par.bench",  # bench sample
    "par.demo",  # demo
    "par.train",  # train
    "par.sample",  # sample
    "par.vqtrain",  # train-vq
    "par.reference",  # make-reference
    "par.tables",  # tables
    "par.report",  # report
    "par.plan",  # plan
    "par.fetch",  # fetch
    "par.metrics",  # evaluate
    "par.entropy",  # entropy map | increase | features | figures
]


# -- config dataclasses as flags (train, sample, train-vq share this) ---------------------------------


def add_config_arguments(p, cls):
    """One --flag per dataclass field (booleans take true/false)."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None, metavar="BOOL")
        else:
            typ = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            p.add_argument(flag, type=typ, default=None)


def config_from_args(args, cls):
    d = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.exists():
            raise UserError(f"--config {path}: file not found")
        d = json.loads(path.read_text()) if path.suffix == ".json" else __import__("yaml").safe_load(path.read_text())
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            d[f.name] = v
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(d) - names)
    if bad:
        raise UserError(f"{getattr(args, 'config', None) or 'command line'}: unknown field(s) {bad}; valid: {sorted(names)}")
    cfg = cls(**d)
    for req in cls.REQUIRED:
        if not getattr(cfg, req):
            raise UserError(f"--{req} is required (or set '{req}' in --config)")
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="par", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"par {args.command}: error: {e}", file=sys.stderr)
        return 2
