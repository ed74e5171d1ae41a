"""§8 conditional-entropy analysis (Figs. 9 and 11): how much uncertainty about a token is left
given the tokens that a generation order lets it condition on.

Every token is represented by a feature v ∈ R^d (the L2-normalised VQ codebook row of its code).
A predictor f_θ of the target v_k from the conditioning tokens is fitted on a training split of the
images; on the held-out split the residuals ε = v_k − f_θ(cond) bound the conditional entropy,

    H(v_k | cond) = H(ε | cond) ≤ H(ε) ≤ ½·log((2πe)^d·|Σ_ε|)   [nats],

with Σ_ε the (mean-centred) sample covariance of the held-out residuals. The bound is tight for a
jointly Gaussian field with the linear predictor, which the tests use as ground truth. An empty
conditioning set gives the plain (unconditional) covariance.

Predictors: ``linear`` = scikit-learn ``Ridge(alpha)`` with an unpenalised intercept, ``mlp`` = a small
torch MLP, or any callable ``f(X_train, Y_train, X_test, Y_test) -> held-out residuals of Y_test``.

Orders (Fig. 11) come from par.core.order: ``perm[t]`` is the raster index of the token generated at
position t and ``step_of_token[t]`` its generation step (raster and PAR both generate their first n
tokens one per step, then n consecutive positions per step). V_seq(k) = every token before k in
the order; V_par(k) = every token generated in a strictly earlier step. Both are prefixes of the
order, which the linear estimator exploits: one Cholesky factor of the training Gram matrix yields
every prefix regression.

All entropies are differential entropies of continuous features, so they can be negative. Fig. 9's
maps come with their baseline: H(v_i | v_ref) − H(v_i), H(v_i) estimated on the same held-out images
by the same estimator fed an uninformative reference (another image's), which shows the effect of
conditioning that the raw scale hides.
Uncertainty: each held-out image's influence on a Gaussian entropy estimate, ψ = ½·(cᵀΣ⁻¹c − d), is
kept with the maps, so `par entropy figures` gives every summary (mean increase per token, PAR − raster,
the conditioning effect next to the reference) a delta-method 95 % interval over held-out images and
turns it into a verdict on the paper's claim (entropy_summary.json).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from functools import partial
from pathlib import Path

import numpy as np

from par.analysis import verdicts
from par.core.order import Order
from par.data.shards import CENTRE, MANIFEST, TokenShards, centre_crop_index, crop_order_of, default_crop_order
from par.config import EntropySettings, field_metadata as _field_meta
from par.errors import UserError
from par.io import atomic_path, torch_load, write_json

ESTIMATORS = _field_meta(EntropySettings, "estimator")["choices"]
# Ridge penalty (sklearn's scale: added to the Gram diagonal, which is ~ n_train / d for unit-norm tokens).
# Small is right when images ≫ predictors; with thousands of conditioning dimensions and ~10k images the
# held-out bound is loose from overfitting and a larger --alpha (1e2–1e3) gives tighter entropies.
DEFAULT_ALPHA = EntropySettings().alpha
DEFAULT_TRAIN_FRAC = 0.8
CODEBOOK_KEY = "quantize.embedding.weight"
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


# ------------------------------------------------------------------------------------ public API


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


# ----------------------------------------------------------------------------------------- I/O


def _save_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)


def _load_npz(path: Path, *keys: str) -> dict[str, np.ndarray]:
    """All arrays of an .npz file, checking that the named keys are present."""
    import zipfile

    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path")
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a readable .npz file ({e}); regenerate it") from None
    for k in keys:
        if k not in arrays:
            raise UserError(f"{path}: no array {k!r} (has {sorted(arrays) or 'none'}); pass the right file")
    return arrays


def _load_features(path: Path, max_images: int | None) -> np.ndarray:
    V = _load_npz(path, "features")["features"]
    if V.ndim != 4 or not np.issubdtype(V.dtype, np.floating):
        raise UserError(
            f"{path}: 'features' must be a float array (num_images, H, W, d), got {V.dtype} {V.shape}; "
            "create it with `par entropy features`"
        )
    V = V[:max_images]
    if not np.isfinite(V).all():
        raise UserError(f"{path}: 'features' contains NaN or inf; regenerate it")
    return V


def _select_crop(codes: np.ndarray, path: Path, crop: int | None, crop_order: list[str] | None = None) -> np.ndarray:
    """(num_images, H·W) codes: the codes themselves, or crop `crop` of ten-crop codes (default: the crop
    named centre in `crop_order`, which defaults to the standard ten-crop order)."""
    if not np.issubdtype(codes.dtype, np.integer):
        raise UserError(f"{path}: codes must be integers, got {codes.dtype}")
    if codes.ndim == 2:
        if crop is not None:
            raise UserError(f"{path}: codes {codes.shape} have no crop axis; drop --crop")
        return codes
    if codes.ndim == 3:
        return codes[:, _crop_index(path, crop, crop_order or default_crop_order(codes.shape[1]), codes.shape[1])]
    raise UserError(f"{path}: codes must have shape (num_images, H*W) or (num_images, crops, H*W), got {codes.shape}")


def _crop_index(path: Path, crop: int | None, crop_order: list[str], num_crops: int) -> int:
    k = centre_crop_index(crop_order) if crop is None else crop
    if k is None:
        raise UserError(f"{path}: the crop order {crop_order} has no {CENTRE!r} crop; choose one with --crop")
    if not 0 <= k < num_crops:
        raise UserError(f"{path}: --crop {k} out of range for {num_crops} crops; use 0..{num_crops - 1}")
    return k


def _codes_of_npz(path: Path, crop: int | None) -> np.ndarray:
    """Codes of one .npz file; a `par tokenize` shard's own metadata says which crop is the centre."""
    arrays = _load_npz(path, "codes")
    codes = arrays["codes"]
    order = None
    if "meta" in arrays and codes.ndim == 3:
        try:
            meta = json.loads(str(arrays["meta"]))
        except ValueError:
            raise UserError(f"{path}: 'meta' is not JSON; pass a `par tokenize` shard or a plain codes file") from None
        order = crop_order_of(meta, codes.shape[1], path)
    return _select_crop(codes, path, crop, order)


