"""Table 4 (class-conditional video) from a synthetic results tree: FVD cells (mean ± SE over seeds, the run's
bootstrap SE with one seed), seconds per clip, the paper's values beside the ucf101 models, the FVD protocol note,
video floors only in the video table; its verdicts; and the report's video section (GIFs copied), for a preset with
images and video and for a video-only one."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from test_report import LINK, MODELS, TABLES, _row, _write, make_results

from par.analysis import report, tables, verdicts
from par.errors import UserError

TABLE4 = {"PAR-1×": ["video-n1", "ucf-par-n1"], "PAR-4×": ["video-n4", "ucf-par-n4"],
          "PAR-16×": ["video-n16", "ucf-par-n16"]}
ALL_TABLES = {k: v for k, v in TABLES.items() if k != "table4"} | {"table4": TABLE4}

# model → (entry, FVD of each seed, NLL of each seed): seeds 2, 2 and 1
VIDEO = {
    "video-n1": ({"size": "small-S", "order": "raster", "n": 1, "modality": "video", "seeds": 2}, [50.0, 52.0],
                 [2.00, 2.02]),
    "video-n4": ({"size": "small-S", "order": "par", "n": 4, "modality": "video", "seeds": 2}, [51.0, 53.0],
                 [2.01, 2.03]),
    "video-n16": ({"size": "small-S", "order": "par", "n": 16, "modality": "video"}, [60.0], [2.30]),
}
STEPS = {1: 320, 4: 83, 16: 35}


def _gif(path: Path, frames: int = 3) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = [Image.new("RGB", (32, 16), (40 * i, 90, 160)) for i in range(frames)]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=100, loop=0)


def make_video_results(root: Path, models: dict = VIDEO, *, floors: bool = True, vq: bool = True) -> dict:
    """The files the video half writes (par fvd, par sample, par train, par nll, floors, the video tokenizer);
    returns the preset section."""
    from PIL import Image

    for i, (model, (entry, fvds, nlls)) in enumerate(models.items()):
        for k, (f, nll) in enumerate(zip(fvds, nlls)):
            run = f"s{k}"
            _write(root / "metrics" / model / f"{run}.json",
                   {"metrics": {"fvd": f, "fvd_se": 3.0}, "n_samples": 64, "n_reference": 256, "protocol": None,
                    "generated_clips": 64, "reference_clips": 256, "frames": 16, "unavailable": {}})
            _write(root / "samples" / model / run / "sampling.json",
                   {"forward_calls": STEPS[entry["n"]], "seconds_per_image_batch1": 2.0 / entry["n"] + 0.1 * k,
                    "modality": "video", "num_samples": 64})
            _write(root / "models" / model / run / "config.json", {"params": 500_000 + i})
            _write(root / "nll" / model / f"{run}.json", {"nll": nll, "nll_se": 0.002, "kind": "exact"})
            Image.new("RGB", (90, 30), (10 * i, 50, 90)).save(root / "samples" / model / run / "grid.png")
            _gif(root / "samples" / model / run / "grid.gif")
            (root / "samples" / model / run / "grid.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    if floors:
        for name, fvd in (("video-real", 4.0), ("video-recon", 12.0)):
            _write(root / "floors" / f"{name}.json",
                   {"metrics": {"fvd": fvd, "fvd_se": 0.5}, "n_samples": 64, "n_reference": 256})
    if vq:
        stats = {"psnr_db": 27.31, "psnr_db_se": 0.12, "codebook_usage": 0.85, "code_entropy_bits": 9.1, "clips": 32}
        _write(root / "video" / "vq" / "video_vq_metrics.json",
               {"after": stats | {"test": {**stats, "psnr_db": 26.9, "clips": 1024}}, "grid": [5, 8, 8],
                "tokens_per_clip": 320, "vocab_size": 1024, "params": 1_234_567, "train_clips": 6000,
                "settings": {"steps": 2000}, "clip": [17, 32, 32], "train_window": 9})
    return {"models": {m: e for m, (e, _, _) in models.items()}}


@pytest.fixture
def video_only(tmp_path):
    preset = make_video_results(tmp_path / "results")
    out = tmp_path / "analysis"
    tables.write_tables_for({"tables": ALL_TABLES}, preset, "small-video", tmp_path / "results", out / "tables")
    return preset, tmp_path / "results", out


# ------------------------------------------------------------------------------------------ the table


def test_table4_cells_are_fvd_and_seconds_per_clip(video_only):
    _, _, out = video_only
    md = (out / "tables" / "table4.md").read_text()
    assert md.startswith("### Table 4 — class-conditional video generation (UCF-101 in the paper; CPU presets: "
                         "moving Fashion-MNIST)")
    n1, n4, n16 = (_row(md, r) for r in ("PAR-1×", "PAR-4×", "PAR-16×"))
    assert n4["FVD ↓"] == "52.0 ± 1.0"  # 2 seeds: SE across seeds (std 1.41 / √2), not the runs' bootstrap SE
    assert n16["FVD ↓"] == "60 ± 3"  # 1 seed: the run's bootstrap SE
    assert (n1["seeds"], n16["seeds"]) == ("2", "1")
    assert (n1["steps"], n4["steps"], n16["steps"]) == ("320", "83", "35")
    assert n16["s / clip"] == "0.1250" and "s / image" not in md  # 2 / 16 + 0.1·0
    assert n4["NLL / token ↓"] == "2.020 ± 0.010" and n4["setup"] == "PAR n=4"
    assert (n4["generated"], n4["reference"]) == ("64", "256")
    df = pd.read_csv(out / "tables" / "table4.csv", index_col="row")
    assert df.loc["PAR-4×", "fvd"] == pytest.approx(52.0) and df.loc["PAR-4×", "fvd_n"] == 2
    assert df.loc["PAR-16×", "fvd_se"] == pytest.approx(3.0)
    tex = (out / "tables" / "table4.tex").read_text()
    assert tex.isascii() and r"PAR-4$\times$" in tex


def test_table4_notes_state_the_fvd_protocol(video_only):
    _, _, out = video_only
    md = (out / "tables" / "table4.md").read_text()
    assert ("FVD: I3D (TF-Hub Kinetics-400) logits, 64 generated vs 256 reference clips, 16 frames; ± within a row "
            "with 1 seed is the bootstrap SE over generated clips.") in md
    assert "comparable only at equal clip counts" in md and "biased upward" in md
    assert "generated / reference: the clips FVD compares." in md
    assert "(paper)" not in md and "A100" not in md  # not the ucf101 preset


def test_the_protocol_note_follows_the_metrics_files(tmp_path):
    preset = make_video_results(tmp_path / "r", floors=False)
    for p in (tmp_path / "r" / "metrics").glob("*/*.json"):
        d = json.loads(p.read_text())
        _write(p, d | {"protocol": "stylegan-v", "generated_clips": 2048, "reference_clips": 2048, "frames": 17})
    tables.write_tables_for({"tables": {"table4": TABLE4}}, preset, "small-video", tmp_path / "r", tmp_path / "t")
    md = (tmp_path / "t" / "table4.md").read_text()
    assert "FVD: I3D (TF-Hub Kinetics-400) logits, 2,048 generated vs 2,048 reference clips, 17 frames (protocol " \
           "stylegan-v)" in md
    assert "floor:" not in md  # no floor files: no floor rows
    # reference statistics instead of clips (`par fvd-stats`): the count is n_reference
    for p in (tmp_path / "r" / "metrics").glob("*/*.json"):
        _write(p, json.loads(p.read_text()) | {"protocol": None, "reference_clips": None, "n_reference": 512})
    tables.write_tables_for({"tables": {"table4": TABLE4}}, preset, "small-video", tmp_path / "r", tmp_path / "t")
    md = (tmp_path / "t" / "table4.md").read_text()
    assert "FVD: I3D (TF-Hub Kinetics-400) logits, 2,048 generated vs 512 reference clips, 17 frames; ±" in md


def test_video_floors_only_in_the_video_table_and_image_floors_only_in_image_tables(tmp_path):
    results = tmp_path / "r"
    preset = make_results(results, MODELS)  # image results and floors/{real,recon}.json
    image_only = tmp_path / "image-only"
    tables.write_tables_for({"tables": ALL_TABLES}, preset, "small", results, image_only)
    preset["models"] |= make_video_results(results)["models"]  # + video results and floors/video-*.json
    both = tmp_path / "both"
    tables.write_tables_for({"tables": ALL_TABLES}, preset, "small", results, both)
    t4 = (both / "table4.md").read_text()
    assert "floor: real clips" in t4 and "floor: tokenizer reconstruction (rFVD)" in t4
    assert "floor: real images" not in t4 and "floor: VQ reconstruction" not in t4
    assert _row(t4, "floor: tokenizer reconstruction (rFVD)")["FVD ↓"] == "12.0 ± 0.5"
    for name in ALL_TABLES:
        if name == "table4":
            continue
        md = (both / f"{name}.md").read_text()
        assert "floor: real images" in md and "clips" not in md and "FVD" not in md, name
        for ext in ("md", "csv", "tex"):  # byte for byte what the image-only preset writes
            assert (both / f"{name}.{ext}").read_text() == (image_only / f"{name}.{ext}").read_text(), (name, ext)
    assert "No model of preset `small` fills this table" in (image_only / "table4.md").read_text()


def test_ucf101_models_show_the_papers_table4_beside_ours(tmp_path):
    ucf = {m.replace("video-", "ucf-par-"): v for m, v in VIDEO.items()}
    preset = make_video_results(tmp_path / "r", ucf)
    assert tables.reports_paper("ucf101") and not tables.reports_paper("small-video")
    tables.write_tables_for({"tables": {"table4": TABLE4}}, preset, "ucf101", tmp_path / "r", tmp_path / "t")
    md = (tmp_path / "t" / "table4.md").read_text()
    got = {r: _row(md, r) for r in ("PAR-1×", "PAR-4×", "PAR-16×")}
    paper = {r: (g["FVD ↓ (paper)"], g["steps (paper)"], g["s / clip (paper)"]) for r, g in got.items()}
    assert paper == {"PAR-1×": ("94.1", "1280", "43.3"), "PAR-4×": ("99.5", "323", "11.27"),
                     "PAR-16×": ("103.4", "95", "3.44")}
    assert got["PAR-4×"]["model"] == "ucf-par-n4" and got["PAR-4×"]["FVD ↓"] == "52.0 ± 1.0"
    assert "Columns marked (paper) are the paper's reported numbers." in md
    assert "seconds per clip on an A100 GPU at batch size 1" in md
    df = pd.read_csv(tmp_path / "t" / "table4.csv", index_col="row")
    assert df.loc["PAR-16×", "paper fvd"] == pytest.approx(103.4)


def test_a_table_mixing_images_and_video_is_an_error(tmp_path):
    preset = make_results(tmp_path / "r", {"par-n4": MODELS["par-n4"]}, floors=False)
    preset["models"] |= make_video_results(tmp_path / "r", floors=False)["models"]
    with pytest.raises(UserError, match=r"tables\.mixed: mixes image and video models"):
        tables.write_tables_for({"tables": {"mixed": {"a": ["par-n4"], "b": ["video-n4"]}}}, preset, "small",
                                tmp_path / "r", tmp_path / "t")


def test_table4_verdicts_are_written_with_the_tables(video_only):
    _, _, out = video_only
    df = pd.read_csv(out / "tables" / "verdicts.csv")
    got = {(r.comparison, r.metric): (r.claim, r.verdict, r.error_bar) for r in df.itertuples()}
    similar, worse = "Table 4: video n=4 ≈ n=1 (paper FVD 99.5 vs 94.1)", "Table 4: video n=16 worse than n=4 " \
                                                                          "(paper 103.4 vs 99.5)"
    assert got == {
        # NLL 2.02 vs 2.01 ± 0.014: not worse by 5%; FVD 52 vs 51 ± 1.4: the upper bound of 1 crosses the 2.55 margin
        ("table4: PAR-4× ≈ PAR-1×", "NLL / token"): (similar, "reproduced (A not worse)", "across seeds"),
        ("table4: PAR-4× ≈ PAR-1×", "FVD"): (similar, "not resolved", "across seeds"),
        # FVD 52 vs 60: −8 ± 3.2 (PAR-16× has one seed: its bootstrap SE)
        ("table4: PAR-4× better than PAR-16×", "NLL / token"): (worse, "reproduced", "per-run SE (one seed)"),
        ("table4: PAR-4× better than PAR-16×", "FVD"): (worse, "reproduced", "per-run SE (one seed)"),
    }
    md = (out / "tables" / "verdicts.md").read_text()
    assert verdicts.VIDEO_RULE.strip() in md and "bootstrap" in md


# ------------------------------------------------------------------------------------------ the report


@pytest.fixture
def images_and_video(tmp_path):
    """A preset with image models and video models; the report of the image part alone (the same results) too."""
    results = tmp_path / "results"
    preset = make_results(results, MODELS)
    image_only = tmp_path / "image-only"
    tables.write_tables_for({"tables": ALL_TABLES}, preset, "small", results, image_only / "tables")
    image_md = report.render_report({"tables": ALL_TABLES}, preset, "small", results, image_only).read_text()
    preset = {"models": preset["models"] | make_video_results(results)["models"]}
    out = tmp_path / "analysis"
    tables.write_tables_for({"tables": ALL_TABLES}, preset, "small", results, out / "tables")
    md = report.render_report({"tables": ALL_TABLES}, preset, "small", results, out).read_text()
    return md, image_md, out


def _section(md: str, start: str, end: str = "\n## ") -> str:
    i = md.index(start)
    j = md.find(end, i + len(start))
    return md[i:] if j < 0 else md[i:j]


def test_report_adds_a_video_section_and_leaves_the_image_part_as_it_was(images_and_video):
    md, image_md, out = images_and_video
    assert md.index("## Samples") < md.index("## Video (Table 4)") < md.index("## Provenance")
    # everything before the video section is the image-only report (bar its provenance)
    assert md[:md.index("## Video (Table 4)")] == image_md[:image_md.index("## Provenance")]
    assert "table4" not in _section(md, "## Verdicts") and "Table 4 —" not in _section(md, "## Tables")
    video = _section(md, "## Video (Table 4)")
    assert "### Table 4 — class-conditional video generation" in video and "| PAR-4× " in video
    assert "table4: PAR-4× better than PAR-16×" in video and "By the rule of the Verdicts section." in video
    assert "+5.7% of PAR-1×'s (99.5 vs 94.1), worse by more than the 5% margin" in video
    assert ("Video tokenizer: 1,234,567 parameters, token grid 5×8×8 = 320 tokens per clip, vocabulary 1,024, "
            "trained 2,000 steps on 6,000 clips in 9-frame windows; held-out: reconstruction PSNR 27.31 ± 0.12 dB on 32 clips, codebook usage "
            "85.0%, code entropy 9.10 bits; test split (never trained on): reconstruction PSNR 26.90 ± 0.12 dB on "
            "1,024 clips") in video
    assert ("Floors (FVD against the models' reference): held-out real clips 4.0 ± 0.5; the same clips through the "
            "tokenizer, its reconstruction FVD (rFVD) 12.0 ± 0.5 (64 clips).") in video
    assert "**PAR n=16** (`video-n16`)" in video and "![video-n16: animated clips" in video
    assert "video-n4" not in _section(md, "## Samples")  # the image grids only


def test_video_grids_and_gifs_are_copied_and_every_link_resolves(images_and_video):
    from PIL import Image

    md, _, out = images_and_video
    links = [a or b for a, b in LINK.findall(md)]
    for link in links:
        target = (out / link).resolve()
        assert target.is_file() and target.is_relative_to(out.resolve()), link
    for m in VIDEO:
        assert f"samples/{m}.gif" in links and f"samples/{m}.png" in links
        with Image.open(out / "samples" / f"{m}.gif") as gif:
            assert gif.format == "GIF" and gif.n_frames == 3  # the animation, not a still
    assert "figures/video_speed_vs_quality.png" in links
    html = (out / "report.html").read_text()
    assert '<img alt="video-n4: animated clips, one row per class" src="samples/video-n4.gif"' in html


def test_a_video_only_preset_has_a_report_without_image_sections(video_only):
    preset, results, out = video_only
    md = report.render_report({"tables": ALL_TABLES}, preset, "small-video", results, out).read_text()
    headings = re.findall(r"^## .*", md, re.M)
    assert headings == ["## Video (Table 4)", "## Provenance"]  # no image section: verdicts, tables, samples, …
    for absent in ("No model of preset", "Table 3", "figures/speed_vs_quality.png", "entropy map"):
        assert absent not in md, absent
    assert md.index("## Video (Table 4)") < md.index("## Provenance")
    video = _section(md, "## Video (Table 4)")
    assert "**Rule.**" in video and verdicts.VIDEO_RULE.strip() in video  # the rule itself, from verdicts.md
    assert "| Table 4: video n=16 worse than n=4 (paper 103.4 vs 99.5) " in video
    assert (out / "samples" / "video-n1.gif").is_file() and not (out / "figures" / "speed_vs_quality.png").exists()
    assert (out / "figures" / "video_speed_vs_quality.png").stat().st_size > 0


def test_a_missing_gif_names_the_file(video_only):
    preset, results, out = video_only
    (results / "samples" / "video-n4" / "s0" / "grid.gif").unlink()
    with pytest.raises(UserError, match=r"samples/video-n4/s0/grid\.gif: sample grid missing"):
        report.render_report({"tables": ALL_TABLES}, preset, "small-video", results, out)


def test_the_video_speed_figure_plots_fvd_per_clip(video_only, monkeypatch):
    import matplotlib.pyplot as plt

    preset, results, out = video_only
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    assert report.speed_plot(preset, results, out / "v.png", kind="video").stat().st_size > 0
    axes = figs[0].axes
    assert [ax.get_ylabel() for ax in axes[:2]] == ["FVD ↓"] * 2
    assert axes[1].get_xlabel() == "seconds / clip (batch 1)"
    _, labels = axes[0].get_legend_handles_labels()
    floors = " ".join(labels + [t.get_text() for t in axes[0].texts])  # a line, or named in a corner (off scale)
    assert "floor: tokenizer reconstruction (rFVD)" in floors and "floor: real clips" in floors
    assert "floor: real images" not in floors
    assert [lb for lb in labels if not lb.startswith("floor")] == ["raster n=1", "PAR n=4", "PAR n=16"]
    assert report.speed_plot(preset, results, out / "i.png") is None  # no image model: no image figure


def test_without_video_results_the_tables_do_not_change(tmp_path):
    """The Table 4 machinery leaves an image preset's files alone: no video floor, column or note appears."""
    preset = make_results(tmp_path / "r", MODELS)
    _write(tmp_path / "r" / "floors" / "video-real.json", {"metrics": {"fvd": 4.0, "fvd_se": 0.5}, "n_samples": 8})
    tables.write_tables_for({"tables": ALL_TABLES}, preset, "small", tmp_path / "r", tmp_path / "t")
    text = "".join(p.read_text() for p in (tmp_path / "t").glob("table3*.md"))
    assert "clips" not in text and "FVD" not in text and re.search(r"\| floor: real images ", text)
    assert "Table 4" not in (tmp_path / "t" / "verdicts.md").read_text()


@pytest.mark.slow
def test_video_report_html_in_a_headless_browser(images_and_video):
    """Every image of the report with a video section loads in a real browser, the GIFs among them."""
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing (pip install playwright)")
    md, _, out = images_and_video
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((out / "report.html").resolve().as_uri(), wait_until="load")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth])")
        browser.close()
    assert len(widths) == md.count("![") and all(w > 0 for _, w in widths), widths
    assert {s for s, _ in widths if s.endswith(".gif")} == {f"samples/{m}.gif" for m in VIDEO}
