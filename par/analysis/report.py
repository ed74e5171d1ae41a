"""`par report`: <analysis>/report.md (+ .html), the page a person reads first.

It stitches together what the other stages wrote: the training regime (steps, epochs, tokens seen) in its first
paragraph, the verdicts and tables (`par tables`), the learning curves with every NLL claim judged along them, a
paragraph on ARPG (the peer row) when the preset has it, a speed-vs-quality figure (steps and seconds per image vs sample quality and NLL,
mean ± SE over seeds; ARPG as red diamonds), one sample grid per model,
the entropy maps, the tokenizer's and the feature classifier's numbers, and the exact configuration and git commit
that produced them. A preset with video models (`modality: video`) adds a "Video (Table 4)" section: Table 4, its
verdicts, the video tokenizer and its floors, a speed-vs-FVD figure and each model's samples (an animated GIF and
the filmstrip); a preset with video models only has that section alone. Everything it links is copied under the
analysis folder, so the report reads the same from a fresh clone (results/ is not committed).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
from pathlib import Path

from par import io, provenance
from par.analysis import curves, tables, verdicts
from par.config import add_run_arguments, load_config
from par.errors import UserError
from par.provenance import git_provenance

SMOKE_TEST = ("**This is a smoke test of the plumbing, not evidence.** The `tiny` preset runs every stage in minutes "
              "on a CPU with models and sample counts far too small for its numbers to support or refute any claim "
              "of the paper; the `small` preset is the one whose numbers mean something.")

# ------------------------------------------------------------------------------------------ figures


def _all_runs(preset: dict, results: Path, kind: str | None = None) -> dict:
    """model → its per-run frame (`tables.model_runs`); `kind`: only the models of that modality."""
    return {m: tables.model_runs(results, m, e)[0] for m, e in tables.entries(preset).items()
            if kind is None or tables.modality(e) == kind}


def _models_of(preset: dict, kind: str) -> list[str]:
    """The preset's models of modality `kind` ("images" or "video")."""
    return [m for m, e in tables.entries(preset).items() if tables.modality(e) == kind]


def _styles(models: dict) -> dict[str, dict]:
    """model → marker and colour, the same in every panel: ARPG red diamonds, every other model a circle in one of
    the remaining colours of the default cycle (C3 is its red)."""
    reds, others = itertools.cycle(("C3", "darkred", "salmon")), itertools.cycle(f"C{i}" for i in range(10) if i != 3)
    return {m: {"fmt": "D", "color": next(reds)} if tables.is_arpg(e) else {"fmt": "o", "color": next(others)}
            for m, e in models.items()}


def _errorbar(ax, stats: dict, xkey: str, ykey: str, label: str, style: dict) -> None:
    x, y = stats[xkey], stats[ykey]
    zero = lambda s: s.se if math.isfinite(s.se) else 0.0  # noqa: E731 — no bar where there is no SE
    ax.errorbar(x.mean, y.mean, xerr=zero(x), yerr=zero(y), ms=5, capsize=3, label=label, **style)


def _floor_lines(ax, floors: dict) -> None:
    """Floors (label → `Stat`) as dashed lines. A floor far off the models' range (it would more than double the
    axis and squash the differences between models) is named in the legend instead, with its value and side: a
    label drawn on the axes would sit on the other floor's line."""
    lo, hi = ax.get_ylim()
    for i, (label, st) in enumerate(floors.items()):
        y = st.mean
        if max(hi, y) - min(lo, y) <= 2 * (hi - lo):
            ax.axhline(y, ls=("--", ":")[i % 2], lw=1.2, color="0.35", label=label)  # grey: not a model's colour
        else:
            side = "below" if y < lo else "above"
            ax.plot([], [], ls="none", label=f"{label}: {verdicts.format_pm(y, st.se)} (off scale, {side})")
    ax.set_ylim(lo, hi)


def _legend(fig, axes) -> None:
    """One legend under the panels for every label of every panel (a floor can be off scale in one panel only),
    so that the figure is no wider than its panels."""
    seen = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    fig.legend(list(seen.values()), list(seen), loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8,
               frameon=False, ncol=min(3, max(1, len(seen))))


FIGURE_DPI = 110
FIGURE_WIDTH_PX = 1000  # the panels' width: inside the report's 1200-px page with the axis labels around it