def _read_token_dir(path: Path, num: int, crop: int | None) -> np.ndarray:
    """Codes of one crop (default: the centre crop of the manifest's crop order) of a `par tokenize` directory."""
    shards = TokenShards(path)
    k = _crop_index(path, crop, shards.crop_order, shards.num_crops)
    codes = shards.load(crop=k)[0]
    if num < len(codes):  # a fixed random draw of `num` images: the shards are sorted by class
        codes = codes[np.sort(np.random.default_rng(0).permutation(len(codes))[:num])]
    return codes


def _read_codes(path: Path, num: int, crop: int | None) -> np.ndarray:
    """(num, H·W) codes from an .npy/.npz file, a `par tokenize` directory (with manifest.json) or another
    directory of .npz shards (read in sorted order)."""
    if path.is_dir() and (path / MANIFEST).is_file():
        codes = _read_token_dir(path, num, crop)
    elif path.is_dir():
        shards = sorted(path.glob("*.npz"))
        if not shards:
            raise UserError(f"{path}: directory holds no *.npz shards; point --codes at the code shards")
        parts, have = [], 0
        for shard in shards:
            part = _codes_of_npz(shard, crop)
            if parts and part.shape[1:] != parts[0].shape[1:]:
                raise UserError(f"{shard}: codes {part.shape} do not match earlier shards {parts[0].shape}")
            parts.append(part)
            have += len(part)
            if have >= num:
                break
        codes = np.concatenate(parts)
    elif not path.exists():
        raise UserError(f"{path}: no such file or directory; check --codes")
    elif path.suffix == ".npy":
        try:
            codes = np.load(path)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not a readable .npy file ({e}); regenerate it") from None
        codes = _select_crop(codes, path, crop)
    elif path.suffix == ".npz":
        codes = _codes_of_npz(path, crop)
    else:
        raise UserError(f"{path}: --codes must be an .npy/.npz file or a directory of .npz shards")
    if len(codes) < num:
        raise UserError(f"{path}: only {len(codes)} images of codes, asked for --num-images {num}; lower it")
    return codes[:num]


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


