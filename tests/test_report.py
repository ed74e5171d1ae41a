"""Tables and report from a synthetic results tree: mean ± SE over seeds, floors, words for models, pure-ASCII LaTeX,
verdicts; a report whose every link resolves inside the analysis folder, honest provenance, lists that render as
lists, and (slow) the HTML in a real headless browser."""

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy import stats

from par.analysis import report, tables, verdicts
from par.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TABLES = yaml.safe_load((ROOT / "config.yaml").read_text())["tables"]

# model → (entry, NLL of each seed); the other metrics follow the NLL so every claim has a direction
MODELS = {
    "raster-n1": ({"size": "small-S", "order": "raster", "n": 1, "seeds": 3}, [1.24, 1.25, 1.26]),
    "par-n4": ({"size": "small-S", "order": "par", "n": 4, "seeds": 3}, [1.26, 1.27, 1.25]),
    "par-n16": ({"size": "small-S", "order": "par", "n": 16, "seeds": 3}, [1.30, 1.31, 1.32]),
    "par-n4-causal": ({"size": "small-S", "order": "par", "n": 4, "group_attention": "causal"}, [1.29]),
    "raster-n4": ({"size": "small-S", "order": "raster", "n": 4, "seeds": 3}, [1.40, 1.39, 1.41]),
    "par-n1-r4": ({"size": "small-S", "order": "par", "n": 1, "regions": 4, "seeds": 2}, [1.46, 1.47]),
    "par-n4-M": ({"size": "small-M", "order": "par", "n": 4, "seeds": 2}, [1.20, 1.22]),
}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _grid(path: Path, shade: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 20), (shade, 100, 200)).save(path)


def _metrics(nll: float, n_samples: int = 500) -> dict:
    m = {"cls_fid": 100 * (nll - 1), "cls_kid": 0.01 * nll, "cls_kid_se": 0.001, "class_accuracy": 2.2 - nll,
         "class_accuracy_se": 0.01, "fid": 300 * nll, "kid": 0.2 * nll, "kid_std": 0.004, "isc": None}
    return {"metrics": m, "n_samples": n_samples, "n_reference": 1000,
            "unavailable": {"isc": "no Inception logits weights offline"}, "classifier": {"test_accuracy": 0.91}}


def make_results(root: Path, models: dict = MODELS, *, nll: bool = True, floors: bool = True) -> dict:
    """A results tree as the pipeline writes it; returns the preset section. An ARPG entry (`order: arpg`, or
    `trained_as` one) samples `arpg_steps` forward calls and writes a random-order bound as its NLL; a `trained_as`
    entry has no models/ or nll/ folder of its own."""
    preset = {"models": {m: e for m, (e, _) in models.items()}}
    for i, (model, (_, nlls)) in enumerate(models.items()):
        entry = tables.entries(preset)[model]
        arpg = entry.get("order") == "arpg"
        for k, v in enumerate(nlls):
            run = f"s{k}"
            _write(root / "metrics" / model / f"{run}.json", _metrics(v))
            steps = entry["arpg_steps"] if arpg else 256 // entry["n"] + 3
            job = {"order": "arpg", "n": 1, "job": {"arpg_steps": steps, "arpg_schedule": "arccos",
                                                    "arpg_cfg_schedule": "linear", "cfg_scale": 1.5}}
            _write(root / "samples" / model / run / "sampling.json",
                   {"forward_calls": steps, "seconds_per_image_batch1": 0.1 + 0.01 * k, "num_samples": 500}
                   | (job if arpg else {}))
            if not entry.get("trained_as"):
                _write(root / "models" / model / run / "config.json", {"params": 400_000 + i})
            if nll and not entry.get("trained_as"):  # the same weights: it reads its trained entry's NLL
                kind = {"kind": "random-order upper bound", "orders_per_image": 4} if arpg else {"kind": "exact"}
                _write(root / "nll" / model / f"{run}.json", {"nll": v, "nll_se": 0.002, "n_images": 10000,
                                                              "tokens_per_image": 256, "split": "test"} | kind)
            _grid(root / "samples" / model / run / "grid.png", 20 * i)
    if floors:
        _write(root / "floors" / "real.json", {**_metrics(1.0, 10000), "n_reference": 10000})
        _write(root / "floors" / "recon.json", _metrics(1.1, 10000))
    _write(root / "vq" / "vq_metrics.json", {"before": {"psnr_db": 9.5, "codebook_usage": 0.6},
                                             "after": {"psnr_db": 28.4, "codebook_usage": 0.99},
                                             "train_images": 60000, "grid": [16, 16],
                                             "test": {"psnr_db": 28.1, "n_images": 10000}})
    _write(root / "classifier" / "metrics.json", {"test_accuracy": 0.912, "n_test": 10000, "n_train": 60000,
                                                  "num_classes": 10})
    return preset


