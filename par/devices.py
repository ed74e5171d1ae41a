"""Where a stage computes: one resolution of every command's `device` setting.

On a cluster each GPU stage (train, tokenize, train-vq, sample, nll, evaluate, fvd) runs as a job with its GPU(s);
`auto` then means this process's GPU (cuda:LOCAL_RANK), so a stage never silently stays on the CPU beside an idle
GPU, and an explicit `cuda` on a machine without one is one clear line, not a traceback deep in torch.
"""

from __future__ import annotations

import os

from par.errors import UserError

HELP = "auto (this job's GPU, cuda:LOCAL_RANK, when CUDA is visible, else the CPU), cpu, cuda or cuda:N"


def resolve(device: str | None = "auto"):
    """The torch.device of a `device` setting ("", None and "auto" alike)."""
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: expected {HELP}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is visible here; use --device cpu or auto")
    return dev
