"""§8, step 3: the numbers behind the figures and the verdicts on the paper's two entropy claims.

Each held-out image's influence on a Gaussian entropy estimate (`estimate.gaussian_entropy_with_influence`) is
kept with the maps, so every summary (mean increase per token, PAR − raster, the conditioning effect next to the
reference) gets a delta-method 95 % interval over held-out images. That standard error is the input of the one
verdict rule, `par.analysis.verdicts.decide`, which says whether the paper's claim is reproduced
(entropy_summary.json).
"""

from __future__ import annotations

import math

import numpy as np

from par.analysis import verdicts

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

