"""§8, step 1: the estimator. Every token is represented by a feature v ∈ R^d (the L2-normalised VQ codebook row
of its code, `features.py`). A predictor f_θ of the target v_k from the conditioning tokens is fitted on a training
split of the images; on the held-out split the residuals ε = v_k − f_θ(cond) bound the conditional entropy,

    H(v_k | cond) = H(ε | cond) ≤ H(ε) ≤ ½·log((2πe)^d·|Σ_ε|)   [nats],

with Σ_ε the (mean-centred) sample covariance of the held-out residuals. The bound is tight for a
jointly Gaussian field with the linear predictor, which the tests use as ground truth. An empty
conditioning set gives the plain (unconditional) covariance.

Predictors: ``linear`` = scikit-learn ``Ridge(alpha)`` with an unpenalised intercept, ``mlp`` = a small
torch MLP, or any callable ``f(X_train, Y_train, X_test, Y_test) -> held-out residuals of Y_test``.

All entropies are differential entropies of continuous features, so they can be negative. Each held-out image's
influence on a Gaussian entropy estimate, ψ = ½·(cᵀΣ⁻¹c − d), comes with it: `summary.py` turns it into
delta-method intervals.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import numpy as np

from par.config import EntropySettings, field_metadata as _field_meta
from par.errors import UserError

ESTIMATORS = _field_meta(EntropySettings, "estimator")["choices"]
# Ridge penalty (sklearn's scale: added to the Gram diagonal, which is ~ n_train / d for unit-norm tokens).
# Small is right when images ≫ predictors; with thousands of conditioning dimensions and ~10k images the
# held-out bound is loose from overfitting and a larger --alpha (1e2–1e3) gives tighter entropies.
DEFAULT_ALPHA = EntropySettings().alpha
DEFAULT_TRAIN_FRAC = 0.8
_LOG_2PIE = math.log(2 * math.pi * math.e)


# ------------------------------------------------------------------------------------ estimators


def gaussian_entropy(residuals: np.ndarray) -> np.ndarray:
    """½·log((2πe)^d·|Σ|) in nats, Σ = sample covariance of residuals (..., m, d) over the m axis."""
    return _gaussian(residuals)[0]


def gaussian_entropy_with_influence(residuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gaussian_entropy and, per held-out image i, its influence ψᵢ = ½·(cᵢᵀ Σ⁻¹ cᵢ − d) (c = centred
    residual), shape (..., m): the entropy estimate is ≈ its limit + mean(ψ), so any linear combination
    of entropies that share held-out images has the delta-method variance var(Σ w·ψ) / m."""
    return _gaussian(residuals, influence=True)


def _gaussian(residuals: np.ndarray, influence: bool = False):
    R = np.asarray(residuals, dtype=np.float64)
    lead, (m, d) = R.shape[:-2], R.shape[-2:]
    r = R.reshape(-1, m, d)
    r = r - r.mean(axis=-2, keepdims=True)
    cov = np.swapaxes(r, -1, -2) @ r / (m - 1)
    sign, logdet = np.linalg.slogdet(cov)
    bad = sign <= 0
    if np.any(bad):
        # Only a token that is (almost) a deterministic function of its condition gets here; a relative
        # jitter keeps its entropy finite (and very negative) instead of -inf.
        scale = np.trace(cov[bad], axis1=-2, axis2=-1) / d
        eps = 1e-9 * np.where(scale > 0, scale, 1.0)
        warnings.warn(
            f"{int(bad.sum())} residual covariance(s) singular; added {eps.max():.1e}·I before the log-det",
            RuntimeWarning,
            stacklevel=3,
        )
        cov[bad] += eps[:, None, None] * np.eye(d)
        _, logdet[bad] = np.linalg.slogdet(cov[bad])
    ent = (0.5 * (d * _LOG_2PIE + logdet)).reshape(lead)[()]
    if not influence:
        return ent, None
    quad = np.einsum("kmd,kdm->km", r, np.linalg.solve(cov, np.swapaxes(r, -1, -2)))
    return ent, (0.5 * (quad - d)).reshape(*lead, m)


def _ridge_residuals(Xtr, Ytr, Xte, Yte, *, alpha: float) -> np.ndarray:
    """Held-out residuals of scikit-learn Ridge; one Cholesky solve serves every column of Y."""
    if Xtr.shape[1] == 0:
        return Yte - Ytr.mean(axis=0)
    from sklearn.linear_model import Ridge

    return Yte - Ridge(alpha=alpha, solver="cholesky").fit(Xtr, Ytr).predict(Xte)