@pytest.fixture
def run(tmp_path):
    preset = make_results(tmp_path / "results")
    out = tmp_path / "analysis"
    tables.write_tables_for({"tables": TABLES}, preset, "small", tmp_path / "results", out / "tables")
    return preset, tmp_path / "results", out


# ------------------------------------------------------------------------------------------ tables


def test_cells_are_mean_and_standard_error_over_seeds(run):
    _, _, out = run
    df = pd.read_csv(out / "tables" / "table3b.csv", index_col="row")
    n4 = df.loc["n=4"]
    assert n4["seeds"] == 3 and n4["nll"] == pytest.approx(1.26) and n4["nll_n"] == 3
    assert n4["nll_se"] == pytest.approx(0.01 / 3 ** 0.5)  # std (ddof=1) over √n
    assert n4["n_samples"] == 500 and n4["n_reference"] == 1000
    md = (out / "tables" / "table3b.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| n=4 "))
    assert "PAR n=4 " in row and "1.260 ± 0.006" in row and " 3 |" in row
    assert "floor: real images" in md and "floor: VQ reconstruction" in md
    assert "KID subset std" in md and "generated" in md and "reference" in md
    assert "test accuracy 91.2%" in md
    assert "Unavailable:\n\n- " in md and "no Inception logits" in md  # a list after a blank line


def test_one_seed_shows_the_runs_own_standard_error_only_where_it_has_one(run):
    _, _, out = run
    row = _row((out / "tables" / "table3c.md").read_text(), "causal in group")
    assert row["seeds"] == "1"
    assert row["NLL / token ↓"] == "1.290 ± 0.002"  # nll_se
    assert row["class accuracy ↑"] == "0.910 ± 0.010"  # class_accuracy_se (an SE starting with 1: two digits)
    assert row["classifier FID ↓"] == "29"  # no per-run SE: no ±
    assert row["IS ↑"] == "–"


def test_models_are_labelled_in_words_and_text_aligns_left(run):
    _, _, out = run
    md = "".join((out / "tables" / f"{t}.md").read_text() for t in TABLES)
    for words in ("PAR n=4, causal in-group", "raster n=1", "PAR n=1, 4 regions", "PAR n=4 (size small-M)",
                  "raster n=4"):
        assert words in md
    assert "{" not in md  # never a Python dict
    align = (out / "tables" / "table3d.md").read_text().splitlines()[5]
    cells = align.strip("|").split("|")
    assert all(c.startswith(":") for c in cells[:3]) and all(c.endswith(":") and not c.startswith(":")
                                                              for c in cells[3:])
    assert tables.model_label({"order": "par", "n": 4, "initial_sequential": False}) == \
        "PAR n=4, no initial sequential"


def test_latex_is_pure_ascii(run):
    _, _, out = run
    tex = (out / "tables" / "table3b.tex").read_text()
    assert tex.isascii()
    assert r"$\downarrow$" in tex and r"$\pm$" in tex and r"$\uparrow$" in tex


def test_verdicts_are_written_with_the_tables(run):
    _, _, out = run
    md = (out / "tables" / "verdicts.md").read_text()
    assert "**Rule.**" in md and "distant multi better than raster multi" in md
    df = pd.read_csv(out / "tables" / "verdicts.csv")
    v = df.set_index(["comparison", "metric"])["verdict"]
    assert v[("table3d: distant multi better than raster multi", "NLL / token")] == "reproduced"
    assert v[("table3b: n=4 better than n=16", "classifier FID")] == "reproduced"
    # 2 vs 3 seeds: Welch df ≈ 1.7, t ≈ 5.6, so 0.05 ± 0.012 does not decide (|d| > 2·SE did)
    assert v[("table3e: M / XL better than S / L", "class accuracy")] == "not resolved"


