"""§8, step 0: token features. Each token is represented by the L2-normalised VQ codebook row of its code; the codes
come from `par.data.shards.read_crop_codes` (one crop of a `par tokenize` folder or a codes file)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from par.errors import UserError
from par.io import torch_load

CODEBOOK_KEY = "quantize.embedding.weight"


def _read_codebook(path: Path) -> np.ndarray:
    """L2-normalised codebook (K, d) of a VQ checkpoint ({'model': state_dict} or a bare state dict)."""
    import torch

    if not path.is_file():
        raise UserError(f"{path}: no such file; pass the VQ tokenizer checkpoint with --codebook")
    try:
        obj = torch_load(path)
    except UserError:  # torch_load's own advice (re-save as a state dict) does not fit a wrong --codebook
        raise UserError(f"{path}: cannot load as a torch checkpoint; pass the VQ tokenizer's .pt file") from None
    sd = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
    if not isinstance(sd, dict) or CODEBOOK_KEY not in sd:
        raise UserError(f"{path}: no {CODEBOOK_KEY!r} in the state dict; pass the VQ tokenizer checkpoint")
    w = sd[CODEBOOK_KEY]
    if w.ndim != 2:
        raise UserError(f"{path}: {CODEBOOK_KEY!r} must be (K, d), got {tuple(w.shape)}")
    return torch.nn.functional.normalize(w.double(), dim=1).numpy()


def token_features(codes: np.ndarray, book: np.ndarray, source: Path) -> np.ndarray:
    """(num_images, H, W, d) float32 features of (num_images, H·W) codes on a square grid; `source` names them."""
    if codes.min() < 0 or codes.max() >= len(book):
        raise UserError(f"{source}: codes span {codes.min()}..{codes.max()} but the codebook has {len(book)} rows; "
                        "pass the tokenizer that produced them")
    side = math.isqrt(codes.shape[1])
    if side * side != codes.shape[1]:
        raise UserError(f"{source}: {codes.shape[1]} codes per image is not a square grid")
    return book[codes].reshape(len(codes), side, side, book.shape[1]).astype(np.float32)
