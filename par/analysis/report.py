"""`par report`: analysis/report.md (+ .html), the page a person reads first.

It stitches together what the other stages wrote: the tables, the sample grids, a speed-vs-FID plot
(steps and seconds per image vs FID for n = 1 / 4 / 16), the entropy heatmaps, the tokenizer's numbers,
and the exact configuration and git commit that produced them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from par import io
from par.analysis.tables import model_row
from par.config import add_run_arguments, load_config


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def speed_plot(cfg, preset, results: Path, out: Path) -> Path | None:
    """FID against steps and against seconds per image, one point per model of Table 3(b)/Table 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = []
    for spec in (cfg["tables"].get("table3b", {}), cfg["tables"].get("table2", {})):
        for label, cands in spec.items():
            model = next((m for m in cands if m in preset["models"]), None)
            if model and model not in [p[1] for p in pts]:
                row, _ = model_row(results, model)
                if "fid" in row:
                    pts.append((label, model, row["steps"], row["seconds_per_image"], row["fid"]))
    if not pts:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, idx, xlabel in ((axes[0], 2, "forward calls (steps)"), (axes[1], 3, "seconds / image (batch 1)")):
        for label, model, *vals in pts:
            ax.scatter(vals[idx - 2], vals[2], s=40)
            ax.annotate(f"{label}", (vals[idx - 2], vals[2]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID ↓")
        ax.grid(alpha=0.3)
    fig.suptitle("Speed vs. quality")
    fig.tight_layout()
    with io.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out


def build_report(config_path, preset_name: str, results: str | Path, analysis: str | Path) -> Path:
    import markdown
    import yaml

    cfg, preset = load_config(config_path, preset_name)
    results, analysis = Path(results), Path(analysis)
    rel = lambda p: os.path.relpath(p, analysis)  # noqa: E731 — links relative to the report
    parts = [f"# PAR reproduction — preset `{preset_name}`", "",
             "Parallelized Autoregressive Visual Generation (Wang et al., arXiv 2412.15119). Every number below is "
             "read from a result file of this run; the paper's values appear only in columns marked (paper).", ""]
    vqm = results / "vq" / "vq_metrics.json"
    if vqm.exists():
        m = json.loads(vqm.read_text())
        b, a = m["before"], m["after"]
        parts += ["## Tokenizer", "",
                  f"Trained from scratch on {m['train_images']} images; held-out PSNR {b['psnr_db']:.2f} → "
                  f"{a['psnr_db']:.2f} dB, codebook usage {b['codebook_usage']:.1%} → {a['codebook_usage']:.1%}, "
                  f"token grid {m['grid'][0]}×{m['grid'][1]}.", ""]
    parts += ["## Tables", ""]
    for name in sorted(cfg["tables"]):
        md = analysis / "tables" / f"{name}.md"
        if md.exists():
            parts += [md.read_text().replace("### ", "### "), ""]
    plot = speed_plot(cfg, preset, results, analysis / "figures" / "speed_vs_fid.png")
    if plot:
        parts += ["## Speed vs. quality", "", f"![speed vs FID]({rel(plot)})", ""]
    parts += ["## Samples", "", "One row per class (the first 8 classes), 8 samples each, CFG as configured.", ""]
    for model in sorted(preset["models"]):
        grid = results / "samples" / model / "grid.png"
        if grid.exists():
            parts += [f"**{model}** ({preset['models'][model]})", "", f"![{model}]({rel(grid)})", ""]
    ent = analysis / "entropy"
    if (ent / "entropy_maps.png").exists():
        parts += ["## Conditional entropy of visual tokens (paper §8)", "",
                  "H(v_i | v_ref) for a few reference cells (Fig. 9 style) and the entropy increase of parallel vs. "
                  "sequential generation for PAR and raster orders with n = 4 (Fig. 11 style).", "",
                  f"![entropy maps]({rel(ent / 'entropy_maps.png')})", "",
                  f"![entropy increase]({rel(ent / 'entropy_increase.png')})", ""]
    parts += ["## Provenance", "", f"- git commit: `{git_commit()}`", f"- results: `{results}`", "",
              "Configuration of this preset:", "", "```yaml",
              yaml.safe_dump({"preset": preset_name, **preset}, sort_keys=False).rstrip(), "```", ""]
    text = "\n".join(parts)
    io.write_text(analysis / "report.md", text)
    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    html = ("<!doctype html><html><head><meta charset='utf-8'><title>PAR reproduction</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
            "img{max-width:100%}pre{background:#f5f5f5;padding:1em;overflow:auto}</style></head><body>"
            f"{body}</body></html>")
    io.write_text(analysis / "report.html", html)
    return analysis / "report.md"


def cmd_report(args) -> int:
    print(build_report(args.config, args.preset, args.results, args.analysis))
    return 0


def register(sub):
    p = sub.add_parser("report", help="analysis/report.md + report.html from tables, grids and figures")
    add_run_arguments(p)
    p.add_argument("--analysis", default="analysis", help="output folder of the report (default: analysis)")
    p.set_defaults(func=cmd_report)
