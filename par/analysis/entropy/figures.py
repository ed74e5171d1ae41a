"""§8, step 4: Fig. 9 and Fig. 11 style heatmaps (PNG + PDF), captioned with the intervals of `summary.py`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from par.analysis.entropy.summary import DIFFERENTIAL, _increase_stats, _interval_text
from par.io import atomic_path


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

