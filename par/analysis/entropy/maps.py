"""§8, step 2: what the estimator is asked. Fig. 9's maps, H(v_i | v_ref) for every cell i, and Fig. 11's entropy
increase of a parallel order over its sequential counterpart, H(v_k | V_par(k)) − H(v_k | V_seq(k)).

Orders (Fig. 11) come from par.core.order: ``perm[t]`` is the raster index of the token generated at
position t and ``step_of_token[t]`` its generation step (raster and PAR both generate their first n
tokens one per step, then n consecutive positions per step). V_seq(k) = every token before k in
the order; V_par(k) = every token generated in a strictly earlier step. Both are prefixes of the
order, which the linear estimator exploits: one Cholesky factor of the training Gram matrix yields
every prefix regression.

Fig. 9's maps come with their baseline: H(v_i | v_ref) − H(v_i), H(v_i) estimated on the same held-out images
by the same estimator fed an uninformative reference (another image's), which shows the effect of
conditioning that the raw scale hides.
"""

from __future__ import annotations

import numpy as np

from par.analysis.entropy.estimate import (
    DEFAULT_ALPHA, DEFAULT_TRAIN_FRAC, _flat_cell, _grouped_residuals, _prefix_ridge_residuals, _prepare,
    _residual_fn, gaussian_entropy, gaussian_entropy_with_influence,
)
from par.core.order import Order


def entropy_map(
    features, ref, estimator="linear", *,
    alpha: float = DEFAULT_ALPHA, train_frac: float = DEFAULT_TRAIN_FRAC, seed: int = 0,
) -> np.ndarray:
    """(H, W) map of H(v_i | v_ref) in nats (Fig. 9), NaN at the reference cell."""
    return _maps(features, ref, estimator, alpha, train_frac, seed, baseline=False)["entropy"]


def conditioning_maps(
    features, ref, estimator="linear", *,
    alpha: float = DEFAULT_ALPHA, train_frac: float = DEFAULT_TRAIN_FRAC, seed: int = 0,
) -> dict[str, np.ndarray]:
    """Fig. 9 with its baseline, (H, W) maps in nats, NaN at the reference cell:

    - ``entropy`` = H(v_i | v_ref);
    - ``unconditional`` = H(v_i) estimated by the same estimator from an uninformative reference: the
      reference token of another image (the images permuted within each split). Its inputs are as many
      as the conditioned fit's, so the cost of fitting them (≈ d²/(2·n_train) nats for the linear
      estimator, often as large as the standard error) cancels in the difference;
    - ``difference`` = entropy − unconditional, the effect of conditioning on v_ref (≤ 0 in truth);
    - ``marginal``: the plain H(v_i) of the held-out tokens (no predictor; also at the reference cell).

    ``influence`` and ``unconditional_influence`` (m, H, W) are the per-held-out-image influences of the
    two entropies (see gaussian_entropy_with_influence), ``test_images`` the m held-out image indices."""
    return _maps(features, ref, estimator, alpha, train_frac, seed, baseline=True)


def _maps(features, ref, estimator, alpha: float, train_frac: float, seed: int, baseline: bool) -> dict:
    """The design matrix (the reference token) is shared by all targets, so one fit covers a map."""
    fit = _residual_fn(estimator, alpha, seed)
    Z, tr, te = _prepare(features, train_frac, seed)
    N, H, W, d = np.shape(features)
    j = _flat_cell(ref, H, W)
    others = np.delete(np.arange(H * W), j)
    T = Z.reshape(N, H * W, d)
    X = Z[:, j * d:(j + 1) * d]
    Y = T[:, others].reshape(N, -1)

    def conditional(X):
        R = fit(X[tr], Y[tr], X[te], Y[te]).reshape(len(te), len(others), d)
        ent, infl = np.full(H * W, np.nan), np.full((H * W, len(te)), np.nan)
        ent[others], infl[others] = gaussian_entropy_with_influence(R.transpose(1, 0, 2))
        return ent.reshape(H, W), infl.T.reshape(len(te), H, W)

    ent, infl = conditional(X)
    out = {"entropy": ent, "influence": infl, "test_images": te}
    if baseline:
        rng = np.random.default_rng([seed, 1])
        shuffled = np.empty(N, dtype=int)
        for split in (tr, te):
            shuffled[split] = split[rng.permutation(len(split))]
        base, base_infl = conditional(X[shuffled])
        marginal = gaussian_entropy((T[te] - T[tr].mean(axis=0)).transpose(1, 0, 2))
        out |= {"unconditional": base, "unconditional_influence": base_infl, "difference": ent - base,
                "marginal": marginal.reshape(H, W)}
    return out


def entropy_increase(
    features, order: str = "par", n: int = 4, estimator="linear", *,
    alpha: float = DEFAULT_ALPHA, train_frac: float = DEFAULT_TRAIN_FRAC, seed: int = 0,
) -> dict[str, np.ndarray]:
    """Fig. 11: per cell k, H(v_k | V_par(k)) − H(v_k | V_seq(k)) in nats for the given order.

    Returns (H, W) raster-layout grids: ``increase``, ``seq``, ``par`` (the two entropies) and
    ``steps`` (generation step of each cell, 0-based); ``influence_seq`` and ``influence_par`` (m, H, W),
    the per-held-out-image influences of the two entropies (see gaussian_entropy_with_influence), and
    ``test_images``, the m held-out image indices."""
    fit = _residual_fn(estimator, alpha, seed)
    Z, tr, te = _prepare(features, train_frac, seed)
    _, H, W, d = np.shape(features)
    o = Order((H, W), order, n)
    perm, steps = o.perm, o.layout.step_of_token
    P = H * W
    Zo = Z.reshape(len(Z), P, d)[:, perm].reshape(len(Z), -1)
    starts = np.searchsorted(steps, steps, side="left")  # first position of each token's step
    pairs = sorted({(t, t) for t in range(P)} | {(int(s), t) for t, s in enumerate(starts)})
    if estimator == "linear":
        R = _prefix_ridge_residuals(Zo[tr], Zo[te], d, pairs, alpha)
    else:
        R = _grouped_residuals(Zo[tr], Zo[te], d, pairs, fit)
    h, psi = gaussian_entropy_with_influence(R)
    ent, infl = dict(zip(pairs, h)), dict(zip(pairs, psi))
    seq_pairs = [(t, t) for t in range(P)]
    par_pairs = [(int(s), t) for t, s in enumerate(starts)]
    seq, par = (np.array([ent[p] for p in ps]) for ps in (seq_pairs, par_pairs))
    seq_infl, par_infl = (np.stack([infl[p] for p in ps]) for ps in (seq_pairs, par_pairs))

    def to_grid(x):  # (P, ...) in generation order -> (..., H, W) in raster layout
        g = np.empty_like(x)
        g[perm] = x
        return np.moveaxis(g, 0, -1).reshape(*x.shape[1:], H, W)

    return {
        "increase": to_grid(par - seq), "seq": to_grid(seq), "par": to_grid(par), "steps": to_grid(steps),
        "influence_seq": to_grid(seq_infl), "influence_par": to_grid(par_infl), "test_images": te,
    }