def speed_plot(preset: dict, results: Path, out: Path, summary: dict | None = None,
               kind: str = "images") -> Path | None:
    """Sample quality (classifier FID, else Inception FID; FVD for video) and NLL against steps and against seconds
    per image (per clip): one point per model of modality `kind`, mean ± SE over its seeds (ARPG: red diamonds, its
    NLL an upper bound); that modality's floors as dashed lines; axes fitted to the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if summary is None:
        summary = {m: tables.summarize(r) for m, r in _all_runs(preset, results, kind).items()}
    has = lambda k: [m for m, s in summary.items() if k in s and s[k].n]  # noqa: E731
    quality = "fvd" if kind == "video" else "cls_fid" if has("cls_fid") else "fid"
    ys = [(k, tables.COLUMNS[k]) for k in (quality, "nll") if has(k)]
    if not ys:
        return None
    models = tables.entries(preset)
    styles, labels = _styles(models), {m: tables.describe(results, models, m) for m in summary}
    if any(tables.is_arpg(models[m]) for m in has("nll")):
        ys = [(k, label + " (ARPG: upper bound)" if k == "nll" else label) for k, label in ys]
    floors = {f: tables.summarize(fr) for f, fr in tables.read_floors(results, kind).items()}
    fig, axes = plt.subplots(len(ys), 2, figsize=(FIGURE_WIDTH_PX / FIGURE_DPI, 3.6 * len(ys)), squeeze=False)
    unit = "clip" if kind == "video" else "image"
    for row, (ykey, ylabel) in enumerate(ys):
        for col, (xkey, xlabel) in enumerate((("steps", "forward calls (steps)"),
                                              ("seconds_per_image", f"seconds / {unit} (batch 1)"))):
            ax = axes[row][col]
            for m in has(ykey):
                _errorbar(ax, summary[m], xkey, ykey, labels[m], styles[m])
            _floor_lines(ax, {tables.FLOORS[f][0]: st[ykey] for f, st in floors.items() if ykey in st
                              and st[ykey].n})
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    fig.suptitle(f"Speed vs. quality{' (video)' if kind == 'video' else ''} (mean ± SE over seeds)")
    fig.tight_layout()
    _legend(fig, axes)
    with io.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)
    return out


def _read_csv(path: Path):
    """A CSV `par tables` wrote, or None when it did not (no curve, no claim to judge)."""
    import pandas as pd

    return pd.read_csv(path) if path.exists() and path.stat().st_size else None


def curve_plot(preset: dict, results: Path, analysis: Path, out: Path, kind: str = "images") -> Path | None:
    """Held-out NLL per token against tokens seen (tables/curves.csv): one line per model of modality `kind` trained
    here, mean over its seeds at each curve point with a ± SE band (one seed: the run's own SE over images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = _read_csv(analysis / "tables" / curves.CURVES_NAME)
    models = tables.entries(preset)
    keep = _models_of(preset, kind)
    if data is None or not data["model"].isin(keep).any():
        return None
    stats = curves.summary(data[data["model"].isin(keep)])
    styles = _styles(models)
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_PX / FIGURE_DPI, 4.2))
    for model, g in stats.groupby("model", sort=False):
        g = g.sort_values("tokens_seen")
        band = g["se"].fillna(0.0)
        colour = styles[model]["color"]
        ax.plot(g["tokens_seen"], g["nll"], marker=styles[model]["fmt"], ms=4, color=colour,
                label=tables.describe(results, models, model))
        ax.fill_between(g["tokens_seen"], g["nll"] - band, g["nll"] + band, color=colour, alpha=0.15, lw=0)
    ax.xaxis.set_major_formatter(lambda x, _: curves.tokens_text(x))
    ax.set_xlabel("tokens seen (steps × global batch × tokens per " + ("clip)" if kind == "video" else "image)"))
    ax.set_ylabel("held-out NLL / token (nats)" + (" (ARPG: upper bound)" if any(
        tables.is_arpg(models[m]) for m in stats["model"].unique()) else ""))
    ax.grid(alpha=0.3)
    fig.suptitle(f"Learning curves{' (video)' if kind == 'video' else ''} (mean ± SE over seeds)")
    fig.tight_layout()
    _legend(fig, np.array([ax]))
    with io.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)
    return out


