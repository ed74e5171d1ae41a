"""Token orders and step schedules (paper §3.2).

An `Order` couples two independent things:

* a **permutation** of the code grid: `perm[t]` is the raster index of the token generated at order
  position `t` (raster: identity; PAR: "the same relative position in every region" as one group);
* a **sequence layout** (`Layout`): where the class token, the image tokens and the n−1 learnable
  transition ("spe") tokens sit in the transformer input, which positions each forward call of
  generation consumes, and which keys each query may see.

Layout for n tokens per step (z_t = token at order position t, N tokens; training input, §1.3):

  initial sequential (PAR):   [cls, z_0 … z_{n-1}, spe_0 … spe_{n-2}, z_n … z_{N-2}]     S = N + n − 1
  no initial sequential:      [cls, spe_0 … spe_{n-2}, z_0 … z_{N-n-1}]                  S = N
  n = 1 (LlamaGen):           [cls, z_0 … z_{N-2}]                                       S = N

Sequence position p always predicts z_p (p < N). From the first parallel block on, the input at
position p is z_{p-n}: the same region one step earlier, so each slot of a group is the next-token
predictor of one region. Generation calls are the blocks [start, end) of positions; a query may
see every key before the end of its own block (bidirectional within a group, causal across
groups), or only keys ≤ itself for the Table 3(c) "causal in group" ablation.

Steps (forward calls) at 24×24: raster 576, PAR n=4 147, n=16 51, no initial sequential n=4 144.
Video grids (T, L, L) use spatial-only regions: a group holds the same (t, row, col) offset of
every spatial region, so 5×16×16 gives 323 steps for n=4 and 95 for n=16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from par.errors import UserError

# Kinds of input at a sequence position.
CLS, TOKEN, SPE = 0, 1, 2

ORDER_KINDS = ("raster", "par")


def _region_side(grid: tuple[int, ...], n: int) -> tuple[int, int]:
    """Regions per side M = √n and region side R = L / M, validated."""
    m = math.isqrt(n)
    if n < 1 or m * m != n:
        raise UserError(f"n={n}: tokens per step must be a perfect square (1, 4, 9, 16, …)")
    side = grid[-1]
    if grid[-2] != side:
        raise UserError(f"grid {grid}: PAR regions need a square spatial grid (H == W)")
    if side % m:
        raise UserError(f"grid side {side} is not divisible by √n = {m}; pick n with √n dividing {side}")
    return m, side // m


def par_permutation(grid: tuple[int, ...], n: int) -> np.ndarray:
    """PAR order: `perm[t]` = raster index of the cell at PAR position t.

    2D: cell (r, c) with r = a·R + b, c = d·R + e (region (a, d), offset (b, e)) sits at
    t = (b·R + e)·n + (a·M + d) — outer loop over the offset inside a region, inner loop over regions.
    Video (T, L, L): the offset inside a region also runs over frames, g = (f·R + b)·R + e.
    """
    m, r = _region_side(grid, n)
    frames = grid[0] if len(grid) == 3 else 1
    raster = np.arange(frames * r * m * r * m).reshape(frames, m, r, m, r)  # (f, a, b, d, e)
    return raster.transpose(0, 2, 4, 1, 3).reshape(-1)  # (f, b, e, a, d) → flat


@dataclass(frozen=True)
class Layout:
    """Transformer input layout and generation schedule for N tokens, n per step."""

    num_tokens: int
    n: int = 1
    initial_sequential: bool = True
    group_attention: str = "full"  # "full" (PAR) or "causal" (Table 3(c) ablation)

    def __post_init__(self):
        N, n = self.num_tokens, self.n
        if n < 1 or N % n:
            raise UserError(f"num_tokens={N} must be a multiple of n={n}")
        if self.group_attention not in ("full", "causal"):
            raise UserError(f"group_attention={self.group_attention!r}: use 'full' or 'causal'")

    @property
    def first_block(self) -> int:
        """First sequence position of the parallel part (positions before it are causal singletons)."""
        return self.n if (self.initial_sequential and self.n > 1) else 0

    @property
    def seq_len(self) -> int:
        """Training input length S."""
        return self.num_tokens + self.n - 1 if self.first_block else self.num_tokens

    @cached_property
    def sources(self) -> tuple[np.ndarray, np.ndarray]:
        """(kind, index) of the input at every sequence position: CLS, TOKEN z_index, or SPE spe_index."""
        n, S, b0 = self.n, self.seq_len, self.first_block
        kind = np.full(S, TOKEN)
        index = np.zeros(S, dtype=np.int64)
        kind[0] = CLS
        if b0:  # [cls, z_0 … z_{n-1}, spe…, z_n …]
            index[1 : n + 1] = np.arange(n)
            kind[n + 1 : 2 * n] = SPE
            index[n + 1 : 2 * n] = np.arange(n - 1)
            index[2 * n :] = np.arange(2 * n, S) - n
        else:  # [cls, spe…, z_0 …]
            kind[1:n] = SPE
            index[1:n] = np.arange(n - 1)
            index[n:] = np.arange(n, S) - n
        index[kind == CLS] = 0
        return kind, index

    @cached_property
    def calls(self) -> tuple[tuple[int, int], ...]:
        """Sequence-position ranges [start, end) of each forward call of generation."""
        b0, n, N = self.first_block, self.n, self.num_tokens
        calls = [(p, p + 1) for p in range(b0)] + [(p, p + n) for p in range(b0, N, n)]
        kind, index = self.sources
        for s, e in calls:  # every input a call consumes was produced by an earlier call
            assert np.all(index[s:e][kind[s:e] == TOKEN] < s), (s, e)
        return tuple(calls)

    @property
    def num_calls(self) -> int:
        return len(self.calls)

    @cached_property
    def block_end(self) -> np.ndarray:
        """Per query position: keys with index < block_end[p] are visible (the §1.4 group mask)."""
        S = self.seq_len
        if self.group_attention == "causal":
            return np.arange(1, S + 1)
        end = np.empty(S, dtype=np.int64)
        end[: self.first_block] = np.arange(1, self.first_block + 1)
        starts = np.arange(self.first_block, S)
        end[self.first_block :] = np.minimum(self.first_block + ((starts - self.first_block) // self.n + 1) * self.n, S)
        return end

    def attention_mask(self) -> np.ndarray:
        """(S, S) boolean, True = may attend; rows are queries."""
        return np.arange(self.seq_len)[None, :] < self.block_end[:, None]

    @cached_property
    def step_of_token(self) -> np.ndarray:
        """Forward-call index that produces z_t, for every order position t."""
        step = np.empty(self.num_tokens, dtype=np.int64)
        for c, (s, e) in enumerate(self.calls):
            step[s:e] = c
        return step


@dataclass(frozen=True)
class Order:
    """A generation order on a grid: permutation + layout. Tokens are stored in raster order on disk."""

    grid: tuple[int, ...]  # (H, W) or (T, H, W) token grid
    kind: str = "par"  # "raster" or "par" (distant regions)
    n: int = 1  # tokens per step
    initial_sequential: bool = True
    group_attention: str = "full"
    regions: int = 0  # regions of the "par" permutation; 0 → n. regions=4, n=1 is Table 3(d)'s "distant one"

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if len(self.grid) not in (2, 3):
            raise UserError(f"grid {self.grid}: expected (H, W) or (T, H, W)")
        if self.kind not in ORDER_KINDS:
            raise UserError(f"order kind {self.kind!r}: use one of {ORDER_KINDS}")
        self.perm  # validate n against the grid early

    @property
    def num_tokens(self) -> int:
        return int(np.prod(self.grid))

    @cached_property
    def perm(self) -> np.ndarray:
        """perm[t] = raster index at order position t."""
        regions = self.regions or self.n
        if self.kind == "par" and regions > 1:
            return par_permutation(self.grid, regions)
        return np.arange(self.num_tokens)

    @cached_property
    def inverse(self) -> np.ndarray:
        """inverse[raster index] = order position."""
        inv = np.empty_like(self.perm)
        inv[self.perm] = np.arange(self.num_tokens)
        return inv

    @cached_property
    def layout(self) -> Layout:
        return Layout(self.num_tokens, self.n, self.initial_sequential, self.group_attention)

    @property
    def num_calls(self) -> int:
        """Number of forward calls to generate one image (with or without CFG)."""
        return self.layout.num_calls

    @property
    def name(self) -> str:
        parts = [self.kind, f"n{self.n}"]
        if self.kind == "par" and (self.regions or self.n) != self.n:
            parts.append(f"regions{self.regions}")
        if not self.initial_sequential and self.n > 1:
            parts.append("noinit")
        if self.group_attention == "causal" and self.n > 1:
            parts.append("causalgroup")
        return "-".join(parts)

    def to_order(self, raster_tokens):
        """(..., N) raster-order tokens → order positions (works for numpy arrays and torch tensors)."""
        return raster_tokens[..., self.perm]

    def to_raster(self, order_tokens):
        """(..., N) tokens in order positions → raster order."""
        return order_tokens[..., self.inverse]

    def step_grid(self) -> np.ndarray:
        """Grid (raster layout) of the forward-call index producing each cell (as drawn in Fig. 11)."""
        return self.to_raster(self.layout.step_of_token).reshape(self.grid)

    def cell_coords(self) -> np.ndarray:
        """(N, len(grid)) integer coordinates of the cell at each order position."""
        return np.stack(np.unravel_index(self.perm, self.grid), axis=-1)


def num_forward_calls(grid: tuple[int, ...], kind: str = "par", n: int = 1, initial_sequential: bool = True) -> int:
    """Forward calls needed to generate one image in the given order."""
    return Order(grid, kind, n, initial_sequential).num_calls


# ---------------------------------------------------------------------------------------------
# ARPG's random orders (spec §12): the peer row of the tables
# ---------------------------------------------------------------------------------------------

ARPG_SCHEDULES = ("arccos", "cosine")


def arpg_tokens_per_step(num_tokens: int, steps: int, schedule: str = "arccos") -> list[int]:
    """Tokens decoded at each of ARPG's `steps` forward calls (spec §12.3).

    The mask ratio of step s is arccos((s+1)/S)/(π/2) or cos(π/2·(s+1)/S); the step leaves
    max(1, min(N − done − 1, int(N·r))) tokens masked and the last step takes the rest. Python floats
    (float64) on purpose: some steps sit on an integer boundary (cosine, S = 36: N·cos(π/3) = N/2 + 1e-14),
    which float32 rounds to the other side, moving a token between steps (golden README, Q9)."""
    if schedule not in ARPG_SCHEDULES:
        raise UserError(f"ARPG schedule {schedule!r}: use one of {ARPG_SCHEDULES}")
    if not 1 <= steps <= num_tokens:
        raise UserError(f"ARPG steps={steps}: must lie in 1 … {num_tokens} (the tokens per image)")
    counts, done = [], 0
    for s in range(steps):
        x = (s + 1) / steps
        ratio = math.acos(x) / (math.pi / 2) if schedule == "arccos" else math.cos(math.pi / 2 * x)
        k = num_tokens - done if s == steps - 1 else num_tokens - done - max(1, min(num_tokens - done - 1,
                                                                                    int(num_tokens * ratio)))
        counts.append(k)
        done += k
    return counts


@dataclass(frozen=True)
class RandomOrder:
    """ARPG's orders: a fresh random permutation of the grid per sample in training and per `generate` call
    (shared by the batch, Q4) in sampling. The model permutes inside its forward, so the data it is handed
    stays in raster order: `to_order` and `to_raster` are the identity."""

    grid: tuple[int, ...]
    kind: str = "arpg"
    n: int = 1

    @property
    def num_tokens(self) -> int:
        return int(np.prod(self.grid))

    @property
    def name(self) -> str:
        return "arpg"

    def to_order(self, raster_tokens):
        return raster_tokens

    def to_raster(self, order_tokens):
        return order_tokens
