"""One golden check and the comparisons that make it: `par check-golden` prints "N passed, M failed" of these.
Tolerances are the golden READMEs': logits / hidden states atol 1e-4, loss 1e-5, RoPE 1e-6; discrete values exact."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ATOL_LOGITS, ATOL_LOSS, ATOL_ROPE = 1e-4, 1e-5, 1e-6


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def _close(name, got, want, atol) -> Check:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return Check(name, False, f"shape {got.shape} != {want.shape}")
    err = float(np.abs(got - want).max()) if got.size else 0.0
    return Check(name, err <= atol, f"max abs err {err:.2e} (atol {atol:.0e})")


def _equal(name, got, want) -> Check:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return Check(name, False, f"shape {got.shape} != {want.shape}")
    bad = int((got != want).sum())
    return Check(name, bad == 0, "identical" if not bad else f"{bad} of {got.size} differ")
