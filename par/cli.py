"""The single `par` command line. Every Snakemake rule calls one of these subcommands.

Each command module exposes ``register(subparsers)``, which adds its parser(s) and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit status.
Heavy imports stay inside those callables so `par --help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
