"""The small preset on data nobody here chose: a generated IDX pair and a generated ImageFolder run the same
preset by changing only `presets.small.data` (issue #14, "Your own images").

The fast tests build the DAG (`snakemake -n`); the slow ones run the shortened preset
(tests/data/small-smoke.yaml: a few steps and samples) end to end in a temporary folder — about as long as the
smoke run on Fashion-MNIST, so run them with `--slow` on an otherwise idle machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from test_split import write_idx

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tests/data/small-smoke.yaml"


def patterns(per_class: int, classes: int = 10, side: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST-shaped stand-ins: uint8 (N, side, side) grey images, class c = stripes at angle 18°·c of
    random phase and contrast, on a dark background; labels uint8 (N,), shuffled."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    images, labels = [], []
    for c in range(classes):
        angle = np.pi * c / classes
        proj = xx * np.cos(angle) + yy * np.sin(angle)
        for _ in range(per_class):
            wave = np.sin(proj * (0.6 + 0.1 * rng.random()) + rng.uniform(0, 2 * np.pi))
            blob = (xx ** 2 + yy ** 2) < (side / 2.5) ** 2  # an object in the middle, a black border (as in F-MNIST)
            img = blob * (120 + 100 * wave * rng.uniform(0.6, 1.0)) + rng.normal(0, 8, (side, side))
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    order = rng.permutation(len(images))
    return np.stack(images)[order], np.array(labels, np.uint8)[order]


def idx_fixture(root: Path) -> dict:
    """10 classes × 30 train / × 10 test images, 28 × 28, gzipped IDX files named as Fashion-MNIST's."""
    root.mkdir(parents=True, exist_ok=True)
    (x, y), (tx, ty) = patterns(30, seed=0), patterns(10, seed=1)
    return {"images": str(write_idx(root / "train-images-idx3-ubyte.gz", x)),
            "labels": str(write_idx(root / "train-labels-idx1-ubyte.gz", y)),
            "heldout_images": str(write_idx(root / "t10k-images-idx3-ubyte.gz", tx)),
            "heldout_labels": str(write_idx(root / "t10k-labels-idx1-ubyte.gz", ty)),
            # what must fit 100 held-out images: the reference (50) and the floors (40) after it
            "reference_images": 50, "floor_images": 40}


def imagefolder_fixture(root: Path) -> dict:
    """4 classes × 40 colour images of 40 px (resized and cropped to 32 by the pipeline), no held-out folder:
    `heldout_fraction` 0.25 holds out 10 per class."""
    rng = np.random.default_rng(2)
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
    for c, colour in enumerate(colours):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        grey, _ = patterns(10, classes=4, side=40, seed=10 + c)  # 4 stripe angles × 10 = 40 images
        for i, g in enumerate(grey):
            rgb = (g[..., None].astype(float) / 255 * np.array(colour)).astype(np.uint8)
            Image.fromarray(rgb).save(d / f"img_{i:03d}.png")
    # the small preset's IDX paths are cleared: an ImageFolder needs only `images`
    return {"source": "imagefolder", "images": str(root), "labels": "", "heldout_images": "", "heldout_labels": "",
            "heldout_fraction": 0.25, "reference_images": 24, "floor_images": 16}