def _curves(preset: dict, results: Path, analysis: Path, rel, kind: str = "images") -> list[str]:
    """The learning-curve section: the figure, then every NLL claim of modality `kind` judged at each curve point
    (tables/curve_differences.csv); nothing when the runs have no curve (trained without --curve-tokens)."""
    name = "video_learning_curves.png" if kind == "video" else "learning_curves.png"
    plot = curve_plot(preset, results, analysis, analysis / "figures" / name, kind)
    if plot is None:
        return []
    data = _read_csv(analysis / "tables" / curves.CURVES_NAME)
    images = sorted({int(v) for v in data["heldout_images"].dropna()})
    level = "###" if kind == "video" else "##"
    parts = [f"{level} Learning curves{' (video)' if kind == 'video' else ''}", "",
             "Held-out NLL per token during training, scored by `par train` at every curve point on the same fixed "
             f"draw of {'/'.join(map(str, images)) or 'the'} held-out {'clips' if kind == 'video' else 'images'} for "
             "every run, against the tokens seen so far; line: mean over seeds, band: ± SE (one seed: the run's own "
             "SE over images).", "", f"![learning curves]({rel(plot)})", ""]
    diffs = _read_csv(analysis / "tables" / f"{curves.DIFFERENCES_NAME}.csv")
    if diffs is not None:
        diffs = diffs[diffs["comparison"].map(verdicts.is_video_row) == (kind == "video")]
    if diffs is not None and not diffs.empty:
        parts += [f"{level}# NLL claims along training", "", curves.DIFFERENCES_NOTE, "",
                  curves.differences_markdown(diffs), ""]
    return parts


def _regime(preset: dict, analysis: Path) -> str:
    """The training regime in words, from tables/runs.csv: steps, sequences, epochs and tokens seen per run, one
    clause per distinct regime with the models it holds."""
    runs = _read_csv(analysis / "tables" / tables.RUNS_NAME)
    if runs is None or "train_steps" not in runs:
        return ""
    runs = runs[(runs["kind"] == "run") & runs["train_steps"].notna()]
    cols = [c for c in ("train_steps", "train_sequences", "train_images", "epochs", "tokens_seen") if c in runs]
    video = set(_models_of(preset, "video"))
    clauses = []
    for values, g in runs.groupby(cols, dropna=False, sort=False):
        models = list(dict.fromkeys(g["model"]))
        unit = "clip" if set(models) <= video else "image"
        clauses.append(f"{_regime_clause(dict(zip(cols, values)), unit)} ({', '.join(models)})")
    return "**Training regime.** Each run: " + "; ".join(clauses) + "." if clauses else ""


def _regime_clause(v: dict, unit: str = "image") -> str:
    """One regime: "200 steps = 12,800 sequences, 0.64 epochs of the 20,000-image train split, 3.28M tokens seen"."""
    fin = lambda k: isinstance(v.get(k), (int, float)) and math.isfinite(v[k])  # noqa: E731
    text = f"{v['train_steps']:,.0f} steps"
    if fin("train_sequences"):
        text += f" = {v['train_sequences']:,.0f} sequences"
    if fin("epochs") and fin("train_images"):
        text += f", {v['epochs']:.2g} epochs of the {v['train_images']:,.0f}-{unit} train split"
    if fin("tokens_seen"):
        text += f", {curves.tokens_text(v['tokens_seen'])} tokens seen"
    return text


def copy_grids(preset: dict, results: Path, analysis: Path, name: str = "grid.png",
               kind: str | None = None) -> dict[str, Path]:
    """Each model's seed-0 sample grid copied to <analysis>/samples/<model>.png (results/ is not committed); for a
    video model it is the filmstrip (a row per class, the frames as columns). `name`: the file of the run's sample
    folder (grid.gif: the animated tiles of a video model, copied to <model>.gif); `kind`: only the models of that
    modality."""
    out = {}
    for model, entry in tables.entries(preset).items():
        if kind is not None and tables.modality(entry) != kind:
            continue
        src = Path(results) / "samples" / model / tables.runs_of(entry)[0] / name
        if not src.exists():
            raise UserError(f"{src}: sample grid missing; {tables.SAMPLE_FIX}")
        out[model] = Path(analysis) / "samples" / f"{model}{Path(name).suffix}"
        with io.atomic_path(out[model]) as tmp:
            shutil.copyfile(src, tmp)
    return out


# ------------------------------------------------------------------------------------------ sections


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _change(before, after, fmt: str) -> str:
    return fmt.format(after) if before is None else f"{fmt.format(before)} → {fmt.format(after)}"


