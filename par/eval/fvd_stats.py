"""`par fvd-stats` (its code is in par/eval/fvd.py): par/cli.py imports one module per command for its `register`."""
from par.eval.fvd import register_stats as register  # noqa: F401
