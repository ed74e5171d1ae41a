"""Learning curves (#24): held-out NLL per token against tokens seen, at every checkpoint of every training run.

`par train --curve-tokens` appends a record {"step", "tokens_seen", "heldout_nll", "heldout_nll_se", …} to the run's
log.jsonl at every `curve_every` steps and the last (a fixed draw of held-out images, the same for every run of a
preset). `par tables` gathers them into `curves.csv` (one row per run and point) and judges every NLL claim of
Table 3 at each point by the verdict rule of par/analysis/verdicts.py (`curve_differences.md/.csv`), so that a reader
sees whether a gap between two models closes or widens with training, not only where it stands at the end.
`par report` draws the curves (mean ± SE over seeds per model).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from par import io
from par.analysis import verdicts
from par.analysis.page import column_groups
from par.analysis.verdicts import format_pm, mean_se

CURVES_NAME = "curves.csv"
DIFFERENCES_NAME = "curve_differences"  # .md and .csv
COLUMNS = ["model", "run", verdicts.ROWS, "step", "epoch", "tokens_seen", "heldout_nll", "heldout_nll_se",
           "heldout_images"]
NLL_CLAIMS = tuple(c for c in verdicts.CLAIMS if verdicts.NLL in c.metrics)


def read_curve(run_dir: Path) -> list[dict]:
    """The learning-curve records of a run's log.jsonl, in step order; none without a log or a curve. A line a kill
    cut short is skipped (the next `par train` drops it too)."""
    log = Path(run_dir) / "log.jsonl"
    if not log.exists():
        return []
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "heldout_nll" in rec:
            out.append(rec)
    return sorted(out, key=lambda r: r["step"])


def curves_table(results: Path, models: dict, runs: dict, spots: dict):
    """curves.csv: one row per (model, run, point) of every model trained here (`models`: the preset's entries as
    `tables.entries` gives them; an entry `trained_as` another, or with released weights, has no curve of its own).
    `runs`: model → its run names; `spots`: model → the "table:row" places it fills, as runs.csv's `rows`."""
    import pandas as pd

    rows = []
    for model, entry in models.items():
        if entry.get("trained_as") or entry.get("checkpoint") or entry.get("checkpoint_url"):
            continue
        for run in runs[model]:
            for rec in read_curve(Path(results) / "models" / model / run):
                rows.append({"model": model, "run": run, verdicts.ROWS: verdicts.ROW_SEP.join(spots.get(model, []))}
                            | {k: rec.get(k) for k in COLUMNS[3:]})
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(curves):
    """Per model and step: tokens seen, mean held-out NLL over its runs and its SE (across seeds; with one run, the
    run's own over images), the number of runs. What the report's figure draws."""
    import pandas as pd

    out = []
    for (model, step), g in curves.groupby(["model", "step"], sort=False):
        s = mean_se(g["heldout_nll"].tolist(), g["heldout_nll_se"].iloc[0] if len(g) == 1 else None)
        out.append({"model": model, "step": step, "tokens_seen": g["tokens_seen"].mean(), "nll": s.mean,
                    "se": s.se, "n": s.n})
    return pd.DataFrame(out, columns=["model", "step", "tokens_seen", "nll", "se", "n"])


def runs_at(curves, step: int) -> dict:
    """`runs[table][row]` as `verdicts.judge_claims` takes it, from the curve points at `step`: one row per run
    with its held-out NLL (`nll`) and that NLL's own SE (`nll_se`)."""
    runs: dict = {}
    at = curves[curves["step"] == step]
    for _, frame in at.groupby("model", sort=False):
        frame = frame.rename(columns={"heldout_nll": "nll", "heldout_nll_se": "nll_se"}).reset_index(drop=True)
        spots = frame[verdicts.ROWS].iloc[0]
        for spot in spots.split(verdicts.ROW_SEP) if isinstance(spots, str) and spots else []:
            table, _, label = spot.partition(":")
            runs.setdefault(table, {})[label] = frame
    return runs