def _tokenizer(results: Path, runs=()) -> list[str]:
    m = _read_json(results / "vq" / "vq_metrics.json")
    acc = tables.classifier_accuracy(results, runs)
    lines = []
    if m:
        b, a = m.get("before", {}), m.get("after", {})
        n_train = m.get("train_images")
        text = f"Trained from scratch on {n_train:,} images" if isinstance(n_train, int) else "Trained from scratch"
        if "psnr_db" in a:
            text += f"; held-out PSNR {_change(b.get('psnr_db'), a['psnr_db'], '{:.2f}')} dB"
        if "codebook_usage" in a:
            text += f", codebook usage {_change(b.get('codebook_usage'), a['codebook_usage'], '{:.1%}')}"
        if m.get("grid"):
            text += f", token grid {m['grid'][0]}×{m['grid'][1]}"
        test = m.get("test") or a.get("test") or {}  # `par train-vq --test-images` writes it under after.test
        if test.get("psnr_db") is not None:
            n = test.get("n_images") or test.get("images")
            se = f" ± {test['psnr_db_se']:.2f}" if test.get("psnr_db_se") is not None else ""
            text += f". Test split (never trained on): reconstruction PSNR {test['psnr_db']:.2f}{se} dB"
            text += f" on {n:,} images" if n else ""
        lines.append(text + ".")
    if acc:
        lines.append(f"Feature classifier (for classifier FID/KID and class accuracy): test accuracy {acc[0]:.1%}"
                     f"{acc[1]}.")
    return ["## Tokenizer and classifier", "", *[x for line in lines for x in (line, "")]] if lines else []


def _how_to_read(tolerance: float = verdicts.TOLERANCE) -> list[str]:
    return ["## How to read the numbers", "",
            "- **NLL / token** (the primary metric): teacher-forced held-out NLL per token, in nats, on the test "
            "split. For n > 1 it is the exact likelihood of what the sampler draws: the product of the within-group "
            "conditionals. It compares orders and n fairly and with far less noise than FID.",
            "- **Sample quality**: FID and KID on the features of a small classifier trained on the train split, and "
            "**class accuracy** (the share of samples the classifier labels as the requested class). Inception FID, "
            "KID and IS (torch-fidelity) are secondary: ImageNet features fit small images poorly.",
            "- **±** is the standard error of the mean across training seeds (std/√n); the `seeds` column gives n. "
            "With one seed it is the run's own standard error where the metric has one, else absent. *KID subset "
            "std* is torch-fidelity's spread over subsets, not a standard error.",
            "- **class info / image**: the class information a model uses, NLL(null class) − NLL(true class) on "
            "held-out tokens summed over an image, in nats. The label carries at most log(classes) (above it, the "
            "null branch of CFG is undertrained); near 0 it barely changes the model's predictions, and the samples "
            "cannot show the class they were asked for.",
            "- **generated / reference**: the number of images each metric compares.",
            "- **Floors**: the same metrics for held-out real images (real vs real) and for the same images passed "
            "through the VQ tokenizer (reconstruction). No model trained on these tokens can be expected to beat "
            "the reconstruction floor, so they show how much of a number is the tokenizer's.",
            "- **Verdicts**: reproduced / not resolved / contradicted (A worse) / uninformative here by the rule "
            "stated in the Verdicts section (Welch's t test at 95 %; ≈ claims: A not worse than B by more than "
            f"{tolerance:.0%} of B).", ""]


def _verdict_rows(analysis: Path, video: bool):
    """The rows of verdicts.csv that judge video claims (`video`) or the others; None when there is no file."""
    import pandas as pd

    csv = analysis / "tables" / "verdicts.csv"
    if not csv.exists():
        return None
    df = pd.read_csv(csv)
    return df[df["comparison"].map(verdicts.is_video_row) == video]


def _verdicts(analysis: Path, with_video: bool = False, with_arpg: bool = True) -> list[str]:
    """The verdicts section (verdicts.md). `with_video`: the preset has video models too, whose claims the video
    section shows: here only the others, with the rule. `with_arpg`: it has ARPG rows (see `_arpg`)."""
    md = analysis / "tables" / "verdicts.md"
    rows = _verdict_rows(analysis, video=False) if with_video and md.exists() else None
    if not md.exists() or (rows is not None and rows.empty):
        return ["## Verdicts", "", "_No claim of Table 3 could be judged: this preset lacks the rows or the metrics a "
                "comparison needs._", ""]
    text = md.read_text().rstrip() if rows is None else f"{verdicts.rule_text(rows)}\n\n{verdicts.to_markdown(rows)}"
    arpg = "; ARPG's claim over Table 2 on sample quality only (see ARPG below)" if with_arpg else ""
    return ["## Verdicts", "", f"Each claim of the paper's Table 3, judged separately on NLL and on sample quality{arpg}.",
            "", text, ""]


def _has_arpg(preset: dict) -> bool:
    return any(tables.is_arpg(e) for e in tables.entries(preset).values())