# ------------------------------------------------------------------------- summary and verdicts

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
SUMMARY_NAME = "entropy_summary.json"
METRIC = "differential entropy"
DIFFERENTIAL = "differential entropy (nats; Gaussian estimate, can be negative)"
CLAIM_NEAR = "entropy: lower conditional entropy near the reference token"
CLAIM_ORDER = "entropy: PAR order's entropy increase below raster's"
# ASCII only: these strings travel into reports (Markdown, HTML, LaTeX).
VERDICT_RULE = (
    "the one rule of par/analysis/verdicts.py (a 'better' claim, two-sided 95%) on the difference and its "
    "delta-method se over thousands of held-out images (df infinite, so t = 1.96): reproduced if the difference "
    "is below 0, the side the paper claims, by more than 1.96*se; contradicted (A worse) if above 0 by more; "
    "otherwise not resolved"
)
INTERVAL_METHOD = (
    "delta method over the held-out images: influence function of the Gaussian log-determinant, estimates on "
    "the same held-out images paired image by image; 95% normal interval; conditional on the fitted predictor "
    "(its fit noise, a bias of order predictors / training images, is not included)"
)
MAP_KEYS = ("entropy", "reference", "unconditional", "difference", "influence", "unconditional_influence",
            "test_images", "num_images")
INCREASE_KEYS = ("increase", "steps", "order", "n", "influence_seq", "influence_par", "test_images", "num_images")


def _estimate(terms) -> dict:
    """Σ w·value over terms (w, value, influence (m,), held-out image ids (m,), images of the features),
    with its delta-method standard error and 95 % interval. Terms on the same held-out images are paired
    (their weighted influences add image by image); terms on different held-out images count as independent."""
    groups: dict[bytes, np.ndarray] = {}
    value, num = 0.0, 0
    for w, v, psi, images, n in terms:
        value += w * float(v)
        key = np.asarray(images, dtype=np.int64).tobytes()
        groups[key] = groups.get(key, 0.0) + w * np.asarray(psi, dtype=np.float64)
        num = max(num, int(n))
    se = math.sqrt(sum(float(np.var(p, ddof=1)) / len(p) for p in groups.values()))
    held_out = max(len(p) for p in groups.values())
    return {"mean": value, "lo": value - Z95 * se, "hi": value + Z95 * se, "se": se,
            "method": f"delta method over {held_out} held-out of {num} images (paired), 95% normal interval",
            "held_out_images": held_out, "num_images": num}


def _decide(difference: float, se: float, claimed_sign: int = -1) -> tuple[str, float]:
    """(verdict, p) by the one verdict rule (`verdicts.decide`); the delta-method SE is its input, over thousands
    of held-out images, so df = ∞. claimed_sign = -1: the paper says the difference is negative."""
    v, p, _ = verdicts.decide(verdicts.Welch(float(difference), float(se), math.inf), lower_is_better=claimed_sign < 0)
    return v, p


def verdict(difference: float, se: float, claimed_sign: int = -1) -> str:
    """reproduced / contradicted (A worse) / not resolved for a difference and its SE (`_decide`)."""
    return _decide(difference, se, claimed_sign)[0]


def _verdict_row(claim: str, est: dict | None, missing: str) -> dict:
    row = {"claim": claim, "metric": METRIC}
    if est is None:
        return {**row, "difference": None, "se": None, "lo": None, "hi": None, "verdict": "not resolved",
                "images_to_resolve": None, "note": missing}
    v, p = _decide(est["mean"], est["se"])
    # The standard error falls as 1/√images: the 95 % interval would exclude 0 at the observed effect from this many.
    need = (math.ceil(est["num_images"] * (Z95 * est["se"] / est["mean"]) ** 2)
            if v == "not resolved" and est["mean"] != 0 and est["num_images"] else None)
    return {**row, "difference": est["mean"], "se": est["se"], "df": math.inf, "p": p, "lo": est["lo"],
            "hi": est["hi"], "verdict": v, "images_to_resolve": need}