def _mlp_residuals(
    Xtr, Ytr, Xte, Yte, *, seed: int, hidden: int = 128, lr: float = 2e-3, batch: int = 512,
    max_steps: int = 3000, eval_every: int = 50, patience: int = 4,
) -> np.ndarray:
    """Held-out residuals of a 2-hidden-layer MLP (multi-output: all columns of Y share the trunk).

    10 % of the training split is kept aside for early stopping, so the test split is never seen.
    """
    if Xtr.shape[1] == 0:
        return Yte - Ytr.mean(axis=0)
    import torch

    def standardise(A, ref):
        mean, std = ref.mean(axis=0), ref.std(axis=0)
        return torch.as_tensor((A - mean) / np.where(std > 1e-8, std, 1.0), dtype=torch.float32)

    y_mean, y_std = Ytr.mean(axis=0), np.where(Ytr.std(axis=0) > 1e-8, Ytr.std(axis=0), 1.0)
    perm = np.random.default_rng(seed).permutation(len(Xtr))
    n_val = max(1, len(Xtr) // 10)
    fit, val = perm[n_val:], perm[:n_val]
    x, y = standardise(Xtr, Xtr), standardise(Ytr, Ytr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden), torch.nn.GELU(),
            torch.nn.Linear(hidden, y.shape[1]),
        )
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        xf, yf, xv, yv = x[fit], y[fit], x[val], y[val]
        best, best_state, stale = math.inf, None, 0
        for step in range(1, max_steps + 1):
            idx = torch.randint(len(xf), (min(batch, len(xf)),))
            loss = torch.nn.functional.mse_loss(net(xf[idx]), yf[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % eval_every == 0:
                with torch.no_grad():
                    v = torch.nn.functional.mse_loss(net(xv), yv).item()
                # Improvements under 0.1 % count as stale: stop on a plateau instead of polishing noise.
                stale = 0 if v < best * (1 - 1e-3) else stale + 1
                if v < best:
                    best, best_state = v, {k: t.clone() for k, t in net.state_dict().items()}
                if stale >= patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        with torch.no_grad():
            pred = net(standardise(Xte, Xtr)).double().numpy()
    return Yte - (pred * y_std + y_mean)


def _prefix_ridge_residuals(Ztr, Zte, d: int, pairs, alpha: float) -> np.ndarray:
    """Held-out ridge residuals of token t given tokens [0, s), for every (s, t) in pairs.

    Z holds d columns per token, tokens in generation order. With G = AᵀA + αI = L·Lᵀ (A = centred
    training data) and innovations q = L⁻¹(z − μ), the ridge prediction of token t from the prefix
    [0, s) is L[t, :s]·q[:s], so its residual is the small product L[t, s:t+1]·q[s:t+1]. This equals
    fitting Ridge(alpha) separately for every (s, t), at the cost of one Cholesky factorisation.
    """
    from scipy.linalg import cholesky, solve_triangular

    mu = Ztr.mean(axis=0)
    A = Ztr - mu
    G = A.T @ A
    G[np.diag_indices_from(G)] += alpha
    L = cholesky(G, lower=True)
    Q = solve_triangular(L, (Zte - mu).T, lower=True)
    return np.stack([(L[t * d:(t + 1) * d, s * d:(t + 1) * d] @ Q[s * d:(t + 1) * d]).T for s, t in pairs])


def _grouped_residuals(Ztr, Zte, d: int, pairs, fit) -> np.ndarray:
    """Same as _prefix_ridge_residuals for any predictor: one fit per distinct prefix, with all of
    that prefix's targets as outputs of the same predictor."""
    out = {}
    for s in sorted({s for s, _ in pairs}):
        targets = [t for s2, t in pairs if s2 == s]
        cols = np.concatenate([np.arange(t * d, (t + 1) * d) for t in targets])
        R = fit(Ztr[:, :s * d], Ztr[:, cols], Zte[:, :s * d], Zte[:, cols])
        out.update({(s, t): R[:, j * d:(j + 1) * d] for j, t in enumerate(targets)})
    return np.stack([out[p] for p in pairs])


def _residual_fn(estimator, alpha: float, seed: int):
    if callable(estimator):
        return estimator
    if estimator == "linear":
        if not alpha > 0:
            raise UserError(f"alpha = {alpha}: the ridge penalty must be > 0")
        return partial(_ridge_residuals, alpha=alpha)
    if estimator == "mlp":
        return partial(_mlp_residuals, seed=seed)
    raise UserError(f"unknown estimator {estimator!r}; use one of {', '.join(ESTIMATORS)}")


def _prepare(features, train_frac: float, seed: int):
    """(N, H·W·d) float64 data + (train, test) image indices."""
    V = np.asarray(features, dtype=np.float64)
    if V.ndim != 4:
        raise UserError(f"features must have shape (num_images, H, W, d), got {V.shape}")
    N, _, _, d = V.shape
    perm = np.random.default_rng(seed).permutation(N)
    n_train = int(round(train_frac * N))
    if n_train < 2 or N - n_train <= d:
        raise UserError(f"{N} images are too few for a train/test split with d = {d}; use more images")
    return V.reshape(N, -1), perm[:n_train], perm[n_train:]


def _flat_cell(idx, H: int, W: int) -> int:
    r, c = divmod(int(idx), W) if np.ndim(idx) == 0 else map(int, idx)
    if not (0 <= r < H and 0 <= c < W):
        raise UserError(f"cell {tuple(np.atleast_1d(idx))} is outside the {H}×{W} grid")
    return r * W + c


def conditional_entropy(
    features, target_idx, cond_idx, estimator="linear", *,
    alpha: float = DEFAULT_ALPHA, train_frac: float = DEFAULT_TRAIN_FRAC, seed: int = 0,
) -> float:
    """Upper bound on H(v_target | v_cond) in nats. features: (N, H, W, d); cells as (r, c) or raster
    index; cond_idx may be empty (unconditional entropy)."""
    fit = _residual_fn(estimator, alpha, seed)
    Z, tr, te = _prepare(features, train_frac, seed)
    _, H, W, d = np.shape(features)
    k = _flat_cell(target_idx, H, W)
    cond = [_flat_cell(c, H, W) for c in cond_idx]
    if k in cond:
        raise UserError("the target cell is also in the conditioning set")
    xcols = np.array([j * d + a for j in cond for a in range(d)], dtype=int)
    ycols = np.arange(k * d, (k + 1) * d)
    R = fit(Z[np.ix_(tr, xcols)], Z[np.ix_(tr, ycols)], Z[np.ix_(te, xcols)], Z[np.ix_(te, ycols)])
    return float(gaussian_entropy(R))
