"""Drawing tokens from logits: temperature, top-k / nucleus filtering and one categorical draw per position
(shared by PAR's decoder, `generate.py`, and ARPG's, `arpg.py`)."""

from __future__ import annotations

import torch

from par.config import SamplingSettings


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering over the last dim; removed entries become -inf."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the first token that crosses top_p
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, idx, remove), float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, sc: SamplingSettings, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, k, V) float32 → (B, k) token ids, each position drawn independently."""
    if sc.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits / max(sc.temperature, 1e-5), sc.top_k, sc.top_p).softmax(-1)
    return draw_categorical(probs, generator)


def draw_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw from each row of `probs` (..., V) by inverting its CDF with a single uniform.

    `torch.multinomial(p, 1)` draws V exponentials per row instead; with n·2 rows of a 16k vocabulary per
    parallel step that random-number generation alone grows a step's cost n-fold. Float64 CDF, and the
    target is kept strictly below the total so a zero-probability (filtered) token is never returned."""
    cdf = probs.double().cumsum(-1)
    total = cdf[..., -1:]
    u = torch.rand(total.shape, dtype=torch.float64, device=probs.device, generator=generator)
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)