def test_no_judgeable_claim_leaves_no_verdict_file(tmp_path, run):
    _, results, out = run
    only = {"models": {"raster-n1": MODELS["raster-n1"][0]}}
    tables.write_tables_for({"tables": TABLES}, only, "small", results, out / "tables")
    assert not (out / "tables" / "verdicts.md").exists()


def test_missing_optional_files_leave_a_dash_and_a_footnote(tmp_path):
    models = {m: MODELS[m] for m in ("raster-n1", "par-n4", "par-n16")}
    preset = make_results(tmp_path / "r", models, floors=False)
    shutil.rmtree(tmp_path / "r" / "nll" / "par-n16")
    tables.write_tables_for({"tables": TABLES}, preset, "small", tmp_path / "r", tmp_path / "t")
    md = (tmp_path / "t" / "table3b.md").read_text()
    assert "floor:" not in md
    assert "nll: no held-out NLL file (`nll/<model>/s<k>.json`): par-n16" in md
    assert re.search(r"\| n=16 .*\| +– \|", md)


def test_a_missing_result_file_is_one_clear_error(tmp_path):
    preset = make_results(tmp_path / "r", {"par-n4": MODELS["par-n4"]})
    (tmp_path / "r" / "metrics" / "par-n4" / "s2.json").unlink()
    with pytest.raises(UserError, match=r"metrics/par-n4/s2\.json: result file missing; run the workflow"):
        tables.write_tables_for({"tables": TABLES}, preset, "small", tmp_path / "r", tmp_path / "t")


def test_every_verdict_is_recomputed_from_runs_csv_alone(arpg_run):
    preset, _, out = arpg_run
    runs = pd.read_csv(out / "tables" / "runs.csv")
    want = pd.read_csv(out / "tables" / "verdicts.csv")
    got = verdicts.judge_runs(runs)
    cols = ["comparison", "metric", "verdict", "difference", "se", "p", "p_holm", "family"]
    pd.testing.assert_frame_equal(got[cols].reset_index(drop=True), want[cols], check_dtype=False)
    assert len(want) > 10 and set(runs["kind"]) == {"run", "floor", "chance"}
    with pytest.raises(UserError, match=r"runs\.csv: no column kind; write it with `par tables`"):
        verdicts.judge_runs(runs.drop(columns="kind"))
    assert len(runs[runs.kind == "run"]) == sum(e.get("seeds") or 1 for e in tables.entries(preset).values())
    # and by another hand: each "better" claim between seeds is scipy's Welch t test on runs.csv's values
    by_row = {spot: f for m, f in runs[runs.kind == "run"].groupby("model") for spot in f["rows"].iloc[0].split("; ")}
    key = {m.label: m.key for m in verdicts.ALL_METRICS}
    checked = 0
    for r in want[(want.error_bar == "across seeds") & ~want.comparison.str.contains("≈")].itertuples():
        table, text = r.comparison.split(": ", 1)
        a, b = text.split(" better than ")
        va, vb = by_row[f"{table}:{a}"][key[r.metric]], by_row[f"{table}:{b}"][key[r.metric]]
        ref = stats.ttest_ind(va, vb, equal_var=False)
        assert r.p == pytest.approx(ref.pvalue, rel=1e-6), r
        assert (r.verdict == "not resolved") == (ref.pvalue >= 0.05), r
        checked += 1
    assert checked >= 8


def test_runs_csv_records_steps_tokens_and_commits_or_says_unrecorded(tmp_path):
    models = {m: MODELS[m] for m in ("raster-n1", "par-n4")}
    preset = make_results(tmp_path / "r", models)
    for k in range(3):  # raster-n1's runs were trained by a commit that recorded itself; par-n4's were not
        _write(tmp_path / "r" / "models" / "raster-n1" / f"s{k}" / "config.json",
               {"params": 400_000, "steps": 200, "train": {"global_batch": 64}, "model": {"grid": [16, 16]},
                "commit": "abc1234"})
    sampling = tmp_path / "r" / "samples" / "par-n4" / "s0" / "sampling.json"
    _write(sampling, json.loads(sampling.read_text()) | {"commit": "def5678+dirty"})
    tables.write_tables_for({"tables": TABLES}, preset, "small", tmp_path / "r", tmp_path / "a" / "tables")
    runs = pd.read_csv(tmp_path / "a" / "tables" / "runs.csv").set_index(["model", "run"])
    assert runs.loc[("raster-n1", "s1"), "train_commit"] == "abc1234"
    assert runs.loc[("raster-n1", "s1"), "tokens_seen"] == 200 * 64 * 256 and runs.loc[("raster-n1", "s1"),
                                                                                        "train_steps"] == 200
    assert runs.loc[("par-n4", "s1"), "train_commit"] == "unrecorded" and math.isnan(runs.loc[("par-n4", "s1"),
                                                                                              "tokens_seen"])
    assert runs.loc[("par-n4", "s0"), "sample_commit"] == "def5678+dirty"
    assert runs.loc[("raster-n1", "s0"), "nll_se"] == 0.002 and "class_accuracy_se" in runs
    md = report.render_report({"tables": TABLES}, preset, "small", tmp_path / "r", tmp_path / "a").read_text()
    prov = md[md.index("## Provenance"):]
    assert "- runs trained at: `abc1234` (3 runs), `unrecorded` (3 runs)" in prov
    assert "- runs sampled at: `unrecorded` (5 runs), `def5678+dirty` (1 run)" in prov