def _arpg(preset: dict, analysis: Path) -> list[str]:
    """What the ARPG rows of Table 2 are, beside which PAR rows, and their verdicts; nothing without ARPG."""
    import pandas as pd

    if not _has_arpg(preset):
        return []
    csv = analysis / "tables" / "table2.csv"
    t2 = pd.read_csv(csv, index_col="row") if csv.exists() and csv.stat().st_size else pd.DataFrame()
    num = lambda r, k: verdicts.format_value(t2.loc[r].get(k, math.nan))  # noqa: E731
    side = lambda r: (f"**{r}** (`{t2.loc[r, 'model']}`, {t2.loc[r, 'setup']}): {num(r, 'steps')} steps, "  # noqa: E731
                      f"{num(r, 'params')} parameters, {num(r, 'seeds')} seeds")
    pairs = [c for c in verdicts.ARPG_CLAIMS if c.a in t2.index and c.b in t2.index]
    parts = ["## ARPG beside PAR", "",
             "ARPG (Li et al. 2025, arXiv 2503.10568) decodes several tokens per step in a random order. Its rows in "
             "Table 2 sample it at the step counts of PAR n=4 and PAR n=16, with the same backbone budget and the "
             "same training seeds as PAR:", ""]
    parts += [f"- {side(c.a)}; beside {side(c.b)}." for c in pairs] or ["- _No ARPG row of Table 2 has results._"]
    parts += ["", "Its NLL is the mean over random orders per image, an upper bound on the NLL of its mixture over "
              "orders (marked ≤ in the tables), while PAR's is exact. ARPG's claim, better than PAR at equal steps, "
              "is therefore judged on sample quality only:", ""]
    vcsv = analysis / "tables" / "verdicts.csv"
    v = pd.read_csv(vcsv) if vcsv.exists() else pd.DataFrame(columns=verdicts.COLUMNS)
    v = v[v["claim"] == verdicts.ARPG_CLAIM]
    parts += [f"- {r.comparison}, {r.metric}: A − B = {verdicts.format_pm(r.difference, r.se)} → **{r.verdict}**"
              for r in v.itertuples()] or ["- _Not judged: the preset lacks the rows or the metrics it needs._"]
    return parts + [""]


def _table_names(cfg: dict, preset: dict, kind: str) -> list[str]:
    """The tables of config `tables:` of modality `kind` (`tables.table_modality`), sorted."""
    return [n for n in sorted(cfg["tables"]) if tables.table_modality(n, cfg["tables"][n], preset) == kind]


def _tables(cfg: dict, analysis: Path, names=None) -> list[str]:
    parts = ["## Tables", ""]
    for name in sorted(cfg["tables"]) if names is None else names:
        md = analysis / "tables" / f"{name}.md"
        if md.exists():
            parts += [md.read_text().rstrip(), ""]
    return parts


def _samples(preset: dict, results: Path, grids: dict, rel) -> list[str]:
    parts = ["## Samples", "", "One grid per model (its seed-0 run): one row per class, CFG as configured.", ""]
    models = tables.entries(preset)
    for model, path in grids.items():
        if tables.is_video(models[model]):
            continue
        label = tables.describe(results, models, model)
        parts += [f"**{label}** (`{model}`)", "", f"![{model}: one row per class]({rel(path)})", ""]
    return parts


ENTROPY_CAPTIONS = {
    "entropy_maps.png": "H(v_i | v_ref) for a few reference cells (Fig. 9 style).",
    "entropy_increase.png": "Entropy increase of parallel vs. sequential generation for PAR and raster orders "
                            "(Fig. 11 style).",
}


def _entropy(analysis: Path, rel) -> list[str]:
    pngs = sorted((analysis / "entropy").glob("*.png"))
    if not pngs:
        return []
    parts = ["## Conditional entropy of visual tokens (paper §8)", "",
             "Entropies of continuous token features are differential entropies, in nats, and so can be negative.", ""]
    for p in pngs:
        parts += [ENTROPY_CAPTIONS.get(p.name, p.stem.replace("_", " ") + "."), "", f"![{p.stem}]({rel(p)})", ""]
    return parts


# ------------------------------------------------------------------------------------------ video (Table 4)


