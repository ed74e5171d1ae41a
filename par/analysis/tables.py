"""`par tables`: Table 2, Table 3(a)–(e) and Table 4 (video) from result files, as Markdown, CSV and LaTeX, and the
verdict on each claim of Tables 3 and 4 (`verdicts.md/.csv`, see par/analysis/verdicts.py).

A model is trained with `seeds` seeds; each trained instance is a run `<model>/s<k>`. Every cell is the mean over
a model's runs ± its standard error, read from the run's result files:
`metrics/<model>/s<k>.json` (`par evaluate`), `samples/<model>/s<k>/sampling.json` (`par sample`),
`models/<model>/s<k>/config.json` (`par train`, parameters) and, when present, `nll/<model>/s<k>.json` (held-out
NLL). `floors/{real,recon}.json`, when present, add the rows no model can beat. A missing metric is written as
"–" with its reason in a footnote. The only literal numbers here are the paper's reported values (`PAPER`),
printed in their own, labelled columns for the `paper` presets and `ucf101`.

`runs.csv` beside the tables holds the per-run data behind every cell: one row per (model, run) with every metric,
its own SE, training steps, tokens seen and the commits that trained and sampled it ("unrecorded" for runs made
before commits were recorded), then the floors and chance. The verdicts are judged from it alone. A table too wide
for the report's page is split into parts that repeat the row label (`column_groups`). `curves.csv` holds every
run's learning curve and `curve_differences.md/.csv` every NLL claim judged along it (par/analysis/curves.py).

Table 4 (video) is built the same way from the models with `modality: video`: `par fvd` writes their
`metrics/<model>/s<k>.json` (FVD and its bootstrap SE over generated clips), their latency is seconds per clip, and
its floors are `floors/video-{real,recon}.json` (real clips; the video tokenizer's reconstruction, rFVD). A table
holds one modality; image tables get the image floors only, a video table the video floors only.

ARPG (`order: arpg`, the peer row of Table 2) is a model like any other, except that its held-out NLL is an upper
bound (the mean over random orders; its NLL file says `"kind": "random-order upper bound"`): its NLL cells are
printed "≤ …" with a footnote. An entry with `trained_as: <model>` samples that model's runs: it inherits that
entry's order, size and seeds, and its parameter count is read from `models/<model>/`.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from par import io, provenance
from par.analysis import curves, verdicts
from par.analysis.page import PAGE_CHARS, TEXT, column_groups, column_width  # noqa: F401 (used by report, tests)
from par.analysis.verdicts import Stat, format_pm, format_value, mean_se
from par.config import add_run_arguments, load_config
from par.errors import UserError

# Reported in the paper / the authors' README (ImageNet 256, FID-50k; latency: A100, batch 1); ARPG: its README's
# model zoo (arXiv 2503.10568). Labelled as such.
PAPER = {
    "llamagen-3B": {"fid": 2.18, "steps": 576, "seconds_per_image": 12.41},
    "par-3B-n4": {"fid": 2.29, "steps": 147, "seconds_per_image": 3.46},
    "par-3B-n16": {"fid": 2.88, "steps": 51, "seconds_per_image": 1.31},
    "par-XL-n4": {"fid": 2.61, "steps": 147},
    "par-XXL-n4": {"fid": 2.35, "steps": 147},
    "llamagen-XL": {"fid": 2.62, "steps": 576},
    "llamagen-XXL": {"fid": 2.34, "steps": 576},
    "arpg-L": {"fid": 2.44, "isc": 292, "steps": 64, "schedule": "cosine", "cfg_scale": 4.5},
    "arpg-XL": {"fid": 2.10, "isc": 331, "steps": 64, "schedule": "cosine", "cfg_scale": 6.0},
    "arpg-XXL": {"fid": 1.94, "isc": 340, "steps": 64, "schedule": "cosine", "cfg_scale": 7.5},
    # the paper's Table 4: UCF-101 class-conditional video, FVD; latency in seconds per clip (A100, batch 1)
    "ucf-par-n1": {"fvd": 94.1, "steps": 1280, "seconds_per_image": 43.30},
    "ucf-par-n4": {"fvd": 99.5, "steps": 323, "seconds_per_image": 11.27},
    "ucf-par-n16": {"fvd": 103.4, "steps": 95, "seconds_per_image": 3.44},
}
PAPER_ONLY = {"schedule": "schedule", "cfg_scale": "CFG"}  # reported settings that are no column of ours

def reports_paper(preset_name: str) -> bool:
    """The ImageNet presets (`paper`, `paper-released`) and the UCF-101 one (`ucf101`) print the reported values
    beside theirs."""
    return preset_name.startswith("paper") or preset_name == "ucf101"


COLUMNS = {  # key → header, in table order
    "steps": "steps",
    "seconds_per_image": "s / image",
    "params": "params",
    "nll": "NLL / token ↓",
    "class_info": "class info / image",
    "fvd": "FVD ↓",
    "cls_fid": "classifier FID ↓",
    "cls_kid": "classifier KID ↓",
    "class_accuracy": "class accuracy ↑",
    "fid": "Inception FID ↓",
    "kid": "Inception KID ↓",
    "kid_std": "KID subset std",
    "isc": "IS ↑",
    "isc_std": "IS split std",
    "precision": "precision ↑",
    "recall": "recall ↑",
    "n_samples": "generated",
    "n_reference": "reference",
}
SPREADS = {"kid_std", "isc_std"}  # torch-fidelity's spread over subsets: shown as a mean, never as "± SE"
RUN_SE = {"nll": "nll_se", "class_info": "class_info_se", "cls_kid": "cls_kid_se",  # a run's own SE
          "class_accuracy": "class_accuracy_se",
          "fvd": "fvd_se"}  # FVD's: bootstrap over the run's generated clips
VIDEO_HEADERS = {"seconds_per_image": "s / clip"}  # a video table's headers where they differ (sampling.json's
# seconds_per_image_batch1 is seconds per clip for video)
FLOORS = {"real": ("floor: real images", "held-out real images vs the reference set"),
          "recon": ("floor: VQ reconstruction", "the same real images passed through the VQ tokenizer"),
          "video-real": ("floor: real clips", "held-out real clips vs the FVD reference"),
          "video-recon": ("floor: tokenizer reconstruction (rFVD)",
                          "the same held-out clips passed through the video tokenizer")}
FLOOR_MODALITY = {"real": "images", "recon": "images", "video-real": "video", "video-recon": "video"}
TITLES = {
    "table2": "Table 2 — class-conditional generation: steps, latency, quality",
    "table3a": "Table 3(a) — initial sequential tokens",
    "table3b": "Table 3(b) — tokens per step n",
    "table3c": "Table 3(c) — attention inside a parallel group",
    "table3d": "Table 3(d) — which tokens are generated in parallel (raster/distant × one/multi)",
    "table3e": "Table 3(e) — model scaling (PAR n = 4)",
    "table4": "Table 4 — class-conditional video generation (UCF-101 in the paper; CPU presets: moving "
              "Fashion-MNIST)",
}
VIDEO_TABLES = verdicts.VIDEO_TABLES  # a table's modality comes from its models; these are video when none fills them
NLL_BOUND = "random-order upper bound"  # an NLL file's "kind" for ARPG ("exact" or absent: PAR, raster)
EVALUATE_FIX = "run the workflow up to `par evaluate` (snakemake all_tables)"
SAMPLE_FIX = "run the workflow up to `par sample` (snakemake all_tables)"

# ------------------------------------------------------------------------------------------ result files


def _load(path: Path, fix: str) -> dict:
    if not path.exists():
        raise UserError(f"{path}: result file missing; {fix}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); delete it and {fix}") from None


def _num(v) -> float:
    return math.nan if v is None else float(v)


def entries(preset: dict) -> dict[str, dict]:
    """The preset's model entries, each `trained_as` entry over the entry it samples (whose order, size, seeds, …
    it inherits unless it sets them itself)."""
    models = preset["models"]
    return {m: {**models.get(e.get("trained_as") or "", {}), **e} for m, e in models.items()}


def is_arpg(entry: dict) -> bool:
    return entry.get("order") == "arpg"


def modality(entry: dict) -> str:
    """What a model entry generates: "images" (the default) or "video" (Table 4)."""
    return entry.get("modality") or "images"


def is_video(entry: dict) -> bool:
    return modality(entry) == "video"


def pick(rows_spec: dict, models: dict) -> dict[str, str]:
    """Row label → the first of its candidate models that `models` (the preset's entries) has; rows without one
    are left out."""
    picked = {label: next((m for m in cands if m in models), None) for label, cands in rows_spec.items()}
    return {label: m for label, m in picked.items() if m}


def table_modality(name: str, rows_spec: dict, preset: dict) -> str:
    """"images" or "video": the modality of the models that fill table `name`; when none does, "video" for
    `VIDEO_TABLES` and "images" otherwise. A table mixing the two is a configuration error."""
    models = entries(preset)
    picked = pick(rows_spec, models)
    kinds = {modality(models[m]) for m in picked.values()}
    if len(kinds) > 1:
        raise UserError(f"tables.{name}: mixes image and video models ({', '.join(sorted(picked.values()))}); "
                        "a table compares one modality")
    return kinds.pop() if kinds else ("video" if name in VIDEO_TABLES else "images")


def header(key: str, kind: str = "images") -> str:
    """A column's header in a table of modality `kind` (seconds per clip for video)."""
    return VIDEO_HEADERS.get(key, COLUMNS[key]) if kind == "video" else COLUMNS[key]


def runs_of(entry: dict) -> list[str]:
    """Run names of a model entry: s0 … s<seeds−1> (`seeds` defaults to 1)."""
    return [f"s{k}" for k in range(int(entry.get("seeds") or 1))]


def read_run(results: Path, model: str, run: str, trained: str | None = None) -> tuple[dict, list[str]]:
    """Values of one run from its result files, and notes on what is unavailable. `trained`: the model whose
    training run this is (`trained_as`; default `model`)."""
    m = _load(results / "metrics" / model / f"{run}.json", EVALUATE_FIX)
    s = _load(results / "samples" / model / run / "sampling.json", SAMPLE_FIX)
    row = {k: _num(v) for k, v in m.get("metrics", {}).items()}
    row |= {"steps": _num(s.get("forward_calls")), "seconds_per_image": _num(s.get("seconds_per_image_batch1")),
            "n_samples": _num(m.get("n_samples")), "n_reference": _num(m.get("n_reference"))}
    if "fvd" in row:  # what the FVD compared (`par fvd`): the table's protocol note
        row |= {"fvd_generated_clips": _num(m.get("generated_clips")),
                "fvd_reference_clips": _num(m.get("reference_clips")), "fvd_frames": _num(m.get("frames"))}
        if "protocol" in m:
            row["fvd_protocol"] = str(m["protocol"] or "none")
    if (m.get("classifier") or {}).get("test_accuracy") is not None:
        row["classifier_test_accuracy"] = float(m["classifier"]["test_accuracy"])
    row |= {"sample_commit": provenance.recorded(s)} | _training(results / "models" / (trained or model) / run)
    nll = results / "nll" / (trained or model) / f"{run}.json"  # one NLL per set of weights (Experiment.nll_runs)
    if nll.exists():
        d = json.loads(nll.read_text())
        row |= {"nll": _num(d.get("nll")), "nll_se": _num(d.get("nll_se")),
                "nll_bound": float(d.get("kind", "exact") == NLL_BOUND), "nll_orders": _num(d.get("orders_per_image"))}
        if "class_info_per_image" in d:  # NLL(null) − NLL(true) summed over the image's tokens (`par nll`)
            row |= {"class_info": _num(d["class_info_per_image"]),
                    "class_info_se": _num(d.get("class_info_per_image_se")),
                    "class_info_max": _num(d.get("class_info_max_per_image"))}
    return row, [f"{k}: {why}" for k, why in m.get("unavailable", {}).items()]


def _training(run_dir: Path) -> dict:
    """What a run's config.json (`par train`) says: parameters, training steps, tokens seen (steps × global batch ×
    tokens per image or clip) and the commit that trained it; "unrecorded" / NaN where it does not say."""
    cfg = run_dir / "config.json"
    d = _load(cfg, "retrain the run (snakemake all_tables)") if cfg.exists() else {}
    steps, batch = d.get("steps"), (d.get("train") or {}).get("global_batch")
    grid = (d.get("model") or {}).get("grid")
    tokens = steps * batch * math.prod(grid) if steps and batch and grid else None
    images = d.get("train_images")  # recorded since #24; before, the regime paragraph lacks the epochs
    return ({"params": _num(d.get("params"))} if "params" in d else {}) | {
        "train_steps": _num(steps), "train_sequences": _num(steps * batch if steps and batch else None),
        "train_images": _num(images), "epochs": _num(steps * batch / images if steps and batch and images else None),
        "tokens_seen": _num(tokens), "train_commit": provenance.recorded(d)}


def model_runs(results: Path, model: str, entry: dict):
    """One row per run of `model` (index: run name), a column per value; and notes on what is unavailable."""
    import pandas as pd

    rows, notes = {}, []
    for run in runs_of(entry):
        rows[run], why = read_run(Path(results), model, run, entry.get("trained_as"))
        notes += [f"{model} — {w}" for w in why if f"{model} — {w}" not in notes]
    return pd.DataFrame.from_dict(rows, orient="index"), notes


def read_floors(results: Path, kind: str | None = None) -> dict:
    """floors/real.json and floors/recon.json (images), floors/video-real.json and floors/video-recon.json (video),
    when present, as one-row frames like a model's runs; `kind`: only that modality's."""
    import pandas as pd

    out = {}
    for name in FLOORS:
        p = Path(results) / "floors" / f"{name}.json"
        if kind is not None and FLOOR_MODALITY[name] != kind:
            continue
        if p.exists():
            d = json.loads(p.read_text())
            row = {k: _num(v) for k, v in d.get("metrics", {}).items()}
            row |= {"n_samples": _num(d.get("n_samples")), "n_reference": _num(d.get("n_reference"))}
            out[name] = pd.DataFrame([row], index=[name])
    return out


def classifier_accuracy(results: Path, runs=()) -> tuple[float, str] | None:
    """Test accuracy of the feature classifier and on how many images (" on N test images" or ""), if any
    result file has it: classifier/metrics.json, else the `classifier` record of a metrics file."""
    p = Path(results) / "classifier" / "metrics.json"
    if p.exists():
        d = json.loads(p.read_text())
        if d.get("test_accuracy") is not None:
            return float(d["test_accuracy"]), f" on {d['n_test']:,} test images" if d.get("n_test") else ""
    for frame in runs:
        if "classifier_test_accuracy" in frame and frame["classifier_test_accuracy"].notna().any():
            return float(frame["classifier_test_accuracy"].dropna().iloc[0]), ""
    return None


# ------------------------------------------------------------------------------------------ aggregation


def summarize(runs) -> dict[str, Stat]:
    """Mean ± SE over the runs of every table column present; with one run, the run's own SE where it has one."""
    out = {}
    for key in COLUMNS:
        if key in runs:
            se_key = RUN_SE.get(key)
            run_se = runs[se_key].iloc[0] if se_key in runs and len(runs) == 1 else None
            out[key] = mean_se(runs[key].tolist(), run_se)
    return out


def model_label(entry: dict, models: dict | None = None, job: dict | None = None) -> str:
    """A model entry in words, e.g. 'PAR n=4, causal in-group', 'PAR n=4 (size tiny-M)' or 'ARPG, 64 steps, arccos
    schedule'; the size is named only when it differs from the preset's most common one (`models`: all entries of
    the preset). `job`: the settings a run was sampled with (sampling.json), which win over the entry's."""
    if is_arpg(entry):
        s = entry | (job or {})
        words = ["ARPG"] + [f"{s[k]} {what}" for k, what in (("arpg_steps", "steps"), ("arpg_schedule", "schedule"))
                            if s.get(k)]
    else:
        words = [f"{'raster' if entry.get('order', 'par') == 'raster' else 'PAR'} n={entry.get('n', '?')}"]
    if entry.get("group_attention", "full") != "full":
        words.append(f"{entry['group_attention']} in-group")
    if entry.get("initial_sequential", True) is False:
        words.append("no initial sequential")
    if entry.get("regions") and entry.get("regions") != entry.get("n"):
        words.append(f"{entry['regions']} regions")
    label = ", ".join(words)
    sizes = Counter(e.get("size") for e in (models or {}).values())
    if entry.get("size") and (not sizes or entry.get("size") != sizes.most_common(1)[0][0]):
        label += f" (size {entry['size']})"
    label += ", released weights" if entry.get("checkpoint") or entry.get("checkpoint_url") else ""
    # the sample labels: random (LlamaGen / PAR's protocol, the default) or balanced (ADM / ARPG's)
    return label + (", balanced labels" if (entry | (job or {})).get("labels") == "balanced" else "")


def describe(results: Path, models: dict, model: str) -> str:
    """`model_label` of `model` (`models`: `entries(preset)`) with the settings its first run was sampled with."""
    p = Path(results) / "samples" / model / runs_of(models[model])[0] / "sampling.json"
    job = json.loads(p.read_text()).get("job") if p.exists() else None
    return model_label(models[model], models, job)


# ------------------------------------------------------------------------------------------ one table


@dataclass
class Table:
    raw: object  # DataFrame: per row mean, <key>_se, <key>_n (the CSV)
    shown: object  # DataFrame of strings (Markdown / LaTeX)
    notes: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    runs: dict = field(default_factory=dict)  # row label → per-run frame (what the verdicts judge)
    modality: str = "images"  # of its models: "images" or "video"


def _cell(key: str, s: Stat | None) -> str:
    if s is None or s.n == 0:
        return "–"
    return format_value(s.mean, sig=2) if key in SPREADS else format_pm(s.mean, s.se)


def _seeds_cell(n_runs: int, stats: dict) -> str:
    fewer = sorted({s.n for k, s in stats.items() if 0 < s.n < n_runs and k not in SPREADS})
    return str(n_runs) + (f" (some cells {', '.join(map(str, fewer))})" if fewer else "")


def _columns(frames: list) -> list[str]:
    present = set().union(*(set(f.columns) for f in frames))
    return [k for k in COLUMNS if k in present]


def _nll_bound(entry: dict, runs) -> bool:
    """Whether a row's NLL is ARPG's random-order upper bound (its entry or its NLL files say so)."""
    return is_arpg(entry) or bool("nll_bound" in runs and (runs["nll_bound"] == 1).any())


def _missing_notes(keys, models_runs: dict, models: dict, unavailable: list[str]) -> list[str]:
    """A footnote for every cell that is "–" without a reason from `par evaluate`."""
    out = []
    for model, runs in models_runs.items():
        for k in keys:
            explained = any(u.startswith(f"{model} — {k}:") for u in unavailable) or (
                k == "class_info" and ("nll" not in runs or runs["nll"].isna().all()))  # the NLL's note says why
            if (k not in runs or runs[k].isna().all()) and not explained:
                why = ("not scored (score_nll: false)" if models[model].get("score_nll") is False else
                       "no held-out NLL file (`nll/<model>/s<k>.json`)") if k == "nll" else (
                    "not in its NLL file (no null class: class_dropout 0, or scored before `par nll` measured it)"
                    if k == "class_info" else "not in its result files")
                out.append(f"{model} — {k}: {why}")
    return out


def build_table(name: str, rows_spec: dict, preset: dict, results: Path, with_paper: bool,
                floors: dict | None = None) -> Table | None:
    """One table: the first model of each row's candidates that `preset` has, aggregated over its runs, then
    the floor rows of the table's modality (`read_floors`). None when no model of the preset fills it."""
    import pandas as pd

    results, models = Path(results), entries(preset)
    picked = pick(rows_spec, models)
    if not picked:
        return None
    kind = table_modality(name, rows_spec, preset)
    floors = {f: fr for f, fr in (floors or {}).items() if FLOOR_MODALITY.get(f, "images") == kind}
    runs, unavailable = {}, []
    for label, model in picked.items():
        runs[label], why = model_runs(results, model, models[model])
        unavailable += [w for w in why if w not in unavailable]
    keys = _columns(list(runs.values()))
    raw, shown, bounds = [], [], []
    for label, model in picked.items():
        stats = summarize(runs[label])
        base = {"row": label, "model": model, "setup": describe(results, models, model)}
        raw.append(base | {"seeds": len(runs[label])} | _raw(stats, keys))
        shown.append(base | {"seeds": _seeds_cell(len(runs[label]), stats)}
                     | {header(k, kind): _cell(k, stats.get(k)) for k in keys})
        if "nll" in keys:
            bound = _nll_bound(models[model], runs[label])
            raw[-1]["nll_kind"] = NLL_BOUND if bound else "exact"
            if bound and stats.get("nll") and stats["nll"].n:
                shown[-1][COLUMNS["nll"]] = "≤ " + shown[-1][COLUMNS["nll"]]
                bounds.append(runs[label])
        if with_paper and model in PAPER:
            for k, v in PAPER[model].items():
                raw[-1][f"paper {k}"] = v
                shown[-1][f"{header(k, kind) if k in COLUMNS else PAPER_ONLY[k]} (paper)"] = str(v)  # as printed
    for floor, frame in floors.items():
        label, setup = FLOORS[floor]
        stats = summarize(frame)
        raw.append({"row": label, "model": "", "setup": setup} | _raw(stats, keys))
        shown.append({"row": label, "model": "", "setup": setup, "seeds": ""}
                     | {header(k, kind): _cell(k, stats[k]) if k in stats else "" for k in keys})
    unavailable += _missing_notes(keys, {picked[lb]: r for lb, r in runs.items()}, models, unavailable)
    paper = with_paper and any(m in PAPER for m in picked.values())
    notes = (_video_notes(keys, runs, floors, paper) if kind == "video" else
             _notes(keys, runs, floors, results, bounds))
    return Table(pd.DataFrame(raw).set_index("row"), pd.DataFrame(shown).fillna("–"), notes, unavailable, runs,
                 kind)


def _raw(stats: dict, keys) -> dict:
    out = {}
    for k in keys:
        s = stats.get(k)
        out |= {k: s.mean if s else math.nan, f"{k}_se": s.se if s else math.nan, f"{k}_n": s.n if s else 0}
    return out


def _notes(keys, runs: dict, floors: dict, results: Path, bounds=()) -> list[str]:
    """The table's footnotes; `bounds`: the per-run frames of the rows whose NLL is ARPG's upper bound."""
    notes = ["± is the standard error of the mean across training seeds (std/√n, n = seeds); with one seed it is "
             "the run's own standard error where the metric has one (NLL: over held-out images; classifier KID, "
             "class accuracy: over samples), else no ± is shown."]
    if "nll" in keys:
        notes.append("NLL / token: teacher-forced held-out NLL (nats per token); for n > 1 it is the exact "
                     "likelihood of what the sampler draws (the product of the within-group conditionals).")
    if "class_info" in keys:
        notes.append(class_info_note(runs))
    if bounds:
        k = sorted({int(v) for f in bounds if "nll_orders" in f for v in f["nll_orders"].dropna()})
        notes.append(f"≤ (NLL): ARPG's NLL is the mean over {'/'.join(map(str, k)) or 'K'} random orders per image "
                     "(an upper bound on the NLL of its mixture over orders), scored with causal training contexts; "
                     "PAR's is exact.")
    if {"cls_fid", "cls_kid", "class_accuracy"} & set(keys):
        acc = classifier_accuracy(results, runs.values())
        notes.append("classifier FID/KID: on the features of a small classifier trained on the train split"
                     + (f" (test accuracy {acc[0]:.1%}{acc[1]})" if acc else "")
                     + "; class accuracy: share of samples it labels as the requested class.")
    if SPREADS & set(keys):
        notes.append("KID subset std / IS split std: torch-fidelity's spread over random subsets (splits), "
                     "a spread, not a standard error.")
    if "n_samples" in keys:
        notes.append("generated / reference: the images each metric compares.")
    if floors:
        notes.append(_floors_note(floors))
    return notes


def class_info_note(runs: dict) -> str:
    """The footnote of the class-information column, with its ceiling log(classes) as the NLL files give it."""
    ceilings = _distinct(runs.values(), "class_info_max")
    ceiling = f" = {'/'.join(f'{c:.2f}' for c in ceilings)}" if ceilings else ""
    return ("class info / image: the class information a model uses, NLL(null class) − NLL(true class) on the "
            "held-out tokens, summed over an image's tokens, in nats (`par nll`). The label can carry at most "
            "log(classes)" + ceiling + "; a value above it means the null (CFG) branch is worse than the mixture of "
            "the class branches, i.e. undertrained. Near 0 the label barely changes the model's predictions, which "
            "class-conditional samples and CFG rest on. For ARPG a difference of two random-order bounds.")


def _floors_note(floors: dict) -> str:
    return ("Floors (rows below the models): " + "; ".join(f"{FLOORS[f][0].split(': ')[1]} = {FLOORS[f][1]}"
                                                            for f in floors)
            + ". No model trained on these tokens can be expected to beat them.")


def _distinct(frames, key: str) -> list:
    """The distinct values of column `key` over the per-run `frames` (numbers as ints), in order."""
    vals = [v for f in frames if key in f for v in f[key].dropna()]
    vals = [int(v) if isinstance(v, float) and v.is_integer() else v for v in vals]
    return sorted(set(vals), key=str)


def _counts(frames, *keys) -> str:
    """The values of the first of `keys` that any run has, "a/b" when they differ; "" when none has one (a
    negative count is unknown)."""
    for key in keys:
        vals = [v for v in _distinct(frames, key) if not (isinstance(v, int) and v < 0)]
        if vals:
            return "/".join(f"{v:,}" if isinstance(v, int) else str(v) for v in vals)
    return ""


def fvd_protocol(frames) -> str:
    """What the FVD of these runs (or floors) compared, read from their metrics files (`par fvd`): e.g.
    "I3D (TF-Hub Kinetics-400) logits, 64 generated vs 256 reference clips, 16 frames"."""
    frames = list(frames)
    gen = _counts(frames, "fvd_generated_clips", "n_samples")
    ref = _counts(frames, "fvd_reference_clips", "n_reference")
    frames_n = _counts(frames, "fvd_frames")
    protocols = [p for p in _distinct(frames, "fvd_protocol") if p != "none"]
    text = "I3D (TF-Hub Kinetics-400) logits"
    if gen or ref:
        text += f", {gen or '?'} generated vs {ref or 'the stored statistics of the'} reference clips"
    if frames_n:
        text += f", {frames_n} frames"
    return text + (f" (protocol {'/'.join(protocols)})" if protocols else "")


def _video_notes(keys, runs: dict, floors: dict, paper: bool) -> list[str]:
    """The footnotes of a video table (Table 4)."""
    notes = ["± is the standard error of the mean across training seeds (std/√n, n = seeds); with one seed it is "
             "the run's own standard error where the metric has one (NLL: over held-out clips; FVD: bootstrap over "
             "generated clips), else no ± is shown."]
    if "nll" in keys:
        notes.append("NLL / token: teacher-forced held-out NLL (nats per token) of the video tokens; for n > 1 it is "
                     "the exact likelihood of what the sampler draws (the product of the within-group conditionals).")
    if "class_info" in keys:
        notes.append(class_info_note(runs))
    if "fvd" in keys:
        notes.append(f"FVD: {fvd_protocol(runs.values())}; ± within a row with 1 seed is the bootstrap SE over "
                     "generated clips. FVD from few clips is biased upward, so FVDs are comparable only at equal "
                     "clip counts" + (" (ours with the (paper) column only where the counts match the paper's)."
                                      if paper else "."))
    if "seconds_per_image" in keys:
        notes.append("s / clip: seconds to generate one clip at batch size 1.")
    if "n_samples" in keys:
        notes.append("generated / reference: the clips FVD compares.")
    if paper:
        notes.append("(paper): the paper's Table 4 (UCF-101), as reported; its latency is seconds per clip on an "
                     "A100 GPU at batch size 1, not this machine's.")
    if floors:
        notes.append(_floors_note(floors))
    return notes


# ------------------------------------------------------------------------------------------ writing

LATEX = {"↓": r"$\downarrow$", "↑": r"$\uparrow$", "±": r"$\pm$", "≈": r"$\approx$", "×": r"$\times$",
         "→": r"$\rightarrow$", "−": "-", "–": "--", "—": "---", "·": r"$\cdot$", "√": r"$\surd$", "≥": r"$\geq$",
         "≤": r"$\leq$"}


def latex_ascii(tex: str) -> str:
    """Non-ASCII characters as LaTeX commands (pure-ASCII .tex); anything unknown is transliterated."""
    for ch, cmd in LATEX.items():
        tex = tex.replace(ch, cmd)
    return unicodedata.normalize("NFKD", tex).encode("ascii", "ignore").decode()


def markdown_table(df) -> str:
    """Text columns left-aligned, numbers right-aligned, cells printed as formatted (no re-parsing of numbers)."""
    align = tuple("left" if c in TEXT else "right" for c in df.columns)
    return df.to_markdown(index=False, disable_numparse=True, colalign=align)


def split_markdown(df) -> str:
    """`markdown_table`, split by `column_groups` into tables that fit the page, one after the other."""
    return "\n\n".join(markdown_table(df[cols]) for cols in column_groups(df))


def _markdown(title: str, table: Table, preset_name: str, results: Path) -> str:
    intro = (f"Preset `{preset_name}`; every value is read from `{results}`."
             + (" Columns marked (paper) are the paper's reported numbers." if reports_paper(preset_name) else ""))
    text = f"### {title}\n\n{intro}\n\n{split_markdown(table.shown)}\n\nNotes:\n\n"
    text += "".join(f"- {n}\n" for n in table.notes)
    if table.unavailable:
        text += "\nUnavailable:\n\n" + "".join(f"- {u}\n" for u in _grouped(table.unavailable, len(table.runs)))
    return text


def _grouped(unavailable: list[str], num_models: int) -> list[str]:
    """"model — reason" notes with one line per reason: "reason (every model)" or "reason: model, model"."""
    by_reason: dict[str, list[str]] = {}
    for note in unavailable:
        model, sep, reason = note.partition(" — ")
        by_reason.setdefault(reason if sep else note, []).append(model if sep else "")
    return [f"{reason} (every model)" if len(models) >= num_models > 1 else
            f"{reason}: {', '.join(m for m in models if m)}" if any(models) else reason
            for reason, models in sorted(by_reason.items())]


def _latex(title: str, name: str, table: Table) -> str:
    fmt = "".join("l" if c in TEXT else "r" for c in table.shown.columns)
    tex = table.shown.to_latex(index=False, caption=title, label=f"tab:{name}", escape=True, column_format=fmt)
    return latex_ascii(tex)


def _extra_verdicts(paths) -> list[dict]:
    rows = []
    for p in paths or ():
        data = _load(Path(p), "write it (a JSON list of verdict rows) or drop --extra-verdicts")
        if isinstance(data, dict) and isinstance(data.get("verdicts"), list):  # e.g. entropy_summary.json
            data = data["verdicts"]
        if not isinstance(data, list):
            raise UserError(f"{p}: expected a JSON list of verdict rows ({', '.join(verdicts.COLUMNS)})")
        rows += data
    return rows


def write_tables(config_path, preset_name: str, results: str | Path, out: str | Path,
                 extra_verdicts=()) -> list[Path]:
    """Every table of config `tables:` for `preset_name` (md, csv, tex) and, when a claim can be judged,
    verdicts.{md,csv}. `extra_verdicts`: JSON files of rows judged elsewhere (entropy) to add to the verdicts."""
    cfg, preset = load_config(config_path, preset_name)
    return write_tables_for(cfg, preset, preset_name, results, out, _extra_verdicts(extra_verdicts))


def write_tables_for(cfg: dict, preset: dict, preset_name: str, results, out, extra=()) -> list[Path]:
    """`write_tables` on an already loaded config (`cfg`: the whole file, `preset`: its section)."""
    results, out = Path(results), Path(out)
    floors, written, frames, spots = read_floors(results), [], {}, {}
    for name, spec in sorted(cfg["tables"].items()):
        table = build_table(name, spec, preset, results, with_paper=reports_paper(preset_name), floors=floors)
        title = TITLES.get(name, name)
        if table is None:
            io.write_text(out / f"{name}.md",
                          f"### {title}\n\n_No model of preset `{preset_name}` fills this table._\n")
            io.write_text(out / f"{name}.csv", "")
            io.write_text(out / f"{name}.tex", f"% {latex_ascii(title)}: no rows for preset {preset_name}\n")
        else:
            for label, model in pick(spec, entries(preset)).items():
                frames[model] = table.runs[label]
                spots.setdefault(model, []).append(f"{name}:{label}")
            io.write_text(out / f"{name}.md", _markdown(title, table, preset_name, results))
            io.write_text(out / f"{name}.csv", table.raw.to_csv())
            io.write_text(out / f"{name}.tex", _latex(title, name, table))
        written += [out / f"{name}.{e}" for e in ("md", "csv", "tex")]
    models = entries(preset)
    written += curves.write_curves(curves.curves_table(results, models, {m: runs_of(e) for m, e in models.items()},
                                                       spots), out)
    runs = runs_table(frames, spots, floors, num_classes(results))
    if runs.empty:
        (out / RUNS_NAME).unlink(missing_ok=True)
    else:
        io.write_text(out / RUNS_NAME, runs.to_csv(index=False))
        written.append(out / RUNS_NAME)
    return written + write_verdicts(runs, out, extra)


RUNS_NAME = "runs.csv"
RUNS_FIRST = ["kind", "model", "run", verdicts.ROWS, "train_commit", "sample_commit", "train_steps", "train_sequences",
              "train_images", "epochs", "tokens_seen"]


def num_classes(results: Path) -> int | None:
    """Classes of the feature classifier (classifier/metrics.json), whose chance level 1/classes is class accuracy's
    floor; None without that file."""
    d = _read(Path(results) / "classifier" / "metrics.json")
    return int(d["num_classes"]) if d.get("num_classes") else None


def _read(path: Path) -> dict:
    return _load(path, "rerun the stage that writes it (snakemake all_tables)") if path.exists() else {}


def runs_table(frames: dict, spots: dict, floors: dict, classes: int | None = None):
    """runs.csv: one row per (model, run) with every value of its result files, its own SEs, training steps, tokens
    seen and the commits that trained and sampled it (kind "run"; `rows`: the table rows it fills); then the floors
    (kind "floor", model = floor name) and chance, 1/classes (kind "chance"). Everything the verdicts need."""
    import pandas as pd

    parts = [f.assign(kind="run", model=m, run=f.index, **{verdicts.ROWS: verdicts.ROW_SEP.join(spots[m])})
             for m, f in frames.items()]
    parts += [f.assign(kind="floor", model=name, run="") for name, f in floors.items()]
    if classes:
        parts.append(pd.DataFrame([{"kind": verdicts.CHANCE, "model": f"chance (1/{classes} classes)", "run": "",
                                    "class_accuracy": 1 / classes}]))
    if not parts:
        return pd.DataFrame(columns=RUNS_FIRST)
    df = pd.concat(parts, ignore_index=True)
    return df[[c for c in RUNS_FIRST if c in df] + [c for c in df if c not in RUNS_FIRST]]


def write_verdicts(runs, out: Path, extra=()) -> list[Path]:
    """verdicts.md (rule + table) and verdicts.csv, judged from runs.csv's rows (`runs_table`) alone, when any claim
    can be judged; else stale copies are removed."""
    df = verdicts.judge_runs(runs, extra=extra) if not runs.empty else verdicts.judge_claims({}, extra=extra)
    paths = [out / "verdicts.md", out / "verdicts.csv"]
    if df.empty:
        for p in paths:
            p.unlink(missing_ok=True)
        return []
    io.write_text(paths[0], f"{verdicts.rule_text(df)}\n\n{verdicts.to_markdown(df)}\n")
    io.write_text(paths[1], df.to_csv(index=False))
    return paths


def cmd_tables(args) -> int:
    for p in write_tables(args.config, args.preset, args.results, args.out, args.extra_verdicts):
        print(p)
    return 0


def register(sub):
    p = sub.add_parser("tables", help="Tables 2, 3(a)-(e) and 4 from result files (Markdown, CSV, LaTeX) and "
                                      "the verdict on each claim of Tables 3 and 4")
    add_run_arguments(p)
    p.add_argument("--out", default="analysis/tables", help="output folder (default: analysis/tables)")
    p.add_argument("--extra-verdicts", nargs="*", default=[], metavar="JSON",
                   help="JSON lists of verdict rows judged elsewhere (e.g. the entropy claims) to add")
    p.set_defaults(func=cmd_tables)
