"""Workflow: config validation, tables filled from result files, and (slow) the tiny DAG end to end."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pandas as pd
import yaml

from par.analysis.tables import PAPER, write_tables

ROOT = Path(__file__).resolve().parents[1]


def _fake_results(root: Path, models: dict):
    for i, m in enumerate(models):
        metrics = {"fid": 10.0 + i + 0.123, "kid": 0.01 * (i + 1), "precision": 0.5 + i / 100, "recall": 0.25,
                   "isc": None}
        for run in (f"s{k}" for k in range(models[m].get("seeds", 1))):  # every seed alike: mean = the value
            (root / "metrics" / m).mkdir(parents=True, exist_ok=True)
            (root / "samples" / m / run).mkdir(parents=True, exist_ok=True)
            (root / "models" / m / run).mkdir(parents=True, exist_ok=True)
            (root / "metrics" / m / f"{run}.json").write_text(json.dumps(
                {"metrics": metrics, "unavailable": {"isc": "no Inception logits weights offline"}, "n_samples": 200}))
            (root / "samples" / m / run / "sampling.json").write_text(json.dumps(
                {"forward_calls": 100 + i, "seconds_per_image_batch1": 0.5 + i}))
            (root / "models" / m / run / "config.json").write_text(json.dumps({"params": 1000 + i}))


def test_every_table_cell_comes_from_a_result_file(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    models = cfg["presets"]["tiny"]["models"]
    _fake_results(tmp_path / "res", models)
    write_tables(ROOT / "config.yaml", "tiny", tmp_path / "res", tmp_path / "tables")
    import pandas as pd

    res = tmp_path / "res"
    for name in cfg["tables"]:
        df = pd.read_csv(tmp_path / "tables" / f"{name}.csv", index_col="row")
        for _, row in df.iterrows():
            m = row["model"]
            metrics = json.loads((res / "metrics" / m / "s0.json").read_text())["metrics"]
            sampling = json.loads((res / "samples" / m / "s0" / "sampling.json").read_text())
            assert row["steps"] == pytest.approx(sampling["forward_calls"])  # a mean over seeds
            assert row["seconds_per_image"] == pytest.approx(sampling["seconds_per_image_batch1"])
            for k in ("fid", "kid", "precision", "recall"):
                assert row[k] == pytest.approx(metrics[k])
            assert "isc" not in row or pd.isna(row["isc"])
    md = (tmp_path / "tables" / "table3b.md").read_text()
    assert "Unavailable" in md and "no Inception logits" in md and "–" in md  # IS missing, with its reason
    # change one result file: exactly that cell changes
    m = "par-n16"
    for p in (tmp_path / "res" / "metrics" / m).glob("s*.json"):
        d = json.loads(p.read_text())
        d["metrics"]["fid"] = 77.77
        p.write_text(json.dumps(d))
    write_tables(ROOT / "config.yaml", "tiny", tmp_path / "res", tmp_path / "tables")
    assert "77.77" in (tmp_path / "tables" / "table3b.md").read_text()
    # the paper's numbers appear only for the paper preset, labelled
    assert "(paper)" not in (tmp_path / "tables" / "table2.md").read_text()


def test_paper_values_are_labelled(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    _fake_results(tmp_path / "res", cfg["presets"]["paper"]["models"])
    write_tables(ROOT / "config.yaml", "paper", tmp_path / "res", tmp_path / "tables")
    md = (tmp_path / "tables" / "table2.md").read_text()
    assert "FID ↓ (paper)" in md and f"{PAPER['par-3B-n4']['fid']:.2f}" in md


def _snakemake(*args, cwd=ROOT, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_config_schema_rejects_a_wrong_key(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["presets"]["tiny"]["train"]["learning_rate"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = _snakemake("-n", "--configfile", str(bad), "--directory", str(tmp_path), "-s", str(ROOT / "workflow/Snakefile"))
    assert r.returncode != 0
    assert "learning_rate" in r.stdout + r.stderr


@pytest.mark.parametrize("preset, path, value, message", [
    ("tiny", ("train", "lrr"), 1, "presets.tiny.train.lrr: unknown; did you mean lr?"),
    ("tiny", ("sample", "cfg_scale"), "high", "presets.tiny.sample.cfg_scale: expected float, got str 'high'"),
    # a preset that is not the active one is checked too
    ("paper", ("models", "par-L-n4", "n"), "four", "presets.paper.models.par-L-n4.n: expected int, got str 'four'"),
])
def test_dry_run_names_the_bad_key(tmp_path, preset, path, value, message):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    node = cfg["presets"][preset]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    r = _snakemake("-n", "--configfile", str(tmp_path / "bad.yaml"), "--directory", str(tmp_path),
                   "-s", str(ROOT / "workflow/Snakefile"), timeout=120)
    assert r.returncode != 0
    assert message in r.stdout + r.stderr



def test_floats_as_people_write_them_reach_the_jobs(tmp_path):
    """`lr: 2e-3` is a string to PyYAML (YAML 1.1); the check, the schema and the rules' flags take it as 0.002."""
    (tmp_path / "lr.yaml").write_text("presets:\n  tiny:\n    train: {lr: 2e-3}\n")
    r = _snakemake("-n", "-p", "results/tiny/models/par-n4/s0/model.pt", "--directory", str(tmp_path),
                   "-s", str(ROOT / "workflow/Snakefile"), "--configfile", str(ROOT / "config.yaml"),
                   str(tmp_path / "lr.yaml"), timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "--lr 0.002 " in r.stdout
    assert yaml.safe_load((tmp_path / "results/tiny/workflow-config.yaml").read_text())["presets"]["tiny"]["train"][
        "lr"] == 0.002

def test_snakemake_lint_is_clean(tmp_path):
    r = _snakemake("--lint", "-s", str(ROOT / "workflow/Snakefile"), "--configfile", str(ROOT / "config.yaml"),
                   "--directory", str(tmp_path), timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "Lints for" not in r.stdout + r.stderr


def test_default_profile_gives_cores(tmp_path):
    """`snakemake entropy_maps`, typed without --cores, works (workflow/profiles/default)."""
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    r = _snakemake("-n", "entropy_maps", "-s", str(ROOT / "workflow/Snakefile"), "--directory", str(tmp_path),
                   timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "workflow/profiles/default" in r.stderr
    assert "entropy_figures" in r.stdout + r.stderr


def test_tables_and_report_read_the_config_the_run_used(tmp_path):
    """`--config preset=…` and `--configfile` overrides reach `par tables/report` through the effective config,
    which is rewritten only when it changes."""
    other = yaml.safe_load((ROOT / "config.yaml").read_text())
    other["presets"]["paper"]["sample"]["cfg_scale"] = 2.25
    other["presets"]["paper"]["data"].update(_imagenet_stand_in(tmp_path))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    args = ("-n", "-p", "all_tables", "-s", str(ROOT / "workflow/Snakefile"), "--directory", str(tmp_path),
            "--configfile", str(tmp_path / "other.yaml"), "--config", "preset=paper")
    r = _snakemake(*args, timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    used = tmp_path / "results/paper/workflow-config.yaml"
    assert "par tables --config results/paper/workflow-config.yaml --preset paper" in r.stdout
    assert "par report --config results/paper/workflow-config.yaml --preset paper" in r.stdout
    effective = yaml.safe_load(used.read_text())
    assert effective["preset"] == "paper" and effective["presets"]["paper"]["sample"]["cfg_scale"] == 2.25
    stamp = used.stat().st_mtime_ns
    assert _snakemake(*args, timeout=120).returncode == 0
    assert used.stat().st_mtime_ns == stamp  # same config: not rewritten, so nothing reruns because of it


def _imagenet_stand_in(tmp_path) -> dict:
    """Existing folders for the paper preset's `data.images` and `data.heldout_images` (checked when the DAG is
    built)."""
    for split in ("train", "val"):
        (tmp_path / "imagenet" / split).mkdir(parents=True, exist_ok=True)
    return {"images": str(tmp_path / "imagenet/train"), "heldout_images": str(tmp_path / "imagenet/val")}


def _paper_data(tmp_path) -> list[str]:
    """`--configfile` arguments: config.yaml, then the paper preset's images pointed at an existing folder."""
    override = tmp_path / "paper-data.yaml"
    override.write_text(yaml.safe_dump({"presets": {"paper": {"data": _imagenet_stand_in(tmp_path)}}}))
    return ["--configfile", str(ROOT / "config.yaml"), str(override)]


def test_missing_user_paths_stop_a_real_run_before_any_job_naming_the_key(tmp_path):
    r = _snakemake("all_tables", "--cores", "1", "--config", "preset=paper", "--directory", str(tmp_path),
                   "-s", str(ROOT / "workflow/Snakefile"), "--configfile", str(ROOT / "config.yaml"), timeout=120)
    assert r.returncode != 0
    assert "presets.paper.data.images: /datasets/imagenet/train: no such folder" in r.stdout + r.stderr
    assert not (tmp_path / "results/paper/logs").exists()  # stopped before any job
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["presets"]["tiny"]["models"]["par-n4"]["checkpoint"] = str(tmp_path / "released.pt")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = _snakemake("all_tables", "--cores", "1", "--directory", str(tmp_path), "-s", str(ROOT / "workflow/Snakefile"),
                   "--configfile", str(tmp_path / "c.yaml"), timeout=120)
    assert r.returncode != 0
    assert f"presets.tiny.models.par-n4.checkpoint: {tmp_path}/released.pt: no such file" in r.stdout + r.stderr
    assert not (tmp_path / "results/tiny/logs").exists()


@pytest.mark.parametrize("preset,missing", [
    ("paper", ["presets.paper.data.images: /datasets/imagenet/train: no such folder",
               "presets.paper.data.heldout_images: /datasets/imagenet/val: no such folder"]),
    ("ucf101", ["presets.ucf101.video.clips.root: /datasets/UCF101/UCF-101: no such folder",
                "presets.ucf101.video.clips.lists: /datasets/UCF101/ucfTrainTestlist: no such folder"]),
])
def test_cluster_dry_run_before_the_download_lists_every_job_and_warns_per_missing_path(tmp_path, preset, missing):
    """The README's `snakemake --profile slurm all_tables --config preset=… -n`, on a machine without the data."""
    if Path("/datasets").exists():
        pytest.skip("the datasets may exist here")
    r = _snakemake("--profile", str(ROOT / "slurm"), "-n", "-p", "all_tables", "--config", f"preset={preset}",
                   "--directory", str(tmp_path), "-s", str(ROOT / "workflow/Snakefile"),
                   "--configfile", str(ROOT / "config.yaml"), timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    warnings = [ln for ln in out.splitlines() if "no such" in ln]
    assert len(warnings) == len(missing) and all(any(m in w for w in warnings) for m in missing), warnings
    experiment = _experiment(preset)
    for run in experiment.runs:  # every model's training (or download) job is listed
        assert experiment.model_path(run) in out, run
    assert "rule report:" in out and "rule tables:" in out
    if preset == "paper":  # the dry run says how often each long training job will be requeued (par plan)
        assert re.search(r"train par-3B-n4/s0: par train asks the cluster for .*submitit requeues it ~1\d time", out)
    # a cluster job's threads are the CPUs Slurm gave it, not the submit host's --cores (2 here) that Snakemake
    # caps `threads` at (#25): every multi-threaded shell line reads SLURM_CPUS_PER_TASK first
    shells = [ln for ln in out.splitlines() if "OMP_NUM_THREADS=" in ln and "par train " not in ln]
    assert shells and all("OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-" in ln for ln in shells), shells[:3]



def _own_images(tmp_path, per_class: int) -> str:
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "mine" / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "mine" / c / f"{i}.png")
    return str(tmp_path / "mine")


def test_own_images_that_cannot_give_a_clean_heldout_split_stop_the_dry_run(tmp_path):
    """One image per class, or the training folder given as held-out too: `snakemake -n` stops, naming the key."""
    from par.errors import UserError

    mine = _own_images(tmp_path, per_class=1)
    with pytest.raises(UserError, match=r"^presets\.tiny\.data: .*mine/a: 1 image, which no data\.heldout_fraction "
                                        r"can split.*; set data\.heldout_images to an ImageFolder"):
        _experiment("tiny", lambda p: p.update(data={"source": "imagefolder", "images": mine})).check_inputs(True)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["presets"]["tiny"]["data"] = {"source": "imagefolder", "images": mine, "heldout_images": mine + "/"}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(cfg))
    r = _snakemake("-n", "all_tables", "--directory", str(tmp_path), "-s", str(ROOT / "workflow/Snakefile"),
                   "--configfile", str(tmp_path / "own.yaml"), timeout=120)
    assert r.returncode != 0
    assert (f"presets.tiny.data: data.heldout_images {mine}/ is data.images {mine}; held-out images must never be "
            "trained on") in r.stdout + r.stderr
    assert "point data.heldout_images at a separate folder" in r.stdout + r.stderr

def test_every_job_logs_and_benchmarks_under_results(tmp_path):
    r = _snakemake("-n", "all_tables", "--config", "preset=paper", "--directory", str(tmp_path),
                   "-s", str(ROOT / "workflow/Snakefile"), *_paper_data(tmp_path), timeout=120)
    assert r.returncode == 0, (r.stderr + r.stdout)[-3000:]
    jobs = [b for b in r.stdout.split("\nrule ")[1:] if not b.startswith("all_tables")]
    assert jobs
    for block in jobs:
        rule = block.split(":", 1)[0]
        assert f"log: results/paper/logs/{rule}/" in block, block


def test_paper_dry_run_lists_every_training_job_with_gpus(tmp_path):
    r = _snakemake("-n", "-p", "all_tables", "--config", "preset=paper", "--directory", str(tmp_path),
                   "-s", str(ROOT / "workflow/Snakefile"), *_paper_data(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    models = yaml.safe_load((ROOT / "config.yaml").read_text())["presets"]["paper"]["models"]
    trained = [m for m, e in models.items() if not {"checkpoint", "checkpoint_url", "trained_as"} & set(e)]
    for m in models:  # one run (seed) per model: <model>/s0, trained here or not
        assert (f"--out results/paper/models/{m}/s0 " in out) == (m in trained), m
    assert out.count("--gpus-per-node 8") >= len(trained)
    assert "exec par fetch --out results/paper/downloads/arpg_1b.pt" in out  # released ARPG weights
    # tokenize.array_tasks: 64 tokenization jobs side by side, then one writes the manifest
    assert out.count("--num-shards 64 --summary results/paper/tokens/slots/") == 64
    assert "exec par tokenize --finalize --out results/paper/tokens" in out
    # what submitit will ask for is printed per training job (the train rule itself runs on the submit host)
    assert "train par-3B-n4/s0: par train asks the cluster for 2 node(s) × 8 GPU(s)" in out
    assert "train par-L-n4/s0: par train asks the cluster for 1 node(s) × 8 GPU(s)" in out


# ------------------------------------------------------------------------------------------ par.workflow (no Snakemake)

def _experiment(preset="tiny", edit=None):
    from par.workflow import Experiment

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["preset"] = preset
    if edit:
        edit(cfg["presets"][preset])
    return Experiment(cfg)


def test_train_flags_layer_the_preset_the_model_and_its_resources():
    e = _experiment("tiny")
    assert e.train_args("par-n4-noinit/s0") == (
        "--ckpt-every 50 --class-dropout 0.1 --dropout 0.1 --global-batch 32 --initial-sequential false "
        "--launcher auto --log-every 10 --lr 0.002 --max-steps 100 --n 4 --order par --schedule cosine "
        "--seed 0 --size tiny-S --warmup-epochs 1 --cpus-per-task 1 --gpus-per-node 0 --mem-gb 2 --nodes 1 "
        "--time-min 30")
    paper = _experiment("paper", lambda p: p["models"]["par-3B-n4"].update(resources="train_large"))
    big = paper.train_args("par-3B-n4/s0")
    assert "--global-batch 512" in big and "--lr 0.0002" in big and "--nodes 2" in big
    assert "--constraint a100-80gb " in big and "--partition gpu " in big and "--cfg-scale" not in big
    assert "--nodes 1 " in paper.train_args("par-L-n4/s0")


def test_sample_flags_and_released_checkpoints():
    e = _experiment("paper", lambda p: p["models"]["par-3B-n4"].update(checkpoint="ckpts/PAR 3B.pt"))
    assert e.sample_args("par-XL-n4/s0") == ("--batch-size 32 --cfg-scale 1.5 --compile true --image-size 256 "
                                             "--num-samples 50000 --seed 0 --shard-size 1000 --procs 8")
    assert e.sample_args("par-3B-n4/s0").endswith(
        "--cfg-scale 1.345 --compile true --image-size 256 --num-samples 50000 --seed 0 --shard-size 1000 "
        "--procs 8 --size GPT-3B --order par --n 4")
    assert e.model_path("par-3B-n4/s0") == "ckpts/PAR 3B.pt"  # not trained
    assert "--compile false" in e.sample_args("arpg-L/s0")  # ARPG decodes eagerly (a different width each step)
    assert e.runs == [f"{m}/s0" for m in e.models]  # one seed each in the paper preset
    assert e.model_path("par-L-n4/s0") == "results/paper/models/par-L-n4/s0/model.pt"


def test_paths_downloads_and_resources():
    from par.errors import UserError

    tiny, paper = _experiment("tiny"), _experiment("paper")
    assert tiny.vq_path() == "results/tiny/vq/vq.pt" and tiny.reference_stats() == ""
    assert tiny.evaluation_reference() == "results/tiny/reference.npz"
    assert tiny.evaluation_reference_flag() == "--reference"
    assert tiny.entropy_references() == ["0_0", "6_6", "3_9"]
    assert tiny.entropy_map_args("6_6") == "--reference 6,6 --estimator linear --alpha 10.0"
    assert tiny.tokenize_args() == "--batch-size 16 --crop-range 1.1 --image-size 48 --shard-size 400"
    assert tiny.reference_tinyset_args() == "--images-per-class 100 --seed 1 --size 56"
    assert tiny.resources("train") == {"mem_mb": 2000, "runtime": 30, "cpus_per_task": 1}
    assert paper.vq_path() == "results/paper/downloads/vq_ds16_c2i.pt"
    assert paper.evaluation_reference_flag() == "--reference-stats"
    assert paper.fetch_args("vq_ds16_c2i.pt") == (
        "--url https://huggingface.co/FoundationVision/LlamaGen/resolve/main/vq_ds16_c2i.pt --sha256 ''")
    from par.workflow import Experiment

    opted_in = Experiment({**yaml.safe_load((ROOT / "config.yaml").read_text()), "preset": "paper",
                           "allow_unpinned": True})
    assert opted_in.fetch_args("vq_ds16_c2i.pt").endswith("--sha256 '' --allow-unpinned")
    with pytest.raises(UserError, match="no download configured for x.pt"):
        paper.download_source("x.pt")
    assert paper.resources("sample") == {"mem_mb": 128000, "runtime": 720, "cpus_per_task": 8, "gpu": 8,
                                         "slurm_partition": "gpu"}
    # CPU-only stages go to a CPU partition (issue #25): never a GPU node's slot for a table or a regression
    assert paper.resources("entropy") == {"mem_mb": 64000, "runtime": 240, "cpus_per_task": 8,
                                          "slurm_partition": "cpu"}
    assert paper.resources("report") == {"mem_mb": 16000, "runtime": 120, "cpus_per_task": 4,
                                         "slurm_partition": "cpu"}
    with pytest.raises(UserError, match="presets.paper.data.images: required"):
        _experiment("paper", lambda p: p["data"].pop("images"))


def test_runs_expand_the_seeds_of_each_model_and_seed_each_run():
    """`models.<m>.seeds: k` → runs <m>/s0 … <m>/s(k-1); run j trains and samples with the configured seed + j."""
    from par.workflow import Experiment

    e = _experiment("tiny", lambda p: (p["models"]["par-n4"].update(seeds=3), p["models"]["raster-n1"].update(seeds=2)))
    assert e.runs == [f"{m}/s{k}" for m in e.models for k in range({"par-n4": 3, "raster-n1": 2}.get(m, 1))]
    assert {"par-n4/s0", "par-n4/s1", "par-n4/s2", "raster-n1/s1", "par-n16/s0"} <= set(e.runs)
    assert "par-n16/s1" not in e.runs and len(e.runs) == len(e.models) + 3
    assert Experiment.split_run("par-n4-causal/s12") == ("par-n4-causal", 12)
    assert [Experiment.split_run(r) for r in ("par-n4/s0", "raster-n1/s1")] == [("par-n4", 0), ("raster-n1", 1)]
    assert e.model_path("par-n4/s2") == "results/tiny/models/par-n4/s2/model.pt"
    assert e.analysis == "analysis/tiny"  # the report of each preset in its own folder
    assert "--seed 2 " in e.train_args("par-n4/s2") and "--seed 2 " in e.sample_args("par-n4/s2")
    assert "--seed 0 " in e.train_args("par-n4/s0")
    # the configured seed is the base: train and sample sections, then the model's own entry over both
    e = _experiment("tiny", lambda p: (p["models"]["par-n4"].update(seeds=3), p["train"].update(seed=10),
                                        p["sample"].update(seed=100), p["models"]["par-n16"].update(seed=5)))
    assert "--seed 12 " in e.train_args("par-n4/s2") and "--seed 101 " in e.sample_args("par-n4/s1")
    assert "--seed 6 " in e.train_args("par-n16/s1") and "--seed 7 " in e.sample_args("par-n16/s2")
    assert len({e.train_args(f"par-n4/s{k}") for k in range(3)}) == 3  # three distinct trainings


def test_released_checkpoints_and_idx_data_are_checked_when_the_dag_is_built():
    from par.errors import UserError

    with pytest.raises(UserError, match=r"presets.paper.models.par-3B-n4.seeds: a released checkpoint is one run"):
        _experiment("paper", lambda p: p["models"]["par-3B-n4"].update(checkpoint="ckpts/PAR 3B.pt", seeds=2))
    assert _experiment("paper", lambda p: p["models"]["par-3B-n4"].update(checkpoint="x.pt", seeds=1))
    idx = {"source": "idx", "images": "train-images.gz", "labels": "train-labels.gz",
           "heldout_images": "t10k-images.gz", "heldout_labels": "t10k-labels.gz"}
    for missing in ("labels", "heldout_images", "heldout_labels"):
        with pytest.raises(UserError, match=r"presets.tiny.data: source idx needs labels, heldout_images and "):
            _experiment("tiny", lambda p, m=missing: p["data"].update({k: v for k, v in idx.items() if k != m}))
    with pytest.raises(UserError, match=r"presets.tiny.data.images: required when data.source is idx"):
        _experiment("tiny", lambda p: p["data"].update({k: v for k, v in idx.items() if k != "images"}))
    e = _experiment("tiny", lambda p: p["data"].update(idx))
    assert e.user_inputs() == [("presets.tiny.data.images", "train-images.gz", "file"),
                               ("presets.tiny.data.heldout_images", "t10k-images.gz", "file"),
                               ("presets.tiny.data.labels", "train-labels.gz", "file"),
                               ("presets.tiny.data.heldout_labels", "t10k-labels.gz", "file")]
    assert e.images_marker() == e.heldout_marker() == "results/tiny/images/images.json"
    assert e.prepare_images_args().startswith("--source idx ") and "--heldout-labels t10k-labels.gz" in (
        e.prepare_images_args())
    folder = _experiment("tiny", lambda p: p["data"].update(source="imagefolder", images="/my/photos"))
    assert folder.user_inputs() == [("presets.tiny.data.images", "/my/photos", "folder")]  # held out: a fraction
    assert folder.prepare_images_args() == "--source imagefolder --images /my/photos"
    tiny = _experiment("tiny")
    assert tiny.images_marker() == "results/tiny/images/tinyset.json"
    assert tiny.heldout_marker() == "results/tiny/reference_images/tinyset.json"


def test_floors_follow_floor_images_and_sit_after_the_reference():
    e = _experiment("tiny", lambda p: p["data"].update(reference_images=300, floor_images=100))
    assert e.floors == ["real", "recon"]
    assert e.floor_args("real") == "--size 48 --offset 300 --max-images 100"
    assert e.floor_args("recon") == "--size 48 --offset 300 --max-images 100 --vq-size 48"
    assert e.reference_args() == "--size 48 --max-images 300"
    assert _experiment("tiny", lambda p: p["data"].update(floor_images=0)).floors == []
    assert _experiment("tiny", lambda p: p["data"].pop("floor_images", None)).floors == []  # the default: none
    # FID against precomputed statistics (the paper preset): no real images to take floors from
    assert _experiment("paper", lambda p: p["data"].update(floor_images=100)).floors == []
    assert not _experiment("paper").uses_classifier and _experiment("tiny").uses_classifier


def test_effective_config_is_written_only_when_it_changes(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    from par.workflow import Experiment

    assert Experiment(cfg).write_config()
    written = tmp_path / "results/tiny/workflow-config.yaml"
    assert yaml.safe_load(written.read_text()) == cfg
    assert not Experiment(cfg).write_config()
    cfg["presets"]["tiny"]["sample"]["cfg_scale"] = 3.0
    assert Experiment(cfg).write_config()
    assert yaml.safe_load(written.read_text())["presets"]["tiny"]["sample"]["cfg_scale"] == 3.0


def mini_config(tmp_path: Path, launcher: str = "inprocess") -> Path:
    """The tiny preset, trimmed to three models and fewer steps: the same DAG in a few minutes."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    t = cfg["presets"]["tiny"]
    t["data"]["tinyset"]["images_per_class"] = 40
    t["data"]["reference_images"] = 100
    t["tokenizer"]["train"].update(steps=40, heldout=32)
    t["tokenize"]["shard_size"] = 200
    t["train"].update(max_steps=40, ckpt_every=20, launcher=launcher)
    t["models"] = {k: t["models"][k] for k in ("raster-n1", "par-n4", "par-n16", "arpg", "arpg-n16steps")}
    t["sample"].update(num_samples=40, shard_size=40, batch_size=40)
    t["entropy"]["num_images"] = 200
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path / "config.yaml"


def _run_dag(tmp_path, *extra, env=None, timeout=1800, launcher="inprocess"):
    mini_config(tmp_path, launcher)
    return _snakemake("all_tables", "--cores", "2", "-s", str(ROOT / "workflow/Snakefile"), "--directory",
                      str(tmp_path), *extra, env=env, timeout=timeout)


def _jobs_of_dry_run(tmp_path):
    r = _snakemake("-n", "all_tables", "-s", str(ROOT / "workflow/Snakefile"), "--directory", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("total")[0]
    return {ln.split()[0]: int(ln.split()[1]) for ln in table.splitlines()[3:] if ln.strip()}


@pytest.mark.slow
def test_tiny_dag_end_to_end_then_up_to_date_then_partial_rerun(tmp_path):
    r = _run_dag(tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    for f in ["analysis/tiny/report.md", "analysis/tiny/report.html", "analysis/tiny/entropy/entropy_maps.png",
              "analysis/tiny/entropy/entropy_increase.png", "analysis/tiny/figures/speed_vs_quality.png"] + \
             [f"analysis/tiny/tables/{t}.{e}" for t in ("table2", "table3a", "table3b", "table3c", "table3d",
                                                        "table3e") for e in ("md", "csv", "tex")]:
        assert (tmp_path / f).exists(), f
    table2 = (tmp_path / "analysis/tiny/tables/table2.md").read_text()
    assert "ARPG, PAR n=4's steps" in table2 and "ARPG, PAR n=16's steps" in table2
    assert not (tmp_path / "results/tiny/models/arpg-n16steps").exists()  # sampled from arpg's runs
    for rule, job in (("train", "par-n4/s0"), ("sample", "par-n4/s0"), ("evaluate", "par-n4/s0"),
                      ("nll", "par-n4/s0"), ("tables", "tables"), ("sample", "arpg-n16steps/s0")):
        assert (tmp_path / f"results/tiny/logs/{rule}/{job}.log").exists(), (rule, job)
        assert (tmp_path / f"results/tiny/benchmarks/{rule}/{job}.tsv").exists(), (rule, job)
    assert _jobs_of_dry_run(tmp_path) == {}  # a second run does nothing
    (tmp_path / "results/tiny/models/par-n16/s0/model.pt").unlink()
    assert _jobs_of_dry_run(tmp_path) == {"train": 1, "sample": 1, "evaluate": 1, "nll": 1, "tables": 1,
                                          "report": 1, "all_tables": 1}


@pytest.mark.slow
def test_tiny_dag_through_the_slurm_profile(slurm_env, tmp_path):
    r = _run_dag(tmp_path, "--profile", str(ROOT / "slurm"), "--slurm-init-seconds-before-status-checks", "2",
                 "--jobs", "4", env=slurm_env.env, launcher="slurm")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:] + slurm_env.logs()
    assert (tmp_path / "analysis/tiny/report.md").exists()
    train_record = json.loads((tmp_path / "results/tiny/models/par-n4/s0/job.json").read_text())
    assert train_record["launcher"] == "slurm"  # training went through submitit onto the cluster


# ------------------------------------------------------------------------------------------ the paper-released preset

def test_paper_released_dry_run_samples_and_scores_every_released_checkpoint(tmp_path):
    r = _snakemake("-n", "-p", "all_tables", "--config", "preset=paper-released", "--directory", str(tmp_path),
                   "-s", str(ROOT / "workflow/Snakefile"), "--configfile", str(ROOT / "config.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    models = yaml.safe_load((ROOT / "config.yaml").read_text())["presets"]["paper-released"]["models"]
    jobs = _jobs_of_dry_run_output(out)
    assert jobs["sample"] == jobs["evaluate"] == len(models) and "train" not in jobs and "nll" not in jobs
    assert "entropy_features" not in jobs and "tokenize" not in jobs  # no images: nothing but the checkpoints
    assert jobs["fetch"] == len(models) + 2  # the checkpoints, the VQ and ADM's reference batch
    assert out.count("--procs 8") == len(models) and out.count("gpu=8") == len(models)  # 8 GPUs, 8 workers
    assert out.count("gpu=1") == len(models)  # one per evaluation
    assert "exec par tables" in out and "--extra-verdicts" not in out


def _jobs_of_dry_run_output(out: str) -> dict:
    table = out.split("Job stats:")[1].split("total")[0]
    return {ln.split()[0]: int(ln.split()[1]) for ln in table.splitlines()[3:] if ln.strip()}


def test_source_none_trains_nothing_and_needs_reference_statistics():
    from par.errors import UserError

    with pytest.raises(UserError, match=r"models: extra would be trained, but data.source is none"):
        _experiment("paper-released", lambda p: p["models"].update(extra={"size": "GPT-L", "order": "par", "n": 4}))
    with pytest.raises(UserError, match="source none needs reference_stats"):
        _experiment("paper-released", lambda p: p["data"].pop("reference_stats_url"))
    e = _experiment("paper-released")
    assert e.nll_runs == [] and not e.has_images and e.floors == []


def test_tables_of_released_checkpoints_put_the_reported_values_beside_ours(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    models = cfg["presets"]["paper-released"]["models"]
    _fake_results(tmp_path / "res", models)
    write_tables(ROOT / "config.yaml", "paper-released", tmp_path / "res", tmp_path / "tables")
    table2 = (tmp_path / "tables" / "table2.md").read_text()
    for row in ("n=1 (LlamaGen)", "PAR n=4", "PAR n=16", "ARPG-L (released)", "ARPG-XXL (released)"):
        assert row in table2
    assert "2.29" in table2 and "1.94" in table2  # PAR-3B-4x's and ARPG-XXL's reported FID, labelled
    assert "ARPG, 64 steps, cosine schedule (size GPT-XXL), released weights, balanced labels" in table2  # protocol
    assert "| PAR n=4, released weights " in table2  # PAR's own protocol: random labels


# ------------------------------------------------------------------------------------------ the video half (Table 4)

def mini_video_config(tmp_path: Path) -> Path:
    """The tiny preset's video part alone (its image models dropped, `data.source: none`), fewer clips and steps."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    t = cfg["presets"]["tiny"]
    t["data"] = {"source": "none"}
    t["models"] = {k: v for k, v in t["models"].items() if v.get("modality") == "video"}
    t["train"].update(max_steps=20, ckpt_every=10, launcher="inprocess")
    for m in t["models"].values():
        m.update(num_samples=16, batch_size=16)
    v = t["video"]
    v["clips"].update(num_videos=120, shard_size=60)
    v["heldout_videos"] = 40
    v["tokenizer"]["train"].update(steps=20, heldout=8)
    v["fvd"].update(reference_clips=24, floor_clips=16, bootstrap=5)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path / "config.yaml"


@pytest.mark.slow
def test_video_dag_end_to_end_gives_table4_then_is_up_to_date(tmp_path, i3d_weights, fashion_mnist):
    mini_video_config(tmp_path)
    r = _snakemake("all_tables", "--cores", "2", "-s", str(ROOT / "workflow/Snakefile"), "--directory",
                   str(tmp_path), timeout=1800)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    table4 = (tmp_path / "analysis/tiny/tables/table4.md").read_text()
    for row in ("PAR-1×", "PAR-4×", "PAR-16×", "floor: real clips", "floor: tokenizer reconstruction (rFVD)"):
        assert row in table4, row
    csv = pd.read_csv(tmp_path / "analysis/tiny/tables/table4.csv").set_index("row")
    assert list(csv.loc[["PAR-1×", "PAR-4×", "PAR-16×"], "steps"]) == [192, 51, 27]  # 3×8×8 tokens
    assert (csv.loc[["PAR-1×", "PAR-4×", "PAR-16×"], "fvd"] > 0).all()
    assert csv.loc[["PAR-1×", "PAR-4×", "PAR-16×"], "nll"].notna().all()
    report = (tmp_path / "analysis/tiny/report.md").read_text()
    assert "Video (Table 4)" in report and ".gif" in report
    assert (tmp_path / "results/tiny/samples/video-n4/s0/grid.mp4").stat().st_size > 0
    m = json.loads((tmp_path / "results/tiny/video/tokens/manifest.json").read_text())
    assert m["grid"] == [3, 8, 8] and m["crop_order"] == ["center", "hflip-center"]
    assert _jobs_of_dry_run(tmp_path) == {}
