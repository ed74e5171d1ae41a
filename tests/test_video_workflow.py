"""The video half of the workflow (Table 4): `modality: video` models in par/workflow.py's `Experiment` (runs, tokens
and tokenizer per modality, the `{run}` regexes that pick `par evaluate` or `par fvd`, flags of the video rules,
the data.source none checks), `par plan` of the ucf101 preset, and Snakemake dry runs of the small-video, tiny and
ucf101 presets (workflow/rules/video.smk, sample.smk, evaluate.smk, report.smk), each in a temporary --directory."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from par.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = str(ROOT / "workflow/Snakefile")


def _config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def _experiment(preset="tiny", edit=None):
    from par.workflow import Experiment

    cfg = _config()
    cfg["preset"] = preset
    if edit:
        edit(cfg["presets"][preset])
    return Experiment(cfg)


# ------------------------------------------------------------------------------------------ Experiment (no Snakemake)

TINY_VIDEO = ["video-n1", "video-n16", "video-n4"]


def test_models_runs_tokens_and_tokenizer_follow_the_modality():
    e = _experiment("tiny")
    assert e.has_video and e.video_models == TINY_VIDEO
    assert set(e.image_models) == set(e.models) - set(TINY_VIDEO) and "par-n4" in e.image_models
    assert e.video_runs == [f"{m}/s0" for m in TINY_VIDEO]
    assert e.image_runs == [r for r in e.runs if not r.startswith("video-")]
    assert e.tokens_manifest("video-n4/s0") == "results/tiny/video/tokens/manifest.json"
    assert e.tokens_manifest("video-n4/s0", heldout=True) == "results/tiny/video/tokens_heldout/manifest.json"
    assert e.tokens_manifest("par-n4/s0") == "results/tiny/tokens/manifest.json"
    assert e.tokens_manifest("par-n4/s0", heldout=True) == "results/tiny/tokens_heldout/manifest.json"
    assert e.tokenizer_path("video-n16/s0") == e.video_vq_path() == "results/tiny/video/vq/video_vq.pt"
    assert e.tokenizer_path("par-n16/s0") == e.vq_path() == "results/tiny/vq/vq.pt"
    assert set(e.video_runs) <= set(e.nll_runs)  # scored on the held-out video tokens
    # seeds and trained_as carry the modality: the extra entry samples video-n4's runs
    e = _experiment("tiny", lambda p: (p["models"]["video-n4"].update(seeds=2), p["models"].update(
        {"video-n4-more": {"size": "tiny-S", "order": "par", "n": 4, "trained_as": "video-n4"}})))
    assert e.is_video("video-n4-more") and "video-n4-more" in e.video_models
    assert {"video-n4/s1", "video-n4-more/s0", "video-n4-more/s1"} <= set(e.video_runs)
    assert e.model_path("video-n4-more/s1") == "results/tiny/models/video-n4/s1/model.pt"
    assert e.tokens_manifest("video-n4-more/s1") == "results/tiny/video/tokens/manifest.json"
    # a preset without video models has no video half
    small = _experiment("small")
    assert not small.has_video and small.video_models == small.video_runs == [] and small.video_floors == []
    # a local video tokenizer replaces the trained one, and is checked as a user input
    e = _experiment("tiny", lambda p: p["video"]["tokenizer"].update(checkpoint="/ckpt/video vq.pt"))
    assert e.video_vq_path() == e.tokenizer_path("video-n1/s0") == "/ckpt/video vq.pt"
    assert ("presets.tiny.video.tokenizer.checkpoint", "/ckpt/video vq.pt", "file") in e.user_inputs()


def test_run_patterns_match_exactly_the_runs_of_their_modality():
    # an image model whose name starts with a video model's: the alternatives must be anchored; a name with a
    # regex character in it: taken literally
    e = _experiment("tiny", lambda p: (p["models"]["video-n1"].update(seeds=12), p["models"].update(
        {"video-n1-img": {"size": "tiny-S", "order": "par", "n": 4},
         "video-n4.5": {"size": "tiny-S", "order": "par", "n": 4, "modality": "video"}})))
    video, image = e.run_pattern(video=True), e.run_pattern(video=False)
    assert "video-n1-img/s0" in e.image_runs and {"video-n1/s11", "video-n4.5/s0"} <= set(e.video_runs)
    for run in e.runs:
        assert bool(re.fullmatch(video, run)) == (run in e.video_runs), run
        assert bool(re.fullmatch(image, run)) == (run in e.image_runs), run
    for other in ("video-n4", "video-n4/s", "video-n4/s0/x", "video-n4/sx", "xvideo-n4/s0", "video-n/s0",
                  "video.n4/s0", "video-n4-img/s0", "tokens/s0", "video-n4x5/s0"):
        assert not re.fullmatch(video, other), other
    assert not re.fullmatch(image, "par-n4x/s0") and not re.fullmatch(image, "par.n4/s0")
    only_video = _experiment("small-video")
    assert only_video.image_models == [] and only_video.run_pattern(video=False) == "(?!)"
    assert not any(re.fullmatch("(?!)", r) for r in only_video.runs)
    assert all(re.fullmatch(only_video.run_pattern(video=True), r) for r in only_video.runs)
    assert _experiment("small").run_pattern(video=True) == "(?!)"


def test_video_rule_flags():
    tiny = _experiment("tiny")
    assert tiny.prepare_video_args("train") == ("--split train --frames 9 --num-videos 400 --shard-size 200 "
                                                "--size 32 --source moving-mnist --speed 2.0")
    assert tiny.prepare_video_args("test") == ("--split test --frames 9 --num-videos 96 --shard-size 200 "
                                               "--size 32 --source moving-mnist --speed 2.0")  # heldout_videos
    assert tiny.video_vq_train_args() == ("--batch-size 8 --bits 8 --ch 8 --ch-mult 1,2,2 --frames 9 --heldout 16 "
                                          "--lr 0.003 --steps 100 --temporal-downsample 1,1")  # the clips' frames
    assert tiny.video_tokenize_args() == "" and tiny.video_slots == []
    sv = _experiment("small-video")
    assert "--frames 17 " in sv.video_vq_train_args() and "--item-size 16 " in sv.prepare_video_args("train")
    assert "--num-videos 1024 " in sv.prepare_video_args("test") and "--num-videos 6000 " in sv.prepare_video_args(
        "train")
    assert sv.video_tokenize_args() == "--batch-size 32"
    assert sv.fvd_args() == "--frames 16 --batch-size 16 --bootstrap 50 --device auto"  # the job's GPU if it has one
    assert sv.fvd_stats_args() == "--max-clips 256 --frames 16 --batch-size 16 --device auto"
    assert sv.video_floors == ["real", "recon"] and sv.video_floor_args() == "--max-clips 64"
    assert sv.resources("fvd") == {"mem_mb": 6000, "runtime": 60, "cpus_per_task": 2}
    # the tokenizer's own frames win over the clips'
    e = _experiment("small-video", lambda p: p["video"]["tokenizer"]["train"].update(frames=5))
    assert e.video_vq_train_args().count("--frames") == 1 and "--frames 5 " in e.video_vq_train_args()
    assert _experiment("small-video", lambda p: p["video"]["fvd"].update(floor_clips=0)).video_floors == []
    ucf = _experiment("ucf101")
    assert ucf.video_slots == list(range(16)) and ucf.video_tokenize_args() == "--batch-size 32 --device cuda"
    assert "--source ucf101 " in ucf.prepare_video_args("train") and "--split-index 1" in ucf.prepare_video_args(
        "train")
    assert "--num-videos" not in ucf.prepare_video_args("train")  # every train video
    assert "--frames 17 " in ucf.video_vq_train_args() and "--bits 16 " in ucf.video_vq_train_args()
    assert ucf.fvd_args() == "--frames 16 --batch-size 32 --bootstrap 50 --device cuda"
    assert ucf.fvd_stats_args().startswith("--max-clips 0 ")  # MAGVIT's protocol: the whole train split
    for stage in ("video_tokenize", "video_tokenizer", "fvd", "train", "sample"):
        assert ucf.resources(stage).get("gpu", 0) >= 1, stage
    assert "gpu" not in ucf.resources("video_data")


def test_a_video_only_preset_passes_the_source_none_checks_and_scores_nll():
    e = _experiment("small-video")
    assert not e.has_images and e.floors == [] and not e.uses_classifier and e.reference_stats() == ""
    assert e.nll_runs == e.video_runs == e.runs and len(e.runs) == 9  # three seeds of three models
    ucf = _experiment("ucf101")
    assert ucf.nll_runs == ucf.video_runs == ["ucf-par-n1/s0", "ucf-par-n16/s0", "ucf-par-n4/s0"]
    # an image model to train still needs images
    with pytest.raises(UserError, match=r"presets.small-video.models: extra would be trained, but data.source is "
                                        r"none"):
        _experiment("small-video", lambda p: p["models"].update(extra={"size": "tiny-S", "order": "par", "n": 4}))
    # a released image model needs reference statistics, and is not scored by NLL
    released = {"size": "GPT-L", "order": "par", "n": 4, "checkpoint": "/ckpt/par.pt"}
    with pytest.raises(UserError, match="source none needs reference_stats"):
        _experiment("small-video", lambda p: p["models"].update(released=released))
    e = _experiment("small-video", lambda p: (p["models"].update(released=released),
                                              p["data"].update(reference_stats="/stats/ref.npz")))
    assert "released/s0" in e.image_runs and "released/s0" not in e.nll_runs and len(e.nll_runs) == 9


def test_ucf101_paths_are_user_inputs_checked_by_key():
    e = _experiment("ucf101")
    clips = _config()["presets"]["ucf101"]["video"]["clips"]
    assert e.user_inputs() == [("presets.ucf101.video.clips.root", clips["root"], "folder"),
                               ("presets.ucf101.video.clips.lists", clips["lists"], "folder")]
    with pytest.raises(UserError, match="presets.ucf101.video.clips.root: required for source ucf101"):
        _experiment("ucf101", lambda p: p["video"]["clips"].pop("root")).user_inputs()
    with pytest.raises(UserError, match=r"presets.ucf101.video.clips.root: /nowhere/UCF-101: no such folder"):
        _experiment("ucf101", lambda p: p["video"]["clips"].update(root="/nowhere/UCF-101")).check_inputs()


# ------------------------------------------------------------------------------------------ par plan

def test_plan_of_ucf101_uses_the_5x16x16_grid_of_the_16_bit_tokenizer(tmp_path):
    from par.core.order import Order
    from par.train.plan import UCF101_TRAIN_VIDEOS, _network, plan

    rows = {r["model"]: r for r in plan(ROOT / "config.yaml", "ucf101", tmp_path / "results", 0.4)}
    assert sorted(rows) == ["ucf-par-n1", "ucf-par-n16", "ucf-par-n4"]
    seq, params = {}, {}
    for name, (order, n) in {"ucf-par-n1": ("raster", 1), "ucf-par-n4": ("par", 4), "ucf-par-n16": ("par", 16)}.items():
        r = rows[name]
        assert r["train_steps"] == 3000 * (9537 // 256) == 3000 * (UCF101_TRAIN_VIDEOS // 256)  # epochs × steps
        assert r["params"] == _network("GPT-L", order, n, (5, 16, 16), 65536, 101)[0]
        assert r["params"] != _network("GPT-L", order, n, (24, 24), 16384, 1000)[0]  # not ImageNet's
        seq[n] = r["train_flops"] / (6 * r["params"] * r["train_steps"] * 256)
        assert seq[n] == Order((5, 16, 16), order, n).layout.seq_len
        # 1280 tokens per clip, 10,000 clips, doubled by guidance (cfg 1.15)
        assert r["sample_flops"] == 2 * r["params"] * 1280 * 10000 * 2
        assert r["gpus"] == 8 and r["fix"] == ""
        params[n] = r["params"]
    assert seq == {1: 1280, 4: 1283, 16: 1295}
    assert len(set(params.values())) == 3


def test_plan_reads_the_video_token_manifest_once_it_exists(tmp_path, capsys):
    from par.cli import main
    from par.train.plan import _network, plan

    res = tmp_path / "results"
    (res / "video" / "tokens").mkdir(parents=True)
    (res / "video" / "tokens" / "manifest.json").write_text(json.dumps(
        {"num_images": 640, "grid": [3, 4, 4], "codebook_size": 256, "num_classes": 5}))
    rows = {r["model"]: r for r in plan(ROOT / "config.yaml", "small-video", res, 0.4)}
    r = rows["video-n4"]
    assert r["params"] == _network("small-S", "par", 4, (3, 4, 4), 256, 5)[0]
    assert r["train_steps"] == 250 and r["sample_flops"] == 2 * r["params"] * 48 * 64 * 2
    assert main(["plan", "--config", str(ROOT / "config.yaml"), "--preset", "small-video", "--results",
                 str(res)]) == 0
    out = capsys.readouterr().out
    assert all(f"| {m} " in out for m in ("video-n1", "video-n4", "video-n16"))


def test_plan_costs_a_trained_as_entry_of_a_video_model_as_video(tmp_path):
    """An entry sampling another's runs (`trained_as`) takes its modality from it (as `Experiment.is_video` does):
    it samples clips of the video grid, with no training."""
    from par.train.plan import plan

    cfg = _config()
    cfg["presets"]["small-video"]["models"]["video-n4-more"] = {"size": "small-S", "order": "par", "n": 4,
                                                                "trained_as": "video-n4"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    rows = {r["model"]: r for r in plan(tmp_path / "c.yaml", "small-video", tmp_path / "results", 0.4)}
    more, target = rows["video-n4-more"], rows["video-n4"]
    assert more["train_flops"] == 0 and target["train_flops"] > 0
    assert more["params"] == target["params"] and more["sample_flops"] == target["sample_flops"]


# ------------------------------------------------------------------------------------------ Snakemake dry runs

def _snakemake(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _job_counts(out: str) -> dict:
    table = out.split("Job stats:")[1].split("total")[0]
    return {ln.split()[0]: int(ln.split()[1]) for ln in table.splitlines()[3:] if ln.strip()}


def _blocks(out: str) -> list[tuple[str, str]]:
    """(rule, text) of every job the dry run prints; the train rule prints its message instead of `rule train:`."""
    jobs = []
    for block in re.split(r"\n\[[^\]\n]+\]\n", out)[1:]:
        m = re.match(r"(?:local)?rule (\w+):", block) or re.match(r"Job \d+: (train) ", block)
        if m:
            jobs.append((m.group(1), block.split("\n\n")[0]))
    return jobs


def _dry_run(tmp_path, *args):
    r = _snakemake("-n", "-p", "all_tables", "-s", SNAKEFILE, "--directory", str(tmp_path), *args)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    return out


def test_small_video_dry_run_lists_the_video_jobs(tmp_path):
    out = _dry_run(tmp_path, "--configfile", str(ROOT / "config.yaml"), "--config", "preset=small-video")
    assert _job_counts(out) == {"prepare_video": 2, "train_video_vq": 1, "tokenize_video": 2, "fvd_reference": 1,
                                "video_floor": 2, "fvd_floor": 2, "train": 9, "nll": 9, "sample_video": 9, "fvd": 9,
                                "tables": 1, "report": 1, "all_tables": 1}
    runs = [f"video-n{n}/s{k}" for n in (1, 4, 16) for k in range(3)]
    res = "results/small-video"
    for run in runs:
        assert f"exec par train --data {res}/video/tokens --out {res}/models/{run} " in out, run
        assert f"par sample --model {res}/models/{run}/model.pt --vq {res}/video/vq/video_vq.pt " in out, run
        assert f"par nll --model {res}/models/{run}/model.pt --tokens {res}/video/tokens_heldout " in out, run
        assert f"par fvd --generated {res}/samples/{run}/samples.npz --reference {res}/video/fvd_reference.npz " \
               f"--out {res}/metrics/{run}.json " in out, run
        assert f"{res}/samples/{run}/grid.gif" in out
    assert "--split test --frames 17 --item-size 16 --num-videos 1024 " in out  # heldout_videos
    assert f"par tokenize-video --clips {res}/video/clips/test --vq {res}/video/vq/video_vq.pt --out " \
           f"{res}/video/tokens_heldout " in out
    assert f"par train-video-vq --clips {res}/video/clips/train --test-clips {res}/video/clips/test " in out
    assert f"--out {res}/floors/video-real.json" in out and f"--out {res}/floors/video-recon.json" in out
    assert f"{res}/tokens/manifest.json" not in out and "results/small-video/vq/vq.pt" not in out  # no images


def test_tiny_dry_run_has_the_video_runs_beside_the_image_runs(tmp_path):
    out = _dry_run(tmp_path, "--configfile", str(ROOT / "config.yaml"))
    counts = _job_counts(out)
    e = _experiment("tiny")
    assert counts["sample_video"] == counts["fvd"] == 3 and counts["fvd_floor"] == counts["video_floor"] == 2
    assert counts["sample"] == counts["evaluate"] == len(e.image_runs)
    assert counts["train"] == len([m for m in e.models if not e.preset.models[m].trained_as])
    assert counts["nll"] == len(e.nll_runs) and counts["tokenize_video"] == counts["prepare_video"] == 2
    jobs = _blocks(out)
    wildcard = {rule: sorted(re.findall(r"wildcards: run=(\S+)", "\n".join(t for r, t in jobs if r == rule)))
                for rule in ("sample", "sample_video", "evaluate", "fvd")}
    assert wildcard["sample_video"] == wildcard["fvd"] == sorted(e.video_runs)
    assert wildcard["sample"] == wildcard["evaluate"] == sorted(e.image_runs)
    for run in e.video_runs:
        assert f"exec par train --data results/tiny/video/tokens --out results/tiny/models/{run} " in out
    assert "exec par train --data results/tiny/tokens --out results/tiny/models/par-n4/s0 " in out


def _ucf_stand_in(tmp_path, root=True) -> str:
    """A --configfile pointing the ucf101 preset's clips at existing folders (the root one only if `root`)."""
    (tmp_path / "ucf" / "lists").mkdir(parents=True)
    if root:
        (tmp_path / "ucf" / "UCF-101").mkdir()
    override = tmp_path / "ucf.yaml"
    override.write_text(yaml.safe_dump({"presets": {"ucf101": {"video": {"clips": {
        "root": str(tmp_path / "ucf" / "UCF-101"), "lists": str(tmp_path / "ucf" / "lists")}}}}}))
    return str(override)


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm is not installed")
def test_ucf101_slurm_dry_run_lists_every_video_job_with_its_gpus(tmp_path):
    out = _dry_run(tmp_path, "--profile", str(ROOT / "slurm"), "--config", "preset=ucf101",
                   "--configfile", str(ROOT / "config.yaml"), _ucf_stand_in(tmp_path))
    assert _job_counts(out) == {"prepare_video_slot": 32, "prepare_video": 2, "train_video_vq": 1,
                                "tokenize_video_slot": 32, "tokenize_video": 2, "fvd_reference": 1,
                                "video_floor": 2, "fvd_floor": 2, "train": 3, "nll": 3, "sample_video": 3, "fvd": 3,
                                "tables": 1, "report": 1, "all_tables": 1}
    jobs = _blocks(out)
    for rule in ("sample_video", "fvd", "fvd_floor", "train_video_vq", "tokenize_video_slot", "fvd_reference"):
        blocks = [t for r, t in jobs if r == rule]
        assert blocks, rule
        for text in blocks:
            gpus = re.search(r"resources: .*\bgpu=(\d+)", text)
            assert gpus and int(gpus.group(1)) >= 1, (rule, text)
    assert all(", gpu=8" in t for r, t in jobs if r == "sample_video")
    assert not any("gpu=" in t for r, t in jobs if r == "prepare_video_slot")
    for run in ("ucf-par-n1/s0", "ucf-par-n4/s0", "ucf-par-n16/s0"):
        assert f"train {run}: par train asks the cluster for 1 node(s) × 8 GPU(s)" in out, run
        assert f"exec par train --data results/ucf101/video/tokens --out results/ucf101/models/{run} " in out
    assert out.count("--gpus-per-node 8") == 3
    # 16 slots for each split, then one process writes each manifest
    assert out.count("--num-shards 16 --summary results/ucf101/video/tokens/slots/") == 16
    assert out.count("--num-shards 16 --summary results/ucf101/video/tokens_heldout/slots/") == 16
    assert "exec par tokenize-video --finalize --out results/ucf101/video/tokens " in out
    assert f"--root {tmp_path}/ucf/UCF-101 " in out


def test_ucf101_without_its_clip_folder_is_named_by_the_dry_run_and_stops_a_real_run(tmp_path):
    message = f"presets.ucf101.video.clips.root: {tmp_path}/ucf/UCF-101: no such folder"
    args = ("all_tables", "-s", SNAKEFILE, "--directory", str(tmp_path), "--config", "preset=ucf101",
            "--configfile", str(ROOT / "config.yaml"), _ucf_stand_in(tmp_path, root=False))
    dry = _snakemake("-n", *args)
    assert dry.returncode == 0 and message in dry.stdout + dry.stderr  # before the download: a warning (#25)
    real = _snakemake("--cores", "1", *args)
    assert real.returncode != 0 and message in real.stdout + real.stderr