def differences(curves, claims=NLL_CLAIMS):
    """Every NLL claim judged at every step both of its rows reached: claim, comparison, step, tokens seen,
    difference A − B ± SE, Welch df, seeds, verdict (the rule of the Verdicts section, at that point)."""
    import pandas as pd

    keep = ["claim", "comparison", "difference", "se", "df", "n_a", "n_b", "verdict"]
    parts = []
    for step in sorted(curves["step"].dropna().unique()):
        judged = verdicts.judge_claims(runs_at(curves, int(step)), claims)
        if judged.empty:
            continue
        tokens = curves.loc[curves["step"] == step, "tokens_seen"].max()
        parts.append(judged[keep].assign(step=int(step), tokens_seen=tokens))
    if not parts:
        return pd.DataFrame(columns=["claim", "comparison", "step", "tokens_seen", *keep[2:]])
    return pd.concat(parts, ignore_index=True)[["claim", "comparison", "step", "tokens_seen", *keep[2:]]]


def tokens_text(tokens) -> str:
    """A token count in words: 3.3M, 820k, 512."""
    try:
        tokens = float(tokens)
    except (TypeError, ValueError):
        return "?"
    if not math.isfinite(tokens):
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if tokens >= scale:
            return f"{tokens / scale:.3g}{unit}"
    return f"{tokens:.0f}"


def decided(verdict: str) -> bool:
    return str(verdict).startswith(("reproduced", "contradicted"))


def differences_markdown(diffs) -> str:
    """One row per comparison, one column per checkpoint (steps, tokens seen): A − B ± SE, in bold where the rule
    decides at that point; then the verdict at the last one."""
    import pandas as pd

    steps = sorted(diffs["step"].unique())
    heads = {s: f"step {s} ({tokens_text(diffs.loc[diffs['step'] == s, 'tokens_seen'].max())} tokens)"
             for s in steps}
    rows = []
    for comparison, g in diffs.groupby("comparison", sort=False):
        row = {"comparison": comparison}
        for r in g.itertuples():
            cell = format_pm(r.difference, r.se)
            row[heads[r.step]] = f"**{cell}**" if decided(r.verdict) else cell
        row["verdict at the last point"] = g.sort_values("step")["verdict"].iloc[-1]
        rows.append(row)
    shown = pd.DataFrame(rows, columns=["comparison", *heads.values(), "verdict at the last point"]).fillna("–")
    return _split_markdown(shown, left={"comparison", "verdict at the last point"})


def _split_markdown(df, left: set) -> str:
    """Markdown in parts that fit the report's page (`page.column_groups`), text columns `left`-aligned."""
    return "\n\n".join(df[cols].to_markdown(index=False, disable_numparse=True,
                                             colalign=["left" if c in left else "right" for c in cols])
                        for cols in column_groups(df))


DIFFERENCES_NOTE = ("A − B in held-out NLL per token (nats; negative: A lower, as the paper claims for \"better\"; "
                    "for ≈ claims A may be worse by up to the margin), mean over seeds ± SE, at each learning-curve "
                    "point of `par train` (the same fixed draw of held-out images for every run). **Bold**: the rule "
                    "of the Verdicts section decides at that point (reproduced or contradicted). The Verdicts table "
                    "judges the final weights on `par nll`'s larger draw, so its verdict can differ from the last "
                    "point's here.")


def write_curves(curves, out: Path) -> list[Path]:
    """curves.csv and, when an NLL claim can be judged along them, curve_differences.md/.csv in `out`; stale copies
    are removed when there is nothing to write."""
    out = Path(out)
    paths = [out / CURVES_NAME, out / f"{DIFFERENCES_NAME}.md", out / f"{DIFFERENCES_NAME}.csv"]
    diffs = differences(curves) if not curves.empty else None
    written = []
    if curves.empty:
        paths[0].unlink(missing_ok=True)
    else:
        io.write_text(paths[0], curves.to_csv(index=False))
        written.append(paths[0])
    if diffs is None or diffs.empty:
        for p in paths[1:]:
            p.unlink(missing_ok=True)
        return written
    io.write_text(paths[1], f"{DIFFERENCES_NOTE}\n\n{differences_markdown(diffs)}\n")
    io.write_text(paths[2], diffs.to_csv(index=False))
    return written + paths[1:]
