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
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from functools import partial
from pathlib import Path

import numpy as np

from par.core.order import Order
from par.data.shards import CENTRE, MANIFEST, TokenShards, centre_crop_index, crop_order_of, default_crop_order
from par.config import EntropySettings, field_metadata as _field_meta
from par.errors import UserError
from par.io import atomic_path, torch_load

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
    r = residuals - residuals.mean(axis=-2, keepdims=True)
    m, d = r.shape[-2:]
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
            stacklevel=2,
        )
        _, logdet[bad] = np.linalg.slogdet(cov[bad] + eps[:, None, None] * np.eye(d))
    return 0.5 * (d * _LOG_2PIE + logdet)


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
    """(H, W) map of H(v_i | v_ref) in nats (Fig. 9), NaN at the reference cell.

    The design matrix (the reference token) is shared by all targets, so one fit covers the map."""
    fit = _residual_fn(estimator, alpha, seed)
    Z, tr, te = _prepare(features, train_frac, seed)
    _, H, W, d = np.shape(features)
    j = _flat_cell(ref, H, W)
    others = np.delete(np.arange(H * W), j)
    X = Z[:, j * d:(j + 1) * d]
    Y = Z.reshape(len(Z), H * W, d)[:, others].reshape(len(Z), -1)
    R = fit(X[tr], Y[tr], X[te], Y[te]).reshape(len(te), len(others), d)
    out = np.full(H * W, np.nan)
    out[others] = gaussian_entropy(R.transpose(1, 0, 2))
    return out.reshape(H, W)


def entropy_increase(
    features, order: str = "par", n: int = 4, estimator="linear", *,
    alpha: float = DEFAULT_ALPHA, train_frac: float = DEFAULT_TRAIN_FRAC, seed: int = 0,
) -> dict[str, np.ndarray]:
    """Fig. 11: per cell k, H(v_k | V_par(k)) − H(v_k | V_seq(k)) in nats for the given order.

    Returns (H, W) raster-layout grids: ``increase``, ``seq``, ``par`` (the two entropies) and
    ``steps`` (generation step of each cell, 0-based)."""
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
    ent = dict(zip(pairs, gaussian_entropy(R)))
    seq = np.array([ent[(t, t)] for t in range(P)])
    par = np.array([ent[(int(s), t)] for t, s in enumerate(starts)])

    def to_grid(x):
        g = np.empty(P, dtype=x.dtype)
        g[perm] = x
        return g.reshape(H, W)

    return {"increase": to_grid(par - seq), "seq": to_grid(seq), "par": to_grid(par), "steps": to_grid(steps)}


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
    return shards.load(crop=k, num=num)[0]


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


# ------------------------------------------------------------------------------------- figures


def _map_figure(items: list[dict]):
    """Fig. 9 style: one panel per reference cell (marked), shared colour scale."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(3.0 * len(items) + 1.0, 3.2), layout="constrained")
    axes = fig.subplots(1, len(items), squeeze=False)[0]
    finite = np.concatenate([m["entropy"][np.isfinite(m["entropy"])] for m in items])
    for ax, m in zip(axes, items):
        im = ax.imshow(m["entropy"], cmap="viridis", vmin=finite.min(), vmax=finite.max())
        r, c = (int(x) for x in m["reference"])
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="red", edgecolor="white", lw=0.8))
        ax.set_title(f"reference ({r}, {c})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), label=r"$H(v_i \mid v_{\mathrm{ref}})$ [nats]")
    return fig


def _increase_figure(items: list[dict]):
    """Fig. 11 style: per order, the step grid (numbered from 1 as in the paper) next to the entropy
    increase; one colour scale for all orders so they can be compared."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.6, 3.4 * len(items)), layout="constrained")
    axes = fig.subplots(len(items), 2, squeeze=False)
    lo = min(0.0, min(float(it["increase"].min()) for it in items))
    hi = max(float(it["increase"].max()) for it in items)
    for (ax_s, ax_i), it in zip(axes, items):
        steps = it["steps"]
        ax_s.imshow(steps, cmap="Blues")
        size = max(2.0, min(9.0, 110 / max(steps.shape)))
        for (r, c), s in np.ndenumerate(steps):
            light = s > 0.6 * steps.max()
            ax_s.text(c, r, str(s + 1), ha="center", va="center", fontsize=size, color="white" if light else "black")
        label = f"{it['order']} order, n = {int(it['n'])}"
        ax_s.set_title(f"{label}: generation step", fontsize=9)
        im = ax_i.imshow(it["increase"], cmap="magma", vmin=lo, vmax=hi)
        ax_i.set_title(f"{label}: entropy increase", fontsize=9)
        for ax in (ax_s, ax_i):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=list(axes[:, 1]), label=r"$H(v_k \mid V_{par}) - H(v_k \mid V_{seq})$ [nats]")
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
    ent = entropy_map(V, (r, c), args.estimator, alpha=args.alpha)
    _save_npz(args.out, entropy=ent, reference=np.array([r, c]), estimator=np.array(args.estimator))
    print(f"wrote {args.out}: H(v_i | v_({r},{c})) over {H}×{W}, {np.nanmin(ent):.3f}..{np.nanmax(ent):.3f} nats")
    return 0


def _cmd_increase(args) -> int:
    V = _load_features(args.features, args.max_images)
    res = entropy_increase(V, args.order, args.n, args.estimator, alpha=args.alpha)
    _save_npz(args.out, **res, order=np.array(args.order), n=np.array(args.n), estimator=np.array(args.estimator))
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
            maps.append(arrays)
        elif {"increase", "steps", "order", "n"} <= arrays.keys():
            increases.append(arrays)
        else:
            raise UserError(f"{path}: neither a `par entropy map` nor a `par entropy increase` output")
    written = []
    if maps:
        written += _save_figure(_map_figure(maps), args.outdir / "entropy_maps")
    if increases:
        written += _save_figure(_increase_figure(increases), args.outdir / "entropy_increase")
    print("wrote " + ", ".join(map(str, written)))
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
    p.add_argument("--num-images", type=_positive_int, required=True, help="images whose tokens are analysed (the first K)")
    p.add_argument("--out", type=Path, required=True, help="output .npz with 'features' (num_images, H, W, d)")
    p.set_defaults(func=_cmd_features)

    p = actions.add_parser("figures", help="Fig. 9 / Fig. 11 style heatmaps (PNG + PDF) from map/increase outputs")
    p.add_argument("--maps", type=Path, nargs="+", required=True, help="outputs of `par entropy map` / `increase`")
    p.add_argument("--outdir", type=Path, default=Path("analysis/entropy"), help="output folder (default: analysis/entropy)")
    p.set_defaults(func=_cmd_figures)