def _video_tokenizer(results: Path) -> list[str]:
    """The video tokenizer in one line (video/vq/video_vq_metrics.json) and the video floors (rFVD) in another."""
    lines = []
    m = _read_json(results / "video" / "vq" / "video_vq_metrics.json")
    if m:
        words = []
        if isinstance(m.get("params"), int):
            words.append(f"{m['params']:,} parameters")
        if m.get("grid"):
            words.append("token grid " + "×".join(map(str, m["grid"]))
                         + (f" = {m['tokens_per_clip']:,} tokens per clip" if m.get("tokens_per_clip") else ""))
        if m.get("vocab_size"):
            words.append(f"vocabulary {m['vocab_size']:,}")
        if isinstance(m.get("train_clips"), int):
            steps = (m.get("settings") or {}).get("steps")
            window, clip = m.get("train_window"), (m.get("clip") or [None])[0]
            words.append("trained " + (f"{steps:,} steps " if isinstance(steps, int) else "") + f"on {m['train_clips']:,} clips"
                         + (f" in {window}-frame windows" if window and clip and window < clip else ""))
        text = "Video tokenizer: " + (", ".join(words) or "metrics file without a description")
        a = m.get("after") or {}
        for what, d in (("held-out", a), ("test split (never trained on)", a.get("test") or m.get("test") or {})):
            if d.get("psnr_db") is None:
                continue
            se = f" ± {d['psnr_db_se']:.2f}" if d.get("psnr_db_se") is not None else ""
            text += f"; {what}: reconstruction PSNR {d['psnr_db']:.2f}{se} dB"
            n = d.get("n_clips") or d.get("clips")
            text += f" on {n:,} clips" if isinstance(n, int) else ""
            if d.get("codebook_usage") is not None:
                text += f", codebook usage {d['codebook_usage']:.1%}"
            if d.get("code_entropy_bits") is not None:
                text += f", code entropy {d['code_entropy_bits']:.2f} bits"
        lines.append(text + ".")
    floors = {f: tables.summarize(fr) for f, fr in tables.read_floors(results, "video").items()}
    fvd = {f: s["fvd"] for f, s in floors.items() if "fvd" in s and s["fvd"].n}
    if fvd:
        words = {"video-real": "held-out real clips", "video-recon": "the same clips through the tokenizer, its "
                                                                      "reconstruction FVD (rFVD)"}
        n = sorted({int(s["n_samples"].mean) for s in floors.values() if "n_samples" in s and s["n_samples"].n})
        lines.append("Floors (FVD against the models' reference): "
                     + "; ".join(f"{words[f]} {verdicts.format_pm(st.mean, st.se)}" for f, st in fvd.items())
                     + (f" ({'/'.join(f'{k:,}' for k in n)} clips)" if n else "")
                     + ". No model trained on these tokens can be expected to beat the rFVD.")
    return ["### Video tokenizer and floors", "", *[x for line in lines for x in (line, "")]] if lines else []


def _video_how_to_read() -> list[str]:
    return ["- **FVD** (sample quality): Fréchet distance between the I3D (Kinetics-400) features of generated and "
            "reference clips; lower is better. It is biased upward when few clips are compared, so FVDs compare only "
            "at equal clip counts (Table 4's note gives them).",
            "- **NLL / token**: teacher-forced held-out NLL of the video tokens, in nats; for n > 1 the exact "
            "likelihood of what the sampler draws, as for images.",
            "- **±**: the standard error across training seeds; with one seed the run's own (FVD: bootstrap over its "
            "generated clips; NLL: over held-out clips).",
            "- **s / clip**: seconds to generate one clip at batch size 1 (the paper's: an A100).",
            "- **Floors**: FVD of held-out real clips and of the same clips through the video tokenizer (rFVD).", ""]


def _paper_gap() -> str:
    """How far apart the paper's own FVDs of its ≈ claim are, against the rule's tolerance."""
    a, b = tables.PAPER["ucf-par-n4"]["fvd"], tables.PAPER["ucf-par-n1"]["fvd"]
    return (f"For scale: in the paper PAR-4×'s FVD is {a / b - 1:+.1%} of PAR-1×'s ({a} vs {b}), worse by more "
            f"than the {verdicts.TOLERANCE:.0%} margin this rule gives an ≈ claim.")


def _video_verdicts(analysis: Path, with_images: bool) -> list[str]:
    md, rows = analysis / "tables" / "verdicts.md", _verdict_rows(analysis, video=True)
    parts = ["### Verdicts (video)", ""]
    if rows is None or rows.empty:
        return parts + ["_No claim of Table 4 could be judged: this preset lacks the rows or the metrics a comparison "
                        "needs._", ""]
    parts += ["Each claim of the paper's Table 4, judged separately on NLL and on FVD.", ""]
    if with_images:
        parts += ["By the rule of the Verdicts section." + verdicts.VIDEO_RULE + " " + verdicts.family_text(rows), "",
                  verdicts.to_markdown(rows)]
    else:
        parts += [md.read_text().rstrip()]
    return parts + ["", _paper_gap(), ""]