def _workdir(tmp_path: Path, data: dict, extra: dict | None = None) -> list[str]:
    """A workflow folder with config.yaml as committed; returns the `--configfile` arguments: the smoke
    shortening, then the data source (only `presets.small.data` differs from the Fashion-MNIST run)."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    small = {"data": data, **(extra or {})}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"presets": {"small": small}}))
    return ["--configfile", str(SMOKE), str(tmp_path / "data.yaml")]


def _snakemake(tmp_path: Path, configfiles: list[str], *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "snakemake", *args, "-s", str(ROOT / "workflow/Snakefile"),
                           "--directory", str(tmp_path), *configfiles, "--config", "preset=small"],
                          capture_output=True, text=True, timeout=timeout)


def _job_counts(out: str) -> dict[str, int]:
    table = out.split("Job stats:")[1].split("total")[0]
    return {ln.split()[0]: int(ln.split()[1]) for ln in table.splitlines()[3:] if ln.strip()}


@pytest.mark.parametrize("fixture", [idx_fixture, imagefolder_fixture])
def test_another_data_source_builds_the_small_dag(tmp_path, fixture):
    data = fixture(tmp_path / "data")
    r = _snakemake(tmp_path, _workdir(tmp_path, data), "-n", "-p", "all_tables", timeout=180)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    jobs = _job_counts(r.stdout + r.stderr)
    smoke = yaml.safe_load(SMOKE.read_text())["presets"]["small"]["models"]
    runs = sum(m["seeds"] for m in smoke.values())
    assert jobs["prepare_images"] == 1 and "tinyset" not in jobs
    assert jobs["sample"] == jobs["evaluate"] == jobs["nll"] == jobs["train"] == runs
    assert jobs["floor_images"] == jobs["evaluate_floor"] == 2 and jobs["train_classifier"] == 1
    assert f"par prepare-images --out results/small/images --source {data.get('source', 'idx')} " in r.stdout
    assert f"--images {data['images']}" in r.stdout
    assert "/usr/share/datasets/fashion-mnist" not in r.stdout  # nothing of the default source is left


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="no dataset-fashion-mnist")
def test_the_smoke_config_builds_the_fashion_mnist_dag(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    r = _snakemake(tmp_path, ["--configfile", str(SMOKE)], "-n", "-p", "all_tables", timeout=180)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    smoke = yaml.safe_load(SMOKE.read_text())["presets"]["small"]
    assert _job_counts(r.stdout + r.stderr)["train"] == sum(m["seeds"] for m in smoke["models"].values())
    assert "--max-steps 3 " in r.stdout and f"--train-images {smoke['data']['train_images']}" in r.stdout


def test_a_missing_idx_file_is_named_by_the_dry_run_and_stops_a_real_run(tmp_path):
    """A dry run lists the jobs and warns (the data may come later, #25); a real run stops before any job."""
    data = idx_fixture(tmp_path / "data")
    Path(data["heldout_labels"]).unlink()
    message = f"presets.small.data.heldout_labels: {data['heldout_labels']}: no such file"
    dry = _snakemake(tmp_path, _workdir(tmp_path, data), "-n", "all_tables", timeout=180)
    assert dry.returncode == 0 and message in dry.stdout + dry.stderr
    real = _snakemake(tmp_path, _workdir(tmp_path, data), "--cores", "1", "all_tables", timeout=180)
    assert real.returncode != 0 and message in real.stdout + real.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.npz"))


def _run_small(tmp_path: Path, data: dict):
    r = _snakemake(tmp_path, _workdir(tmp_path, data), "--cores", "2", "all_tables", timeout=3600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    analysis = tmp_path / "analysis/small"
    for f in ("report.md", "report.html", "tables/verdicts.md", "tables/table3b.md", "entropy/entropy_maps.png"):
        assert (analysis / f).is_file(), f
    report = (analysis / "report.md").read_text()
    verdicts = (analysis / "tables/verdicts.md").read_text()
    assert any(w in verdicts for w in ("reproduced", "not resolved", "contradicted"))
    return analysis, report


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="no Fashion-MNIST (apt-get install dataset-fashion-mnist)")
def test_small_preset_smoke_on_fashion_mnist(tmp_path):
    """CI's run of the small preset's path on the real data, shortened (tests/data/small-smoke.yaml): the
    committed config as it is, in a temporary folder, so analysis/small/ stays untouched."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    r = _snakemake(tmp_path, ["--configfile", str(SMOKE)], "--cores", "2", "all_tables", timeout=3600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    analysis = tmp_path / "analysis/small"
    for f in ("report.md", "report.html", "tables/verdicts.md", "tables/table3b.md", "entropy/entropy_maps.png"):
        assert (analysis / f).is_file(), f
    images = json.loads((tmp_path / "results/small/images/images.json").read_text())
    smoke = yaml.safe_load(SMOKE.read_text())["presets"]["small"]["data"]
    assert images["source"] == "idx" and images["train"] == smoke["train_images"] and images["test"] == 10000
    assert len(images["classes"]) == 10 and images["image_shape"] == [32, 32]


@pytest.mark.slow
def test_small_preset_on_a_generated_idx_pair(tmp_path):
    data = idx_fixture(tmp_path / "data")
    analysis, report = _run_small(tmp_path, data)
    images = json.loads((tmp_path / "results/small/images/images.json").read_text())
    assert images["source"] == "idx" and images["train"] == 300 and images["test"] == 100
    assert images["image_shape"] == [32, 32]  # 28 padded to 32: a 16 × 16 token grid under the 2× VQ
    used = yaml.safe_load((tmp_path / "results/small/workflow-config.yaml").read_text())["presets"]["small"]
    assert "fashion-mnist" not in yaml.safe_dump(used)  # (small-ablations keeps its own data: it is not this run)
    assert (tmp_path / "results/small/floors/recon.json").is_file()


@pytest.mark.slow
def test_small_preset_on_a_generated_imagefolder_with_a_heldout_fraction(tmp_path):
    data = imagefolder_fixture(tmp_path / "data")
    analysis, report = _run_small(tmp_path, data)
    images = json.loads((tmp_path / "results/small/images/images.json").read_text())
    assert images["source"] == "imagefolder" and images["heldout_images"] is None
    assert images["train"] == 120 and images["test"] == 40
    assert images["classes"] == [f"class_{c}" for c in range(4)]
