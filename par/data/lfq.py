"""Lookup-free quantization (LFQ, MAGVIT-v2: Yu et al. 2023, arXiv 2310.05737 §3.1).

A latent vector z ∈ R^b is quantized per channel to q = sign(z) ∈ {−1, +1}^b (z = 0 counts as −1); its token id is
Σ_i bit_i · 2^i with bit_i = [z_i > 0] (channel 0 = least significant bit), so the vocabulary is 2^b
(b = 16 → 65,536, the PAR paper's video tokenizer; MAGVIT-v2 uses 18). There is no codebook to learn or look up:
`codes_to_latent(ids)` writes the bits back as ±1. Gradients pass the sign by the straight-through estimator
(q = z + sg(q − z)), and a commitment loss β·‖z − sg(q)‖² keeps z near its code.

Entropy penalty (MAGVIT-v2 eq. 4): L = w · (w_s · E_n[H(p_n)] − w_b · H(E_n[p_n])), where p_n is the soft assignment
of latent n to the 2^b codes, p_n(c) ∝ exp(−‖z_n − c‖² / τ). The first term (per-sample entropy, minimised) makes
each assignment confident; the second (batch or codebook entropy, maximised) spreads the batch over the vocabulary.

* Per-sample entropy: exact for every b. Since ‖c‖² = b for every code, p_n(c) ∝ exp(2 z_n·c / τ) factorises over
  the bits: p_n = ∏_i Bernoulli(σ(4 z_{n,i} / τ)), and H(p_n) = Σ_i H_bin(σ(4 z_{n,i} / τ)).
* Codebook entropy: the mean of factorised distributions is not factorised, so H(E_n[p_n]) needs all 2^b codes:
  computed exactly (an (N, 2^b) table) when b ≤ `exact_bits`. Above that the bits are split into
  G = ⌈b / exact_bits⌉ contiguous, near-equal sub-groups and the sum of the sub-groups' exact codebook entropies is
  used, Σ_g H(E_n[p_n,g]) (Open-MAGVIT2's factorised entropy: 18 bits as 2 × 9; here 16 bits → 2 × 8 by default).
  By subadditivity this is an upper bound of the joint entropy, equal to it when the sub-groups are independent
  over the batch; it rewards each sub-group's marginal for being uniform, not the correlations between groups.
Entropies are in nats; a uniform batch over the vocabulary has codebook entropy b · ln 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def bit_groups(bits: int, exact_bits: int) -> list[tuple[int, int]]:
    """[(start, stop)] contiguous bit ranges: one when bits ≤ exact_bits, else ⌈bits/exact_bits⌉ near-equal ones."""
    if bits < 1 or exact_bits < 1:
        raise ValueError(f"bits={bits}, exact_bits={exact_bits}: both must be ≥ 1")
    g = math.ceil(bits / exact_bits)
    edges = [round(i * bits / g) for i in range(g + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _bit_log_probs(z, temperature):
    """log p(bit = +1), log p(bit = −1) for every channel: p(+1) = σ(4 z / τ) (see module doc)."""
    a = 4.0 * z / temperature
    return F.logsigmoid(a), F.logsigmoid(-a)


def per_sample_entropy(z, temperature: float = 0.01):
    """Mean over rows of H(p_n) in nats, z (N, b); exact for any b (the soft assignment factorises over bits)."""
    lp, lq = _bit_log_probs(z, temperature)
    p = lp.exp()
    return -(p * lp + (1 - p) * lq).sum(-1).mean()


def _code_bits(g: int, device) -> torch.Tensor:
    """(2^g, g) float 0/1: row c holds the bits of code c, least significant first."""
    c = torch.arange(2 ** g, device=device)
    return ((c[:, None] >> torch.arange(g, device=device)) & 1).float()


def codebook_entropy(z, temperature: float = 0.01, exact_bits: int = 10):
    """H(E_n[p_n]) in nats over the rows of z (N, b): exact over 2^b codes when b ≤ exact_bits, else the sum over
    the `bit_groups` of each sub-group's exact codebook entropy (an upper bound; see module doc)."""
    lp, lq = _bit_log_probs(z, temperature)
    n = z.shape[0]
    total = z.new_zeros(())
    for a, b in bit_groups(z.shape[-1], exact_bits):
        m = _code_bits(b - a, z.device)
        log_p = lp[:, a:b] @ m.t() + lq[:, a:b] @ (1 - m).t()  # (N, 2^g) log p_n(c)
        log_avg = torch.logsumexp(log_p, dim=0) - math.log(n)  # log E_n[p_n(c)], stable
        total = total - (log_avg.exp() * log_avg).sum()
    return total


class LFQ(nn.Module):
    """Lookup-free quantizer over channel dim 1 of z (B, b, ...): ±1 codes, ids, commitment and entropy losses."""

    def __init__(self, bits: int, commit_beta: float = 0.25, entropy_weight: float = 0.1,
                 sample_weight: float = 1.0, batch_weight: float = 1.0, temperature: float = 0.01,
                 exact_bits: int = 10):
        super().__init__()
        if not 1 <= bits <= 62:
            raise ValueError(f"LFQ bits={bits}: need 1..62 (ids are int64)")
        self.bits, self.commit_beta, self.entropy_weight = bits, commit_beta, entropy_weight
        self.sample_weight, self.batch_weight = sample_weight, batch_weight
        self.temperature, self.exact_bits = temperature, exact_bits
        self.register_buffer("powers", 2 ** torch.arange(bits, dtype=torch.int64), persistent=False)

    @property
    def vocab_size(self) -> int:
        return 2 ** self.bits

    def ids(self, z):
        """z (B, b, ...) -> int64 ids (B, ...): Σ_i [z_i > 0] · 2^i."""
        return ((z.movedim(1, -1) > 0).long() * self.powers).sum(-1)

    def codes_to_latent(self, ids):
        """int ids (B, ...) -> float ±1 latent (B, b, ...); the inverse of `ids` on quantized latents."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids outside 0..{self.vocab_size - 1}")
        bits = (ids.long()[..., None] >> torch.arange(self.bits, device=ids.device)) & 1
        return (bits.float() * 2 - 1).movedim(-1, 1).contiguous()

    def entropy_terms(self, z):
        """(per-sample entropy, codebook entropy) in nats over the latents of z (B, b, ...)."""
        flat = z.movedim(1, -1).reshape(-1, self.bits).float()
        return (per_sample_entropy(flat, self.temperature),
                codebook_entropy(flat, self.temperature, self.exact_bits))

    def forward(self, z):
        """z (B, b, ...) -> (q with straight-through gradients, ids (B, ...), losses dict).

        losses: commit (β-weighted), sample_entropy and codebook_entropy (nats, unweighted, for the log) and
        entropy = w · (w_s · sample − w_b · codebook), the term that enters the training loss."""
        if z.shape[1] != self.bits:
            raise ValueError(f"LFQ: latent has {z.shape[1]} channels, expected {self.bits} bits")
        q = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
        losses = {"commit": self.commit_beta * F.mse_loss(z, q.detach())}
        if self.entropy_weight:
            sample, book = self.entropy_terms(z)
            losses["entropy"] = self.entropy_weight * (self.sample_weight * sample - self.batch_weight * book)
            losses["sample_entropy"], losses["codebook_entropy"] = sample.detach(), book.detach()
        return z + (q - z).detach(), self.ids(z), losses