def test_a_metric_at_its_reconstruction_floor_gives_no_verdict(tmp_path):
    models = {m: MODELS[m] for m in ("raster-n1", "par-n4", "par-n16")}
    preset = make_results(tmp_path / "r", models)
    _write(tmp_path / "r" / "floors" / "recon.json", _metrics(1.255, 10000))  # classifier FID 25.5: n=1's and n=4's
    tables.write_tables_for({"tables": TABLES}, preset, "small", tmp_path / "r", tmp_path / "t")
    v = pd.read_csv(tmp_path / "t" / "verdicts.csv").set_index(["comparison", "metric"])
    assert v.loc[("table3b: n=4 ≈ n=1", "classifier FID"), "verdict"] == "uninformative here (at floor)"
    assert v.loc[("table3b: n=4 better than n=16", "classifier FID"), "verdict"] == "reproduced"  # n=16: above it
    assert math.isnan(v.loc[("table3b: n=4 ≈ n=1", "classifier FID"), "p"])  # not in the Holm family
    assert "**Uninformative here (at floor / at chance)**" in (tmp_path / "t" / "verdicts.md").read_text()


def test_wide_tables_are_split_into_parts_that_repeat_the_row_label(run):
    _, _, out = run
    md = (out / "tables" / "table3b.md").read_text()
    headers = [line for line in md.splitlines() if line.startswith("| row ")]
    assert len(headers) >= 2  # every column of the fixture does not fit one page
    row = _row(md, "n=4")
    assert row["NLL / token ↓"] == "1.260 ± 0.006" and row["reference"] == "1000"  # first part and last part
    df = pd.DataFrame({"row": ["a"], "x": ["1.0 ± 0.1"]})
    assert tables.column_groups(df) == [["row", "x"]]  # a narrow table stays whole
    wide = pd.DataFrame({"row": ["a"]} | {f"c{i}": ["1.000 ± 0.010"] for i in range(30)})
    groups = tables.column_groups(wide)
    assert len(groups) > 1 and all(g[0] == "row" for g in groups)
    assert [c for g in groups for c in g[1:]] == list(wide.columns[1:])
    assert all(sum(tables.column_width(wide, c) for c in g) <= tables.PAGE_CHARS for g in groups)


# ------------------------------------------------------------------------------------------ report

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|href=[\"']([^\"']+)[\"']")


def test_every_link_of_the_report_resolves_inside_the_analysis_folder(run):
    preset, results, out = run
    md = report.render_report({"tables": TABLES}, preset, "small", results, out).read_text()
    links = [a or b for a, b in LINK.findall(md)]
    assert len(links) >= len(MODELS) + 1  # one grid per model + the speed figure
    for link in links:
        target = (out / link).resolve()
        assert target.is_file(), link
        assert target.is_relative_to(out.resolve()), link
    assert "samples/par-n4.png" in links and not any("results" in x for x in links)
    assert "smoke test" not in md


def test_report_sections_order_and_wording(run):
    preset, results, out = run
    md = report.render_report({"tables": TABLES}, preset, "small", results, out).read_text()
    assert md.index("## Verdicts") < md.index("## How to read") < md.index("## Tables")
    assert "**Rule.**" in md and "product of the within-group conditionals" in md and "Floors" in md
    assert "Test split (never trained on): reconstruction PSNR 28.10 dB on 10,000 images" in md
    assert "test accuracy 91.2% on 10,000 test images" in md
    assert "**PAR n=4, causal in-group** (`par-n4-causal`)" in md and "one row per class" in md
    assert (out / "figures" / "speed_vs_quality.png").stat().st_size > 0


