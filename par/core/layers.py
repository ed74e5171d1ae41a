"""Layers the PAR / LlamaGen network (`model.py`) and ARPG's (`arpg.py`) share: 2D/3D rotary position embedding,
RMSNorm, the SwiGLU feed-forward and the `Backbone` base (float32 RoPE table, LlamaGen's initialisation)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from par.errors import UserError


def rope_axis_freqs(num: int, base: float) -> torch.Tensor:
    """`num` frequencies base^(-k/num), computed like the reference (float32)."""
    return 1.0 / (base ** (torch.arange(0, 2 * num, 2)[:num].float() / (2 * num)))


def rope_cell_table(grid: tuple[int, ...], head_dim: int, base: float) -> torch.Tensor:
    """(num_cells, head_dim/2, 2) (cos, sin) per raster cell.

    2D (reference): head_dim/4 row angles then head_dim/4 column angles. 3D (video): the head_dim/2
    angle slots are split frame | row | col, rows and columns getting ⌊head_dim/6⌋ each.
    """
    half = head_dim // 2
    if len(grid) == 2:
        if half % 2:
            raise UserError(f"head_dim={head_dim}: 2D RoPE needs head_dim divisible by 4")
        splits = [half // 2, half // 2]
    else:
        hw = half // 3
        splits = [half - 2 * hw, hw, hw]
    coords = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij"), -1).reshape(-1, len(grid))
    angles = torch.cat([torch.outer(coords[:, a].float(), rope_axis_freqs(k, base)) for a, k in enumerate(splits)], -1)
    return torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)


def apply_rotary_emb(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, hd); freqs (T, hd/2, 2), or (B, T, hd/2, 2) per sample. Adjacent channel pairs (2m, 2m+1),
    float32 math."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    f = freqs.reshape(-1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack(
        [xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1], xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], -1
    )
    return out.flatten(3).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout_p)

    def forward(self, x):
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Backbone(nn.Module):
    """What the PAR / LlamaGen network and ARPG's share: a float32 RoPE table and LlamaGen's initialisation."""

    def _apply(self, fn, recurse=True):
        # The reference keeps the RoPE table as a plain float32 attribute, so `model.to(torch.bfloat16)` leaves
        # it in float32 (bf16 cos/sin would rotate q/k by up to ~0.4 % off). It follows the device, never the dtype.
        table = self.freqs_cis
        super()._apply(fn, recurse)
        if not table.is_meta:  # from the meta device (`to_empty`) the table is rebuilt by `register_layout_buffers`
            self.freqs_cis = table.to(self.freqs_cis.device)
        return self

    def init_weights(self, head: nn.Linear) -> None:
        """N(0, initializer_range) for every linear and embedding; the head zero, as both references do."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
        nn.init.zeros_(head.weight)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