def _video_samples(preset: dict, results: Path, grids: dict, gifs: dict, rel) -> list[str]:
    parts = ["### Video samples", "", "One per model (its seed-0 run), one row per class, CFG as configured: the clips "
             "animated, then as a filmstrip (the frames as columns).", ""]
    models = tables.entries(preset)
    for model, gif in gifs.items():
        parts += [f"**{tables.describe(results, models, model)}** (`{model}`)", "",
                  f"![{model}: animated clips, one row per class]({rel(gif)})", "",
                  f"![{model}: filmstrip, one row per class, frames as columns]({rel(grids[model])})", ""]
    return parts


def _video(cfg: dict, preset: dict, results: Path, analysis: Path, grids: dict, rel,
           with_images: bool) -> list[str]:
    """The "Video (Table 4)" section: how to read it, the verdicts, Table 4, the video tokenizer and floors, a
    speed-vs-FVD figure and the samples (GIFs copied to <analysis>/samples/<model>.gif)."""
    gifs = copy_grids(preset, results, analysis, "grid.gif", kind="video")
    runs = _all_runs(preset, results, "video")
    plot = speed_plot(preset, results, analysis / "figures" / "video_speed_vs_quality.png",
                      {m: tables.summarize(r) for m, r in runs.items()}, kind="video")
    parts = ["## Video (Table 4)", "",
             "The paper's Table 4: class-conditional video generation (UCF-101 in the paper). The video models below "
             "generate a clip as the token sequence of a video tokenizer, n tokens per step as for images.", ""]
    parts += _video_how_to_read() + _video_verdicts(analysis, with_images)
    for name in _table_names(cfg, preset, "video"):
        md = analysis / "tables" / f"{name}.md"
        if md.exists():
            parts += [md.read_text().rstrip(), ""]
    parts += _video_tokenizer(results)
    parts += _curves(preset, results, analysis, rel, kind="video")
    if plot:
        parts += ["### Speed vs. FVD", "", "Mean ± SE over seeds; dashed lines: floors.", "",
                  f"![speed vs FVD]({rel(plot)})", ""]
    return parts + _video_samples(preset, results, grids, gifs, rel)


def _run_commits(analysis: Path) -> list[str]:
    """The commits the runs were trained and sampled at (tables/runs.csv), each with its number of runs; runs made
    before commits were recorded count as "unrecorded"."""
    import pandas as pd

    csv = analysis / "tables" / tables.RUNS_NAME
    if not csv.exists():
        return []
    runs = pd.read_csv(csv)
    runs = runs[runs["kind"] == "run"]
    out = []
    for col, what in (("train_commit", "trained"), ("sample_commit", "sampled")):
        counts = runs[col].fillna(provenance.UNRECORDED).value_counts() if col in runs else {}
        out.append(f"- runs {what} at: " + (", ".join(f"`{c}` ({n} run{'s' * (n != 1)})" for c, n in counts.items())
                                            or provenance.UNRECORDED))
    return out


def _timing(results: Path) -> list[str]:
    """Where the run's time went: job-seconds per rule from Snakemake's benchmark files
    (`<results>/benchmarks/<rule>/…tsv`, one per job). Jobs run side by side with `--cores`, so the sum exceeds the
    elapsed time; the share says which stage to make faster."""
    import pandas as pd

    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        try:
            b = pd.read_csv(tsv, sep="\t")
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        rule = tsv.relative_to(results / "benchmarks").parts[0]
        if len(b) and {"s", "cpu_time"} <= set(b.columns) and rule != "report":  # this job, or its previous run
            rows.append({"rule": rule, "s": float(b["s"].iloc[-1]), "cpu": float(b["cpu_time"].iloc[-1])})
    if not rows:
        return []
    t = pd.DataFrame(rows).groupby("rule").agg(jobs=("s", "size"), s=("s", "sum"), cpu=("cpu", "sum"))
    t = t.sort_values("s", ascending=False)
    total = t["s"].sum()
    lines = ["| rule | jobs | job time (min) | share | CPU time (min) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {rule} | {int(r.jobs)} | {r.s / 60:.1f} | {r.s / total:.0%} | {r.cpu / 60:.1f} |"
              for rule, r in t.iterrows()]
    return ["## Where the time went", "",
            f"Snakemake's benchmark file of every job (`{results}/benchmarks/`): {total / 60:.1f} job-minutes in all "
            "(jobs run side by side, so more than the elapsed time; the report's own job is left out).", "",
            *lines, ""]


