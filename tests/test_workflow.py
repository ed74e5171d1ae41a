"""Workflow: config validation, tables filled from result files, and (slow) the tiny DAG end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from par.analysis.tables import PAPER, write_tables

ROOT = Path(__file__).resolve().parents[1]


def _fake_results(root: Path, models: dict):
    for i, m in enumerate(models):
        (root / "metrics").mkdir(parents=True, exist_ok=True)
        (root / "samples" / m).mkdir(parents=True, exist_ok=True)
        (root / "models" / m).mkdir(parents=True, exist_ok=True)
        metrics = {"fid": 10.0 + i + 0.123, "kid": 0.01 * (i + 1), "precision": 0.5 + i / 100, "recall": 0.25,
                   "isc": None}
        (root / "metrics" / f"{m}.json").write_text(json.dumps(
            {"metrics": metrics, "unavailable": {"isc": "no Inception logits weights offline"}, "n_samples": 200}))
        (root / "samples" / m / "sampling.json").write_text(json.dumps(
            {"forward_calls": 100 + i, "seconds_per_image_batch1": 0.5 + i}))
        (root / "models" / m / "config.json").write_text(json.dumps({"params": 1000 + i}))


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
            metrics = json.loads((res / "metrics" / f"{m}.json").read_text())["metrics"]
            sampling = json.loads((res / "samples" / m / "sampling.json").read_text())
            assert row["steps"] == sampling["forward_calls"]
            assert row["seconds_per_image"] == sampling["seconds_per_image_batch1"]
            for k in ("fid", "kid", "precision", "recall"):
                assert row[k] == metrics[k]
            assert "isc" not in row or pd.isna(row["isc"])
    md = (tmp_path / "tables" / "table3b.md").read_text()
    assert "Unavailable" in md and "no Inception logits" in md and "–" in md  # IS missing, with its reason
    # change one result file: exactly that cell changes
    m = "par-n16"
    p = tmp_path / "res" / "metrics" / f"{m}.json"
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


def test_paper_dry_run_lists_every_training_job_with_gpus(tmp_path):
    r = _snakemake("-n", "-p", "all_tables", "--config", "preset=paper", "--directory", str(tmp_path),
                   "-s", str(ROOT / "workflow/Snakefile"), "--configfile", str(ROOT / "config.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    models = yaml.safe_load((ROOT / "config.yaml").read_text())["presets"]["paper"]["models"]
    for m in models:
        assert f"--out results/paper/models/{m} " in out
    assert out.count("--gpus-per-node 8") >= len(models)


def mini_config(tmp_path: Path, launcher: str = "inprocess") -> Path:
    """The tiny preset, trimmed to three models and fewer steps: the same DAG in a few minutes."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    t = cfg["presets"]["tiny"]
    t["data"]["tinyset"]["images_per_class"] = 40
    t["data"]["reference_images"] = 100
    t["tokenizer"]["train"].update(steps=40, heldout=32)
    t["tokenize"]["shard_size"] = 200
    t["train"].update(max_steps=40, ckpt_every=20, launcher=launcher)
    t["models"] = {k: t["models"][k] for k in ("raster-n1", "par-n4", "par-n16")}
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
    for f in ["analysis/report.md", "analysis/report.html", "analysis/entropy/entropy_maps.png",
              "analysis/entropy/entropy_increase.png", "analysis/figures/speed_vs_fid.png"] + \
             [f"analysis/tables/{t}.{e}" for t in ("table2", "table3a", "table3b", "table3c", "table3d", "table3e")
              for e in ("md", "csv", "tex")]:
        assert (tmp_path / f).exists(), f
    assert _jobs_of_dry_run(tmp_path) == {}  # a second run does nothing
    (tmp_path / "results/tiny/models/par-n16/model.pt").unlink()
    assert _jobs_of_dry_run(tmp_path) == {"train": 1, "sample": 1, "evaluate": 1, "tables": 1, "report": 1,
                                          "all_tables": 1}


@pytest.mark.slow
def test_tiny_dag_through_the_slurm_profile(slurm_env, tmp_path):
    r = _run_dag(tmp_path, "--profile", str(ROOT / "slurm"), "--slurm-init-seconds-before-status-checks", "2",
                 "--jobs", "4", env=slurm_env.env, launcher="slurm")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:] + slurm_env.logs()
    assert (tmp_path / "analysis/report.md").exists()
    train_record = json.loads((tmp_path / "results/tiny/models/par-n4/job.json").read_text())
    assert train_record["launcher"] == "slurm"  # training went through submitit onto the cluster