def _neighbour_cells(ref, shape) -> list[tuple[int, int]]:
    r, c = (int(x) for x in ref)
    return [(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
            if (dr or dc) and 0 <= r + dr < shape[0] and 0 <= c + dc < shape[1]]


def _near_reference(maps: list[dict]) -> dict | None:
    """Mean of H(v_i | v_ref) − H(v_i) over the (up to) 8 neighbours of every reference cell."""
    terms = [(m["difference"][r, c], m["influence"][:, r, c] - m["unconditional_influence"][:, r, c],
              m["test_images"], m["num_images"])
             for m in maps for r, c in _neighbour_cells(m["reference"], m["difference"].shape)]
    if not terms:
        return None
    est = _estimate([(1 / len(terms), *t) for t in terms])
    return {**est, "cells": len(terms), "references": [[int(x) for x in m["reference"]] for m in maps]}


def _increase_stats(it: dict) -> dict:
    """Mean entropy increase per token of one order, and its negative cells against their own intervals."""
    psi = np.asarray(it["influence_par"], np.float64) - np.asarray(it["influence_seq"], np.float64)
    inc = np.asarray(it["increase"], np.float64)
    est = _estimate([(1.0, inc.mean(), psi.mean(axis=(1, 2)), it["test_images"], it["num_images"])])
    cell_se = psi.std(axis=0, ddof=1) / math.sqrt(len(psi))
    negative = inc < 0
    return {**est, "n": int(it["n"]), "negative_cells": int(negative.sum()),
            "negative_cells_within_noise": int((negative & (inc + Z95 * cell_se >= 0)).sum()), "cells": inc.size}


def _par_raster_pair(increases: list[dict]) -> tuple[dict, dict] | None:
    """The PAR and raster increases to compare: same n (the largest n that both orders have)."""
    by = {(str(it["order"]), int(it["n"])): it for it in increases}
    shared = sorted(n for order, n in by if order == "par" and ("raster", n) in by)
    return (by[("par", shared[-1])], by[("raster", shared[-1])]) if shared else None


def entropy_summary(maps: list[dict], increases: list[dict]) -> dict:
    """The numbers behind the figures and the verdicts on the paper's two entropy claims (see VERDICT_RULE).

    maps / increases: outputs of `par entropy map` / `increase` (dicts of arrays, as their .npz files hold)."""
    near = _near_reference(maps) if maps else None
    pair = _par_raster_pair(increases)
    par = raster = diff = None
    if pair:
        par, raster = (_increase_stats(it) for it in pair)
        diff = _estimate([
            (w, est["mean"], (np.asarray(it["influence_par"], np.float64) - it["influence_seq"]).mean(axis=(1, 2)),
             it["test_images"], it["num_images"])
            for w, est, it in zip((1.0, -1.0), (par, raster), pair)
        ])
        diff["n"] = par["n"]
    summary = {
        "what": "Gaussian upper bounds on differential entropies of VQ token features, in nats (they can be negative)",
        "interval": "95%: estimate +/- 1.96*se; " + INTERVAL_METHOD,
        "increase_par": par,
        "increase_raster": raster,
        "difference_par_minus_raster": diff,
        "conditioning_near_reference": near,
        "verdict_rule": VERDICT_RULE,
        "verdicts": [
            _verdict_row(CLAIM_NEAR, near, "no `par entropy map` output given"),
            _verdict_row(CLAIM_ORDER, diff, "no `par entropy increase` outputs of both orders with the same n"),
        ],
    }
    return _json_safe(summary)


def _json_safe(obj):
    """Plain JSON types; NaN and inf become null."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _interval_text(est: dict, digits: int = 3) -> str:
    return f"{est['mean']:.{digits}f} [{est['lo']:.{digits}f}, {est['hi']:.{digits}f}]"


# ------------------------------------------------------------------------------------- figures


def _mark_reference(ax, ref) -> None:
    from matplotlib.patches import Rectangle

    r, c = (int(x) for x in ref)
    ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="black", edgecolor="white", lw=0.8))


def _caption(fig, text: str, width: int) -> None:
    import textwrap

    fig.supxlabel("\n".join(textwrap.fill(p, width) for p in text.split("\n")), fontsize=7, ha="center")


def _map_figure(items: list[dict], near: dict | None = None):
    """Fig. 9 style: per reference cell (marked black), the raw H(v_i | v_ref) on a shared colour scale above
    the conditioned − unconditional difference H(v_i | v_ref) − H(v_i) on a diverging scale centred at 0."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.0 * len(items) + 2.2, 7.0), layout="constrained")
    axes = fig.subplots(2, len(items), squeeze=False)
    finite = np.concatenate([m["entropy"][np.isfinite(m["entropy"])] for m in items])
    spread = np.concatenate([np.abs(m["difference"][np.isfinite(m["difference"])]) for m in items])
    lim = float(spread.max()) if spread.size and spread.max() > 0 else 1.0
    for j, m in enumerate(items):
        r, c = (int(x) for x in m["reference"])
        raw = axes[0, j].imshow(m["entropy"], cmap="viridis", vmin=finite.min(), vmax=finite.max())
        axes[0, j].set_title(f"$H(v_i \\mid v_{{ref}})$, reference ({r}, {c})", fontsize=9)
        dif = axes[1, j].imshow(m["difference"], cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[1, j].set_title(f"$H(v_i \\mid v_{{ref}}) - H(v_i)$, reference ({r}, {c})", fontsize=9)
        for ax in axes[:, j]:
            _mark_reference(ax, m["reference"])
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(raw, ax=list(axes[0]), label="conditional entropy:\n" + DIFFERENTIAL.replace("; ", ";\n"))
    fig.colorbar(dif, ax=list(axes[1]), label="conditioned − unconditional:\n" + DIFFERENTIAL.replace("; ", ";\n"))
    fig.suptitle(f"Conditional entropy of a token given the reference token (black): {DIFFERENTIAL}", fontsize=9)
    text = ("Top: H(v_i | v_ref); bottom: H(v_i | v_ref) − H(v_i), H(v_i) being the unconditional entropy of the "
            "same cell from the same estimator and held-out images, fed the reference token of another image "
            "(blue = conditioning lowers the entropy).")
    if near:
        text += (f"\nMean difference over the {near['cells']} neighbour cells of the reference(s): "
                 f"{_interval_text(near)} nats (95 % interval, delta method over {near['held_out_images']} "
                 "held-out images).")
    _caption(fig, text, width=int(28 * len(items) + 40))
    return fig


def _increase_figure(items: list[dict], summary: dict | None = None):
    """Fig. 11 style: per order, the step grid (numbered from 1 as in the paper) next to the entropy
    increase on one diverging scale centred at 0 for all orders, with the mean increase per token, its
    interval and the PAR − raster difference in the caption."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.6, 3.4 * len(items) + 1.3), layout="constrained")
    axes = fig.subplots(len(items), 2, squeeze=False)
    lim = max(float(np.abs(it["increase"]).max()) for it in items) or 1.0
    stats = [_increase_stats(it) if "influence_par" in it else None for it in items]
    for (ax_s, ax_i), it, st in zip(axes, items, stats):
        steps = it["steps"]
        ax_s.imshow(steps, cmap="Blues")
        size = max(2.0, min(9.0, 110 / max(steps.shape)))
        for (r, c), s in np.ndenumerate(steps):
            light = s > 0.6 * steps.max()
            ax_s.text(c, r, str(s + 1), ha="center", va="center", fontsize=size, color="white" if light else "black")
        label = f"{it['order']} order, n = {int(it['n'])}"
        ax_s.set_title(f"{label}: generation step", fontsize=9)
        im = ax_i.imshow(it["increase"], cmap="RdBu_r", vmin=-lim, vmax=lim)
        mean = f"\nmean {_interval_text(st)} nats/token" if st else ""
        ax_i.set_title(f"{label}: entropy increase{mean}", fontsize=9)
        for ax in (ax_s, ax_i):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=list(axes[:, 1]),
                 label="$H(v_k \\mid V_{par}) - H(v_k \\mid V_{seq})$ [nats]\n(difference of differential entropies)")
    text = ""
    if summary and summary.get("difference_par_minus_raster"):
        p, r, d = (summary[k] for k in ("increase_par", "increase_raster", "difference_par_minus_raster"))
        text += (f"Mean entropy increase per token, n = {d['n']}, with 95 % intervals (delta method over "
                 f"{d['held_out_images']} held-out images): PAR {_interval_text(p)}, raster {_interval_text(r)}; "
                 f"PAR − raster {_interval_text(d)} nats.\n")
    negative = sum(st["negative_cells"] for st in stats if st)
    noise = sum(st["negative_cells_within_noise"] for st in stats if st)
    text += ("The true increase is ≥ 0 (V_par ⊂ V_seq, and conditioning on fewer tokens cannot lower the entropy), "
             "so negative (blue) cells are estimator error. ")
    if not negative:
        text += "No cell is negative here."
    else:
        text += (f"{noise} of the {negative} negative cells have a 95 % interval that covers 0: held-out sampling "
                 "noise of the estimate")
        text += (f"; the other {negative - noise} come from the finite-sample regression (the larger conditioning "
                 "set V_seq is overfit on the training images, which loosens its held-out bound)."
                 if negative > noise else ".")
    below = [str(it["order"]) for it, st in zip(items, stats) if st and st["hi"] < 0]
    if below:
        text += (f" The mean increase of the {' and '.join(below)} order lies below 0 as well: the same regression "
                 "bias, of similar size for both orders (their conditioning sets have the same sizes), so it should "
                 "largely cancel in PAR − raster.")
    _caption(fig, text, width=120)
    return fig


def _save_figure(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format=p.suffix[1:], dpi=200)
    return paths


# ----------------------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _cell(text: str) -> tuple[int, int]:
    try:
        r, c = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROW,COL (e.g. 12,12), got {text!r}") from None
    return r, c


def _cmd_map(args) -> int:
    V = _load_features(args.features, args.max_images)
    _, H, W, _ = V.shape
    r, c = args.reference
    if not (0 <= r < H and 0 <= c < W):
        raise UserError(f"--reference {r},{c} is outside the {H}×{W} grid of {args.features}; use 0..{H - 1},0..{W - 1}")
    res = conditioning_maps(V, (r, c), args.estimator, alpha=args.alpha)
    _save_npz(args.out, **{k: res[k] for k in ("entropy", "unconditional", "difference", "marginal", "test_images")},
              influence=res["influence"].astype(np.float32),
              unconditional_influence=res["unconditional_influence"].astype(np.float32),
              num_images=np.array(len(V)), reference=np.array([r, c]), estimator=np.array(args.estimator))
    ent, near = res["entropy"], [res["difference"][cell] for cell in _neighbour_cells((r, c), (H, W))]
    print(f"wrote {args.out}: H(v_i | v_({r},{c})) over {H}×{W}, {np.nanmin(ent):.3f}..{np.nanmax(ent):.3f} nats; "
          f"minus H(v_i): {np.mean(near) if near else float('nan'):.3f} nats on average next to the reference")
    return 0


def _cmd_increase(args) -> int:
    V = _load_features(args.features, args.max_images)
    res = entropy_increase(V, args.order, args.n, args.estimator, alpha=args.alpha)
    for key in ("influence_seq", "influence_par"):
        res[key] = res[key].astype(np.float32)
    _save_npz(args.out, **res, num_images=np.array(len(V)), order=np.array(args.order), n=np.array(args.n),
              estimator=np.array(args.estimator))
    inc = res["increase"]
    print(f"wrote {args.out}: {args.order} order, n = {args.n}: increase mean {inc.mean():.3f}, max {inc.max():.3f} nats")
    return 0


def _cmd_features(args) -> int:
    codes = _read_codes(args.codes, args.num_images, args.crop)
    book = _read_codebook(args.codebook)
    if codes.min() < 0 or codes.max() >= len(book):
        raise UserError(f"{args.codes}: codes span {codes.min()}..{codes.max()} but the codebook has {len(book)} rows; "
                        "pass the tokenizer that produced them")
    side = math.isqrt(codes.shape[1])
    if side * side != codes.shape[1]:
        raise UserError(f"{args.codes}: {codes.shape[1]} codes per image is not a square grid")
    feats = book[codes].reshape(len(codes), side, side, book.shape[1]).astype(np.float32)
    _save_npz(args.out, features=feats)
    print(f"wrote {args.out}: features {feats.shape}")
    return 0


def _cmd_figures(args) -> int:
    maps, increases = [], []
    for path in args.maps:
        arrays = _load_npz(path)
        if "entropy" in arrays and "reference" in arrays:
            kind, keys, group = "map", MAP_KEYS, maps
        elif {"increase", "steps", "order", "n"} <= arrays.keys():
            kind, keys, group = "increase", INCREASE_KEYS, increases
        else:
            raise UserError(f"{path}: neither a `par entropy map` nor a `par entropy increase` output")
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise UserError(f"{path}: no {', '.join(missing)} (written by an older `par entropy {kind}`); rerun it")
        group.append(arrays)
    summary = entropy_summary(maps, increases)
    written = []
    if maps:
        written += _save_figure(_map_figure(maps, summary["conditioning_near_reference"]), args.outdir / "entropy_maps")
    if increases:
        written += _save_figure(_increase_figure(increases, summary), args.outdir / "entropy_increase")
    write_json(args.outdir / SUMMARY_NAME, summary)
    written.append(args.outdir / SUMMARY_NAME)
    print("wrote " + ", ".join(map(str, written)))
    for row in summary["verdicts"]:
        if row["difference"] is None:
            print(f"{row['claim']}: {row['verdict']} ({row['note']})")
        else:
            half = Z95 * row["se"]
            print(f"{row['claim']}: {row['verdict']} (difference {row['difference']:.3f} ± {half:.3f} nats)")
    return 0


def register(sub) -> None:
    parser = sub.add_parser(
        "entropy",
        help="conditional-entropy analysis of token orders (paper §8, Figs. 9 and 11)",
        description="Gaussian upper bounds on conditional entropies of VQ token features (nats).",
    )
    actions = parser.add_subparsers(dest="entropy_action", required=True, metavar="ACTION")

    def analysis(name: str, help: str):
        p = actions.add_parser(name, help=help, description=help)
        p.add_argument("--features", type=Path, required=True, help=".npz with 'features' (num_images, H, W, d)")
        p.add_argument("--estimator", choices=ESTIMATORS, default="linear", help="predictor f_θ (default: linear)")
        p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help=f"ridge penalty of 'linear' (default: {DEFAULT_ALPHA})")
        p.add_argument("--max-images", type=_positive_int, metavar="K", help="use only the first K images")
        p.add_argument("--out", type=Path, required=True, help="output .npz")
        return p

    p = analysis("map", "H(v_i | v_ref) for every cell i (Fig. 9)")
    p.add_argument("--reference", type=_cell, required=True, metavar="R,C", help="reference cell (row,col)")
    p.set_defaults(func=_cmd_map)

    p = analysis("increase", "entropy increase of parallel over sequential generation per cell (Fig. 11)")
    p.add_argument("--order", choices=("par", "raster"), required=True, help="token order whose parallel steps are measured")
    p.add_argument("--n", type=_positive_int, default=4, help="tokens per parallel step (default: 4)")
    p.set_defaults(func=_cmd_increase)

    p = actions.add_parser("features", help="token features (L2-normalised codebook rows) from VQ codes")
    p.add_argument("--codes", type=Path, required=True,
                   help=".npy/.npz with codes (num_images, H*W) or (num_images, crops, H*W), or a directory of .npz shards")
    p.add_argument("--codebook", type=Path, required=True, help=f"VQ checkpoint holding {CODEBOOK_KEY}")
    p.add_argument("--crop", type=int,
                   help="crop index for ten-crop codes (default: the centre crop, as the manifest or shard "
                        "metadata records it; index 4 of the standard ten-crop order)")
    p.add_argument("--num-images", type=_positive_int, required=True, help="images whose tokens are analysed (a `par tokenize` folder: a fixed random draw "
                   "of K, since its shards are sorted by class; other inputs: the first K)")
    p.add_argument("--out", type=Path, required=True, help="output .npz with 'features' (num_images, H, W, d)")
    p.set_defaults(func=_cmd_features)

    p = actions.add_parser(
        "figures",
        help=f"Fig. 9 / Fig. 11 style heatmaps (PNG + PDF) and {SUMMARY_NAME} (intervals, verdicts) "
             "from map/increase outputs",
    )
    p.add_argument("--maps", type=Path, nargs="+", required=True, help="outputs of `par entropy map` / `increase`")
    p.add_argument("--outdir", type=Path, default=Path("analysis/entropy"), help="output folder (default: analysis/entropy)")
    p.set_defaults(func=_cmd_figures)
