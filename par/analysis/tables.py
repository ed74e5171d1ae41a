"""`par tables`: Table 2 and Table 3(a)–(e) from result files, as Markdown, CSV and LaTeX.

Every cell of our rows is read from a result file: `metrics/<model>.json` (`par evaluate`),
`samples/<model>/sampling.json` (`par sample`) and `models/<model>/config.json` (`par train`). A missing
metric is written as "–" with its reason in a footnote. The only literal numbers here are the paper's
reported values (`PAPER`), printed in their own, labelled columns for the `paper` preset.
"""

from __future__ import annotations

import json
from pathlib import Path

from par import io
from par.config import add_run_arguments, load_config
from par.errors import UserError

# Reported in the paper / the authors' README (ImageNet 256, FID-50k; latency: A100, batch 1). Labelled as such.
PAPER = {
    "llamagen-3B": {"fid": 2.18, "steps": 576, "seconds_per_image": 12.41},
    "par-3B-n4": {"fid": 2.29, "steps": 147, "seconds_per_image": 3.46},
    "par-3B-n16": {"fid": 2.88, "steps": 51, "seconds_per_image": 1.31},
    "par-XL-n4": {"fid": 2.61, "steps": 147},
    "par-XXL-n4": {"fid": 2.35, "steps": 147},
    "llamagen-XL": {"fid": 2.62, "steps": 576},
    "llamagen-XXL": {"fid": 2.34, "steps": 576},
}

COLUMNS = [  # (key, header, format)
    ("steps", "steps", "{:d}"),
    ("seconds_per_image", "s / image", "{:.3f}"),
    ("params", "params", "{:,}"),
    ("fid", "FID ↓", "{:.2f}"),
    ("kid", "KID ↓", "{:.4f}"),
    ("isc", "IS ↑", "{:.1f}"),
    ("precision", "precision ↑", "{:.3f}"),
    ("recall", "recall ↑", "{:.3f}"),
]
TITLES = {
    "table2": "Table 2 — class-conditional generation: steps, latency, quality",
    "table3a": "Table 3(a) — initial sequential tokens",
    "table3b": "Table 3(b) — tokens per step n",
    "table3c": "Table 3(c) — attention inside a parallel group",
    "table3d": "Table 3(d) — which tokens are generated in parallel (raster/distant × one/multi)",
    "table3e": "Table 3(e) — model scaling (PAR n = 4)",
}


def model_row(results: Path, model: str) -> tuple[dict, list[str]]:
    """Values of one model from its result files, and notes on what is unavailable."""
    mpath, spath = results / "metrics" / f"{model}.json", results / "samples" / model / "sampling.json"
    for p in (mpath, spath):
        if not p.exists():
            raise UserError(f"{p}: result file missing; run the workflow up to `par evaluate` / `par sample`")
    metrics, sampling = json.loads(mpath.read_text()), json.loads(spath.read_text())
    row = {k: v for k, v in metrics["metrics"].items() if v is not None}
    row["steps"] = sampling["forward_calls"]
    row["seconds_per_image"] = sampling["seconds_per_image_batch1"]
    row["n_samples"] = metrics.get("n_samples")
    cfg = results / "models" / model / "config.json"
    if cfg.exists():
        row["params"] = json.loads(cfg.read_text())["params"]
    notes = [f"{k}: {why}" for k, why in metrics.get("unavailable", {}).items()]
    return row, notes


def build_table(name: str, rows_spec: dict, preset: dict, results: Path, with_paper: bool):
    import pandas as pd

    records, notes = [], []
    for label, candidates in rows_spec.items():
        model = next((m for m in candidates if m in preset["models"]), None)
        if model is None:
            continue
        values, why = model_row(results, model)
        rec = {"row": label, "model": model, **values}
        if with_paper and model in PAPER:
            rec.update({f"paper {k}": v for k, v in PAPER[model].items()})
        records.append(rec)
        notes += [f"{model} — {w}" for w in why]
    if not records:
        return None, notes
    df = pd.DataFrame.from_records(records).set_index("row")
    always = {"steps", "seconds_per_image", "fid", "isc", "precision", "recall"}  # shown even when unavailable
    keep = ["model"] + [c for c, _, _ in COLUMNS if c in df or c in always] + [c for c in df if c.startswith("paper ")]
    df = df.reindex(columns=keep)
    for col, (_, header, _) in ((c, x) for x in COLUMNS for c in [x[0]] if x[0] in always):
        if df[col].isna().all() and not any(n.split(" — ")[-1].startswith(col) for n in notes):
            notes.append(f"{header.split()[0]}: not computed for this preset (not in `evaluate.metrics`)")
    if name == "table2":
        keep = [c for c in keep if c != "params"]
    return df[keep].astype(object).where(df[keep].notna(), None), sorted(set(notes))


def _fmt(df):
    out = df.copy().astype(object)
    fmts = {k: f for k, _, f in COLUMNS} | {f"paper {k}": f for k, _, f in COLUMNS}
    for col in out:
        if col in fmts:
            out[col] = [("–" if v is None or v != v else fmts[col].format(int(v) if "d}" in fmts[col] or "," in fmts[col]
                                                                            else v)) for v in df[col]]
    headers = {k: h for k, h, _ in COLUMNS} | {f"paper {k}": f"{h} (paper)" for k, h, _ in COLUMNS}
    return out.rename(columns=headers)


def write_tables(config_path, preset_name: str, results: str | Path, out: str | Path) -> list[Path]:
    cfg, preset = load_config(config_path, preset_name)
    results, out = Path(results), Path(out)
    written = []
    for name, spec in sorted(cfg["tables"].items()):
        df, notes = build_table(name, spec, preset, results, with_paper=preset_name == "paper")
        title = TITLES.get(name, name)
        if df is None:
            text = f"### {title}\n\n_No model of preset `{preset_name}` fills this table._\n"
            io.write_text(out / f"{name}.md", text)
            io.write_text(out / f"{name}.csv", "")
            io.write_text(out / f"{name}.tex", f"% {title}: no rows for preset {preset_name}\n")
        else:
            shown = _fmt(df)
            foot = "".join(f"\n- {n}" for n in notes)
            io.write_text(out / f"{name}.md", f"### {title}\n\nPreset `{preset_name}`; every value is read from "
                          f"`{results}`." + ("" if preset_name != "paper" else " Columns marked (paper) are the "
                          "paper's reported numbers.") + f"\n\n{shown.to_markdown()}\n"
                          + (f"\nUnavailable:{foot}\n" if notes else ""))
            io.write_text(out / f"{name}.csv", df.to_csv())
            io.write_text(out / f"{name}.tex", shown.to_latex(caption=title, label=f"tab:{name}", escape=True))
        written += [out / f"{name}.{e}" for e in ("md", "csv", "tex")]
    return written


def cmd_tables(args) -> int:
    for p in write_tables(args.config, args.preset, args.results, args.out):
        print(p)
    return 0


def register(sub):
    p = sub.add_parser("tables", help="Tables 2 and 3(a)-(e) from result files (Markdown, CSV, LaTeX)")
    add_run_arguments(p)
    p.add_argument("--out", default="analysis/tables", help="output folder (default: analysis/tables)")
    p.set_defaults(func=cmd_tables)