def test_the_report_says_where_the_time_went_from_the_benchmark_files(run):
    preset, results, out = run
    md = report.render_report({"tables": TABLES}, preset, "small", results, out).read_text()
    assert "## Where the time went" not in md  # no benchmark files, no section
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule, job, s, cpu in (("train", "par-n4/s0", 600.0, 580.0), ("train", "par-n4/s1", 300.0, 290.0),
                              ("sample", "par-n4/s0", 100.0, 95.0), ("report", "report", 50.0, 1.0)):
        _write_text(results / "benchmarks" / rule / f"{job}.tsv", head + f"{s}\t0:10:00\t1\t1\t1\t1\t0\t0\t90\t{cpu}\n")
    md = report.render_report({"tables": TABLES}, preset, "small", results, out).read_text()
    assert md.index("## Where the time went") < md.index("## Provenance")
    assert "16.7 job-minutes in all" in md
    assert "| train | 2 | 15.0 | 90% | 14.5 |" in md and "| sample | 1 | 1.7 | 10% | 1.6 |" in md
    assert "| report |" not in md  # its own job (a previous render's) is left out


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_lists_have_a_blank_line_before_them_and_render_as_lists(run):
    preset, results, out = run
    md = report.render_report({"tables": TABLES}, preset, "small", results, out).read_text()
    lines = md.splitlines()
    fenced = False
    for prev, line in zip(lines, lines[1:]):
        fenced ^= prev.startswith("```")
        if not fenced and line.startswith("- ") and not prev.startswith("- "):
            assert prev == "", line
    html = (out / "report.html").read_text()
    assert html.count("<ul>") >= md.count("\n\n- ") > 0 and "<li>" in html
    assert report.space_lists("Notes:\n- a\n- b") == "Notes:\n\n- a\n- b\n"


def test_tiny_report_says_it_is_a_smoke_test(tmp_path):
    tiny = yaml.safe_load((ROOT / "config.yaml").read_text())["presets"]["tiny"]["models"]
    video = {m: e for m, e in tiny.items() if tables.is_video(e)}
    md = _tiny_report(tmp_path).read_text()
    assert md.splitlines()[2].startswith("**This is a smoke test of the plumbing, not evidence.**")
    assert ("## Video (Table 4)" in md) == bool(video)


def test_a_missing_sample_grid_names_the_file(run):
    preset, results, out = run
    (results / "samples" / "par-n16" / "s0" / "grid.png").unlink()
    with pytest.raises(UserError, match=r"samples/par-n16/s0/grid\.png: sample grid missing"):
        report.render_report({"tables": TABLES}, preset, "small", results, out)