def _provenance(preset_name: str, preset: dict, results: Path, analysis: Path) -> list[str]:
    import yaml

    return ["## Provenance", "", f"- report rendered at git commit: `{git_provenance(analysis)}`",
            *_run_commits(analysis), f"- results: `{results}`", "",
            "Configuration of this preset:", "", "```yaml",
            yaml.safe_dump({"preset": preset_name, **preset}, sort_keys=False, allow_unicode=True).rstrip(), "```", ""]


# ------------------------------------------------------------------------------------------ Markdown → HTML

_LIST_ITEM = re.compile(r"^\s*([-*+]|\d+\.)\s")


def space_lists(text: str) -> str:
    """A blank line before every list that follows a paragraph (python-markdown renders it as text otherwise)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        prev = out[-1] if out else ""
        if not fenced and _LIST_ITEM.match(line) and prev.strip() and not _LIST_ITEM.match(prev):
            out.append("")
        out.append(line)
    return "\n".join(out) + "\n"


# The page reads at 1280 px without horizontal scrolling: tables are split to fit it (`tables.column_groups`) and
# their text wraps (numbers do not), figures shrink to the page, long words and code lines wrap.
STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45;"
         "overflow-wrap:anywhere}"
         "table{border-collapse:collapse;margin:1em 0;font-size:90%;overflow-wrap:normal}"
         "td,th{border:1px solid #ccc;padding:3px 6px}td[style*=right]{white-space:nowrap}"
         "img{max-width:100%;height:auto}pre{background:#f5f5f5;padding:1em;white-space:pre-wrap}")


def to_html(text: str, title: str) -> str:
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code", "sane_lists"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>"
            f"</head><body>{body}</body></html>")


# ------------------------------------------------------------------------------------------ the report


def build_report(config_path, preset_name: str, results: str | Path, analysis: str | Path) -> Path:
    cfg, preset = load_config(config_path, preset_name)
    return render_report(cfg, preset, preset_name, results, analysis)


def render_report(cfg: dict, preset: dict, preset_name: str, results, analysis) -> Path:
    """`build_report` on an already loaded config: writes <analysis>/report.md and report.html."""
    results, analysis = Path(results), Path(analysis)
    rel = lambda p: os.path.relpath(p, analysis)  # noqa: E731 — links relative to the report
    images, video = bool(_models_of(preset, "images")), bool(_models_of(preset, "video"))
    grids = copy_grids(preset, results, analysis)
    parts = [f"# PAR reproduction — preset `{preset_name}`", ""]
    if preset_name == "tiny":
        parts += [SMOKE_TEST, ""]
    regime = _regime(preset, analysis)
    parts += ["Parallelized Autoregressive Visual Generation (Wang et al., arXiv 2412.15119). Every number below is "
              "read from a result file of this run; the paper's values appear only in columns marked (paper)."
              + (f" {regime}" if regime else ""), ""]
    if images:
        runs = _all_runs(preset, results, "images")
        plot = speed_plot(preset, results, analysis / "figures" / "speed_vs_quality.png",
                          {m: tables.summarize(r) for m, r in runs.items()})
        parts += (_verdicts(analysis, with_video=video, with_arpg=_has_arpg(preset)) + _arpg(preset, analysis)
                  + _how_to_read()
                  + _tokenizer(results, runs.values()))
        parts += _tables(cfg, analysis, _table_names(cfg, preset, "images"))
        parts += _curves(preset, results, analysis, rel)
        if plot:
            parts += ["## Speed vs. quality", "", "Mean ± SE over seeds; dashed lines: floors"
                      + ("; red diamonds: ARPG (its NLL an upper bound)." if _has_arpg(preset) else "."), "",
                      f"![speed vs quality]({rel(plot)})", ""]
        parts += _samples(preset, results, grids, rel) + _entropy(analysis, rel)
    if video:
        parts += _video(cfg, preset, results, analysis, grids, rel, images)
    parts += _timing(results) + _provenance(preset_name, preset, results, analysis)
    text = space_lists("\n".join(parts))
    io.write_text(analysis / "report.md", text)
    io.write_text(analysis / "report.html", to_html(text, f"PAR reproduction — {preset_name}"))
    return analysis / "report.md"


def cmd_report(args) -> int:
    print(build_report(args.config, args.preset, args.results, args.analysis))
    return 0


def register(sub):
    p = sub.add_parser("report", help="<analysis>/report.md + report.html from tables, grids and figures")
    add_run_arguments(p)
    p.add_argument("--analysis", default="analysis", help="output folder of the report (default: analysis)")
    p.set_defaults(func=cmd_report)
