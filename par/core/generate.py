"""KV-cached parallel decoding (paper Fig. 4).

One loop serves every order: it walks `Layout.calls`, the blocks of sequence positions of each forward
call. For PAR with n tokens per step that is

  prefill  [cls]                                   → z_0
  n−1 sequential calls, feeding z_0 … z_{n-2}      → z_1 … z_{n-1}
  transition call [z_{n-1}, spe_0 … spe_{n-2}]     → z_n … z_{2n-1}   (one token per region)
  parallel calls, feeding the n tokens just drawn  → the next n tokens

1 + (n−1) + (N−n)/n calls in all (147 for n=4, 51 for n=16 at 24×24). The raster baseline is the
same loop with one position per call. With classifier-free guidance the batch is doubled
([labels; null class], identical image tokens) and the n distributions of a call are sampled
independently from `uncond + s·(cond − uncond)` (or from `cond` alone past the reference's `cfg_interval`).
"""

from __future__ import annotations

import torch

from par.config import SamplingSettings
from par.core.model import Transformer
from par.core.sampling import sample_tokens


def guided_call(layout, c: int, cfg_interval: int) -> bool:
    """Whether forward call c uses guidance under the reference's `cfg_interval` (spec §7; −1 = always).

    The prefill is always guided. The reference counts the single-token calls after it 0, 1, 2, … and the
    parallel calls 0, n, 2n, … (a counter that restarts at the transition call), and falls back to the
    conditional logits once the counter exceeds the interval."""
    if cfg_interval < 0 or c == 0:
        return True
    b0, n = layout.first_block, layout.n
    counter = c - 1 if (n == 1 or c < b0) else (c - b0) * n
    return counter <= cfg_interval


def compile_decode_step(model: Transformer):
    """`model.decode_step` compiled for the static KV cache: one graph per call width (1, n), no graph
    breaks, CUDA graphs on GPU. Pass it as `step_fn`."""
    mode = "reduce-overhead" if next(model.parameters()).is_cuda else "default"
    return torch.compile(model.decode_step, mode=mode, dynamic=False, fullgraph=True)


@torch.no_grad()
def generate(
    model: Transformer,
    labels: torch.Tensor,
    sampling: SamplingSettings = SamplingSettings(),
    generator: torch.Generator | None = None,
    return_logits: bool = False,
    step_fn=None,
    static_cache: bool | None = None,
):
    """Sample images' token grids for class `labels` (B,). Returns tokens (B, N) in **raster** order
    (ready for the VQ decoder); with `return_logits`, also a dict of per-position logits (generation
    order): `guided`, `cond` and (with CFG) `uncond`, each (B, N, V).

    `step_fn` replaces `model.decode_step` (e.g. a torch.compile'd version with the same signature).
    `static_cache` (see `Transformer.setup_caches`) defaults to fixed shapes on CUDA or with a `step_fn`.
    An ARPG model is sampled by its own decoder (`par.core.arpg.generate`, `sampling.arpg_*`).
    """
    if model.config.order == "arpg":
        from par.core import arpg

        out = arpg.generate(model, labels, sampling, generator, return_logits=return_logits)
        return out if not return_logits else (out[0], {k: torch.cat(out[1][k], 1) for k in ("guided", "cond", "uncond")})
    was_training = model.training
    model.eval()
    B, device = labels.shape[0], labels.device
    cfg = sampling.cfg_scale > 1.0
    null = torch.full_like(labels, model.config.num_classes)
    cond_labels = torch.cat([labels, null]) if cfg else labels
    rows = cond_labels.shape[0]
    N = model.num_tokens
    tokens = torch.zeros(rows, N, dtype=torch.long, device=device)  # generation order, both CFG halves
    if static_cache is None:
        static_cache = device.type == "cuda" or step_fn is not None
    model.setup_caches(rows, static=static_cache)
    step = step_fn or model.decode_step
    kept = {"guided": [], "cond": [], "uncond": []} if return_logits else None
    try:
        layout = model.order.layout
        for c, (start, end) in enumerate(layout.calls):
            pos = torch.arange(start, end, device=device)
            logits = step(tokens, cond_labels, pos)
            if cfg:
                cond, uncond = logits.split(B)
                if guided_call(layout, c, sampling.cfg_interval):
                    guided = uncond + sampling.cfg_scale * (cond - uncond)
                else:
                    guided = cond
            else:
                cond, uncond, guided = logits, None, logits
            z = sample_tokens(guided, sampling, generator)
            tokens[:, start:end] = z.repeat(rows // B, 1)
            if kept is not None:
                kept["guided"].append(guided)
                kept["cond"].append(cond)
                if cfg:
                    kept["uncond"].append(uncond)
    finally:
        model.clear_caches()
        model.train(was_training)
    out = model.order.to_raster(tokens[:B])
    if kept is None:
        return out
    return out, {k: torch.cat(v, 1) for k, v in kept.items() if v}