def test_provenance_is_clean_when_only_the_analysis_folder_changed(tmp_path):
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    for p in ("par.py", "analysis/small/report.md", "out/report.md"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text("v1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    sha = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    (tmp_path / "analysis/small/report.md").write_text("v2\n")
    (tmp_path / "out/report.md").write_text("v2\n")  # an --analysis folder elsewhere in the repository
    (tmp_path / "untracked.txt").write_text("x\n")
    assert report.git_provenance(tmp_path / "out", cwd=tmp_path) == f"{sha.strip()} (clean)"
    (tmp_path / "par.py").write_text("v2\n")
    assert report.git_provenance(tmp_path / "out", cwd=tmp_path) == f"{sha.strip()} with uncommitted changes (par.py)"


# ------------------------------------------------------------------------------------------ ARPG, the peer row

# ARPG at PAR n=4's and n=16's steps (256 // 4 + 3 = 67, 256 // 16 + 3 = 19), worse than PAR at those steps on
# every metric (they follow the NLL); its NLL is never judged
ARPG = {"arpg": ({"size": "small-S", "order": "arpg", "n": 1, "seeds": 3, "arpg_steps": 67}, [1.27, 1.28, 1.29]),
        "arpg-n16steps": ({"trained_as": "arpg", "arpg_steps": 19}, [1.33, 1.34, 1.35])}
ARPG_TABLES = TABLES | {"table2": {"n=1 (LlamaGen)": ["raster-n1"], "PAR n=4": ["par-n4"], "PAR n=16": ["par-n16"],
                                   "ARPG, PAR n=4's steps": ["arpg", "arpg-L"],
                                   "ARPG, PAR n=16's steps": ["arpg-n16steps"]}}


@pytest.fixture
def arpg_run(tmp_path):
    preset = make_results(tmp_path / "results", MODELS | ARPG)
    out = tmp_path / "analysis"
    tables.write_tables_for({"tables": ARPG_TABLES}, preset, "small", tmp_path / "results", out / "tables")
    return preset, tmp_path / "results", out


def _row(md: str, label: str) -> dict:
    """The cells of row `label`, over every part of a table split to fit the page."""
    cells = lambda x: [c.strip() for c in x.strip("|").split("|")]  # noqa: E731
    out, header = {}, None
    for line in md.splitlines():
        if line.startswith("| row "):
            header = cells(line)
        elif header and line.startswith(f"| {label} "):
            out |= dict(zip(header, cells(line)))
    return out


def test_arpg_rows_mark_their_nll_as_a_bound_and_say_why(arpg_run):
    _, _, out = arpg_run
    md = (out / "tables" / "table2.md").read_text()
    arpg, n16, par = (_row(md, r) for r in ("ARPG, PAR n=4's steps", "ARPG, PAR n=16's steps", "PAR n=4"))
    assert arpg["NLL / token ↓"] == n16["NLL / token ↓"] == "≤ 1.280 ± 0.006"  # one set of weights, one NLL
    assert par["NLL / token ↓"] == "1.260 ± 0.006"  # PAR's is exact: no mark
    assert arpg["setup"] == "ARPG, 67 steps, arccos schedule" and n16["setup"] == "ARPG, 19 steps, arccos schedule"
    assert arpg["steps"] == par["steps"] == "67" and n16["steps"] == _row(md, "PAR n=16")["steps"] == "19"
    assert n16["seeds"] == "3" and n16["params"] == arpg["params"] == "400,007"  # trained_as: arpg's runs
    assert ("ARPG's NLL is the mean over 4 random orders per image (an upper bound on the NLL of its mixture over "
            "orders), scored with causal training contexts; PAR's is exact.") in md
    df = pd.read_csv(out / "tables" / "table2.csv", index_col="row")
    assert df.loc["ARPG, PAR n=4's steps", "nll_kind"] == "random-order upper bound"
    assert df.loc["PAR n=4", "nll_kind"] == "exact"
    assert r"$\leq$ 1.280" in (out / "tables" / "table2.tex").read_text()
    assert "≤" not in (out / "tables" / "table3b.md").read_text()  # no ARPG row, no mark, no footnote


def test_arpg_is_judged_on_sample_quality_only(arpg_run):
    _, _, out = arpg_run
    df = pd.read_csv(out / "tables" / "verdicts.csv")
    arpg = df[df.claim == "ARPG vs PAR at equal steps (ARPG's claim: better)"]
    assert set(zip(arpg.comparison, arpg.metric)) == {
        (f"table2: ARPG, PAR n={n}'s steps better than PAR n={n}", m)
        for n in (4, 16) for m in ("classifier FID", "class accuracy")}
    got = dict(zip(arpg.comparison, arpg.verdict))  # worse FID and accuracy than PAR at the same steps
    assert got["table2: ARPG, PAR n=16's steps better than PAR n=16"] == "contradicted (A worse)"  # 3 ± 0.8, df 4
    assert got["table2: ARPG, PAR n=4's steps better than PAR n=4"] == "not resolved"  # 2 ± 0.8: t(4) = 2.78
    assert "NLL / token" in set(df.metric)  # the other claims still are judged on NLL
    assert "never on NLL" in (out / "tables" / "verdicts.md").read_text()


def test_without_arpg_rows_there_is_no_arpg_verdict_or_section(tmp_path, run):
    preset, results, out = run
    tables.write_tables_for({"tables": ARPG_TABLES}, preset, "small", results, out / "tables")
    assert not pd.read_csv(out / "tables" / "verdicts.csv").claim.str.startswith("ARPG").any()
    assert "ARPG" not in (out / "tables" / "table2.md").read_text()
    md = report.render_report({"tables": ARPG_TABLES}, preset, "small", results, out).read_text()
    assert "## ARPG" not in md and "diamonds" not in md and "see ARPG below" not in md


def test_the_report_says_what_the_arpg_rows_are_and_their_verdicts(arpg_run):
    preset, results, out = arpg_run
    md = report.render_report({"tables": ARPG_TABLES}, preset, "small", results, out).read_text()
    section = md[md.index("## ARPG beside PAR"):md.index("## How to read")]
    assert ("- **ARPG, PAR n=4's steps** (`arpg`, ARPG, 67 steps, arccos schedule): 67 steps, 400,007 parameters, "
            "3 seeds; beside **PAR n=4** (`par-n4`, PAR n=4): 67 steps, 400,001 parameters, 3 seeds.") in section
    assert "**ARPG, PAR n=16's steps** (`arpg-n16steps`" in section and "upper bound" in section
    lines = [x for x in section.splitlines() if x.startswith("- table2: ")]
    assert len(lines) == 4 and all(x.endswith("→ **contradicted (A worse)**") == ("n=16" in x) for x in lines)
    assert not any("NLL" in x for x in lines)
    assert "**ARPG, 19 steps, arccos schedule** (`arpg-n16steps`)" in md  # its sample grid


def test_the_speed_figure_draws_arpg_as_its_own_points(arpg_run, monkeypatch):
    import matplotlib.pyplot as plt

    preset, results, out = arpg_run
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    assert report.speed_plot(preset, results, out / "f.png").stat().st_size > 0
    handles, labels = figs[0].axes[0].get_legend_handles_labels()
    style = {lb: (h[0].get_marker(), h[0].get_color()) for h, lb in zip(handles, labels)
             if not lb.startswith("floor")}  # a model's point: an errorbar container (a floor is a line)
    arpg = style["ARPG, 67 steps, arccos schedule"], style["ARPG, 19 steps, arccos schedule"]
    others = [v for lb, v in style.items() if not lb.startswith("ARPG")]
    assert {m for m, _ in arpg} == {"D"} and {m for m, _ in others} == {"o"}
    assert arpg[0][1] != arpg[1][1] and not {c for _, c in arpg} & {c for _, c in others}
    assert [ax.get_ylabel() for ax in figs[0].axes[2:4]] == ["NLL / token ↓ (ARPG: upper bound)"] * 2


def test_an_off_scale_floor_is_named_in_the_legend_not_drawn_on_the_axes(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    preset = make_results(tmp_path / "r", {m: MODELS[m] for m in ("raster-n1", "par-n4", "par-n4-causal")})
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    path = report.speed_plot(preset, tmp_path / "r", tmp_path / "f.png")
    legend = [t.get_text() for t in figs[0].legends[0].get_texts()]
    # classifier FID: models 24–29; the floors 0 (real) and 10 (reconstruction) would squash them
    assert "floor: real images: 0 (off scale, below)" in legend
    assert "floor: VQ reconstruction: 10 (off scale, below)" in legend
    assert not any(ax.texts for ax in figs[0].axes)  # no label sitting on another floor's line
    from PIL import Image

    assert Image.open(path).size[0] <= 1200  # fits the report's page (legend below the panels, not beside)


def test_released_arpg_weights_show_the_readmes_numbers_as_reported(tmp_path):
    entry = {"size": "GPT-L", "order": "arpg", "checkpoint_url": "https://x/arpg_300m.pt", "score_nll": False,
             "arpg_steps": 64, "arpg_schedule": "cosine"}
    par = {"size": "GPT-3B", "order": "par", "n": 4}
    preset = make_results(tmp_path / "r", {"arpg-L": (entry, [1.3]), "par-3B-n4": (par, [1.2])}, floors=False)
    shutil.rmtree(tmp_path / "r" / "nll" / "arpg-L")  # score_nll: false
    spec = {"PAR n=4": ["par-n4", "par-3B-n4"], "ARPG, PAR n=4's steps": ["arpg", "arpg-L"]}
    tables.write_tables_for({"tables": {"table2": spec}}, preset, "paper", tmp_path / "r", tmp_path / "t")
    md = (tmp_path / "t" / "table2.md").read_text()
    row = _row(md, "ARPG, PAR n=4's steps")
    assert row["setup"] == "ARPG, 64 steps, arccos schedule, released weights"  # as sampled (sampling.json)
    assert (row["Inception FID ↓ (paper)"], row["IS ↑ (paper)"], row["steps (paper)"]) == ("2.44", "292", "64")
    assert (row["schedule (paper)"], row["CFG (paper)"]) == ("cosine", "4.5")
    assert "nll: not scored (score_nll: false): arpg-L" in md


# ------------------------------------------------------------------------------------------ in a browser


def _tiny_report(tmp_path: Path) -> Path:
    """The tiny preset of config.yaml, image and video models, as a synthetic results tree; its report."""
    from test_table4 import make_video_results

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    tiny = cfg["presets"]["tiny"]["models"]
    video = {m: e for m, e in tiny.items() if tables.is_video(e)}  # the video half writes its own files
    models = {m: (e, [1.3 + i / 100] * (e.get("seeds") or 1)) for i, (m, e) in enumerate(tiny.items())
              if m not in video}
    make_results(tmp_path / "r", models, nll=False, floors=False)
    make_video_results(tmp_path / "r", {m: (e, [50.0 + i] * (e.get("seeds") or 1), [2.0 + i / 100] *
                                            (e.get("seeds") or 1)) for i, (m, e) in enumerate(video.items())},
                       floors=False, vq=False)
    tables.write_tables(ROOT / "config.yaml", "tiny", tmp_path / "r", tmp_path / "a" / "tables")
    return report.build_report(ROOT / "config.yaml", "tiny", tmp_path / "r", tmp_path / "a")


def _report_of(kind: str, tmp_path: Path) -> Path:
    """report.md of a synthetic preset: "small" (every image table, ARPG), "small-video" (video only), "tiny"."""
    if kind == "tiny":
        return _tiny_report(tmp_path)
    if kind == "small-video":
        from test_table4 import ALL_TABLES, make_video_results

        preset, spec = make_video_results(tmp_path / "results"), ALL_TABLES
    else:
        preset, spec = make_results(tmp_path / "results", MODELS | ARPG), ARPG_TABLES
    out = tmp_path / "analysis"
    tables.write_tables_for({"tables": spec}, preset, kind, tmp_path / "results", out / "tables")
    return report.render_report({"tables": spec}, preset, kind, tmp_path / "results", out)


def test_a_video_only_report_shows_only_what_its_preset_has(tmp_path):
    md = _report_of("small-video", tmp_path).read_text()
    for absent in ("class accuracy", "ARPG", "FID", "No model of preset", "at chance"):
        assert absent not in md, absent
    assert "Welch–Satterthwaite" in md and "FVD" in md and "Many claims at once" in md
    small = _report_of("small", tmp_path / "small").read_text()
    assert "class accuracy" in small and "ARPG vs PAR is judged on sample quality only" in small


PAGE = {"width": 1280, "height": 900}  # the reader's window (issue 25: the report reads at 1280 px)
OVERFLOW = """() => {
  const doc = document.documentElement, wide = [];
  for (const el of document.querySelectorAll('table, pre, img, p')) {
    const r = el.getBoundingClientRect();
    if (el.scrollWidth > el.clientWidth + 1 || r.right > window.innerWidth + 1)
      wide.push(el.tagName + ' ' + Math.round(r.right) + ' ' + (el.getAttribute('src') || el.textContent.slice(0, 60)));
  }
  return {scroll: doc.scrollWidth, client: doc.clientWidth, wide};
}"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["small", "small-video", "tiny"])
def test_report_html_in_a_headless_browser(kind, tmp_path):
    """Every image loads, every Markdown list is an HTML list, and the page reads at 1280 px without horizontal
    scrolling (no table, code block or figure wider than the window), in Debian's chromium driven by Playwright."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing (pip install playwright)")
    md_path = _report_of(kind, tmp_path)
    md = md_path.read_text()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport=PAGE)
        page.goto((md_path.parent / "report.html").resolve().as_uri(), wait_until="load")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth])")
        items = page.eval_on_selector_all("ul > li", "lis => lis.length")
        lists = page.eval_on_selector_all("ul", "uls => uls.length")
        overflow = page.evaluate(OVERFLOW)
        browser.close()
    assert len(widths) == md.count("![") and all(w > 0 for _, w in widths), widths
    assert lists == md.count("\n\n- ") and items == len(re.findall(r"^- ", md, re.M))
    assert overflow["scroll"] <= overflow["client"] and not overflow["wide"], overflow
