"""`par entropy ACTION` (workflow/rules/entropy.smk), §8's steps in the order the workflow runs them:

    par entropy features --codes TOKENS --codebook VQ.pt --num-images K --out features.npz   # features.py
    par entropy map --features features.npz --reference R,C --out map_R_C.npz                # maps.py (Fig. 9)
    par entropy increase --features features.npz --order par --n 4 --out increase_par.npz    # maps.py (Fig. 11)
    par entropy figures --maps map_*.npz increase_*.npz --outdir DIR                          # summary.py, figures.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from par.analysis.entropy.estimate import DEFAULT_ALPHA, ESTIMATORS
from par.analysis.entropy.features import CODEBOOK_KEY, _read_codebook, token_features
from par.analysis.entropy.figures import _increase_figure, _map_figure, _save_figure
from par.analysis.entropy.maps import conditioning_maps, entropy_increase
from par.analysis.entropy.summary import (
    INCREASE_KEYS, MAP_KEYS, SUMMARY_NAME, Z95, _neighbour_cells, entropy_summary,
)
from par.data.shards import read_crop_codes
from par.errors import UserError
from par.io import atomic_path, load_npz, write_json

# ----------------------------------------------------------------------------------------- I/O


def _save_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)


def _load_features(path: Path, max_images: int | None) -> np.ndarray:
    V = load_npz(path, "features")["features"]
    if V.ndim != 4 or not np.issubdtype(V.dtype, np.floating):
        raise UserError(
            f"{path}: 'features' must be a float array (num_images, H, W, d), got {V.dtype} {V.shape}; "
            "create it with `par entropy features`"
        )
    V = V[:max_images]
    if not np.isfinite(V).all():
        raise UserError(f"{path}: 'features' contains NaN or inf; regenerate it")
    return V


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
    codes = read_crop_codes(args.codes, args.num_images, args.crop)
    feats = token_features(codes, _read_codebook(args.codebook), args.codes)
    _save_npz(args.out, features=feats)
    print(f"wrote {args.out}: features {feats.shape}")
    return 0


def _cmd_figures(args) -> int:
    maps, increases = [], []
    for path in args.maps:
        arrays = load_npz(path)
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
