"""The fault matrix (issue #18): every boundary fails clean.

Each case asserts the exit status (2 bad input, 3 environment, 1 bug), a regex on the ONE line `par` prints, and
that the output folder holds nothing new or half-written. Data-side cases are in test_faults_data.py, training
and signal cases (and the kill-at-random soak) in test_faults_train.py.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from par import io
from par.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_par(capsys, *argv) -> tuple[int, str]:
    """Exit status and stderr of `par argv` run in-process."""
    capsys.readouterr()
    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err


def one_line(err: str, pattern: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from par.core.model import Transformer, model_config
    from par.data.tokenizer import VQConfig, VQModel, save_vq

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vq = VQModel(VQConfig(ch=32, encoder_ch_mult=(1, 1, 2), decoder_ch_mult=(1, 1, 2), z_channels=32,
                          codebook_size=32, codebook_embed_dim=8))
    save_vq(vq, root / "vq.pt")
    gpt = Transformer(model_config("tiny-S", grid=(4, 4), order="par", n=4, vocab_size=32, num_classes=3))
    io.torch_save({"model": gpt.state_dict(), "config": gpt.config.to_dict()}, root / "gpt.pt")
    return root


def sample_args(models: Path, out: Path, *extra) -> list:
    return ["sample", "--model", models / "gpt.pt", "--vq", models / "vq.pt", "--out", out, "--num-samples", 6,
            "--shard-size", 2, "--batch-size", 2, "--image-size", 16, *extra]


# ------------------------------------------------------------------------------------------ 1. config types via `par`

def test_train_config_file_with_a_bad_type_fails_before_any_output(capsys, tmp_path):
    (tmp_path / "b.yaml").write_text("max_steps: ten\n")
    out = tmp_path / "out"
    status, err = run_par(capsys, "train", "--config", tmp_path / "b.yaml", "--data", tmp_path, "--out", out)
    assert status == 2
    one_line(err, r"^par train: error: .*b\.yaml\.max_steps: expected int, got str 'ten'")
    assert not out.exists()


def test_plan_names_a_bad_type_in_config_yaml(capsys, tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["presets"]["tiny"]["train"]["max_steps"] = "200"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    status, err = run_par(capsys, "plan", "--config", tmp_path / "c.yaml", "--preset", "tiny")
    assert status == 2
    one_line(err, r"c\.yaml: presets\.tiny\.train\.max_steps: expected int, got str '200'")


def test_tables_refuse_an_unknown_key_with_the_closest_one(capsys, tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["presets"]["tiny"]["sample"]["cfg_scal"] = 2.0
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "tables"
    status, err = run_par(capsys, "tables", "--config", tmp_path / "d.yaml", "--preset", "tiny", "--results",
                          tmp_path, "--out", out)
    assert status == 2
    one_line(err, r"presets\.tiny\.sample\.cfg_scal: unknown; did you mean cfg_scale\?")
    assert not out.exists()


# ------------------------------------------------------------------------------------------ 3. disk full → exit 3

@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: writes past it fail with ENOSPC, as on a full disk (needs root, as CI and this machine)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_while_sampling_is_one_line_exit_3(capsys, tiny_models, small_disk):
    out = small_disk / "samples"
    status, err = run_par(capsys, *sample_args(tiny_models, out, "--num-samples", 40, "--shard-size", 20,
                                               "--image-size", 64))
    assert status == 3
    one_line(err, rf"^par sample: error: {re.escape(str(out))}/\S+: disk full \(.*free there\)")
    assert not [f for f in files_under(out) if f.endswith(".tmp")]  # nothing half-written


def test_disk_full_while_saving_a_checkpoint_is_one_line_exit_3(capsys, small_disk):
    from par.data.tokenizer import VQConfig, VQModel, save_vq

    vq = VQModel(VQConfig(ch=32, encoder_ch_mult=(1, 2, 2), decoder_ch_mult=(1, 2, 2), z_channels=32,
                          codebook_size=512))
    with pytest.raises(Exception) as info:
        save_vq(vq, small_disk / "vq" / "vq.pt")
    fault = info.value
    assert type(fault).__name__ == "EnvironmentFault", repr(fault)  # not torch's "unexpected pos …"
    assert re.search(r"vq\.pt: disk full \(needs about [\d.]+ [KM]B, [\d.]+ [KM]?B free there\)", str(fault))
    assert files_under(small_disk / "vq") == []


# ------------------------------------------------------------------------------------------ 4. leftovers in `par sample`

def test_a_bad_model_file_leaves_no_job_json(capsys, tiny_models, tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "s"
    status, err = run_par(capsys, "sample", "--model", bad, "--vq", tiny_models / "vq.pt", "--out", out)
    assert status == 2
    one_line(err, r"model\.pt: cannot be read with torch\.load\(weights_only=True\); it is damaged, cut short or "
                  "not a checkpoint")
    assert files_under(out) == []


# ------------------------------------------------------------------------------------------ 6. work claimed once

def test_a_claimed_shard_is_left_to_its_holder(capsys, tiny_models, tmp_path):
    from par.eval.sample import shard_path

    out = tmp_path / "s"
    with io.claim(shard_path(out, 1)) as mine:  # another live worker holds shard 1
        assert mine
        status, err = run_par(capsys, *sample_args(tiny_models, out))
    assert status == 0
    assert "1 shard(s) claimed by another worker" in err
    assert sorted(p.name for p in (out / "shards").glob("*.npz")) == ["samples-00000.npz", "samples-00002.npz"]
    assert not (out / "samples.npz").exists()  # the holder packs them once it is done
    assert main([str(a) for a in sample_args(tiny_models, out)]) == 0  # the holder's turn: only shard 1 is made
    assert (out / "samples.npz").exists() and not list(out.rglob("*.lock"))


def test_a_dead_workers_claim_is_taken_over(tiny_models, tmp_path):
    from par.eval.sample import shard_path

    lock_target = shard_path(tmp_path / "s", 0)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from par import io\n"
                               f"with io.claim({str(lock_target)!r}) as mine:\n"
                               "    print(mine, flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    with io.claim(lock_target) as mine:
        assert not mine  # held by a live process
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert main([str(a) for a in sample_args(tiny_models, tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s" / "shards").glob("*.npz"))) == 3 and (tmp_path / "s" / "samples.npz").exists()


def test_two_concurrent_samplers_split_the_shards(tiny_models, tmp_path):
    """Two workers started together on one folder compute every shard exactly once between them."""
    out = tmp_path / "s"
    args = [sys.executable, "-m", "par", *map(str, sample_args(tiny_models, out, "--num-samples", 12))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    left = sum(int(m) for e in errs for m in re.findall(r"(\d+) shard\(s\) claimed by another worker", e))
    made = len(list((out / "shards").glob("*.npz")))
    assert made == 6
    # each worker made what the other did not: claimed-elsewhere counts add up to the shards made by the other
    assert left <= made


# ------------------------------------------------------------------------------------------ 8. error texts are whole

class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_refused_checkpoint_keeps_the_fix_and_the_whole_reason(capsys, tiny_models, tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"model": {}, "x" * 300: Evil()}, bad)
    out = tmp_path / "s"
    status, err = run_par(capsys, "sample", "--model", bad, "--vq", tiny_models / "vq.pt", "--out", out)
    assert status == 2
    one_line(err, r"evil\.pt: cannot be read with torch\.load\(weights_only=True\); re-save it as a plain state "
                  r"dict \(UnpicklingError: .*system")
    assert files_under(out) == []


# ------------------------------------------------------------------------------------------ the exit codes themselves

def test_a_bug_keeps_its_traceback_exit_1(tmp_path):
    """Anything that is neither bad input nor the environment is a bug: Python's traceback, status 1."""
    code = ("import par.cli, par.config as c\n"
            "def boom(args): raise ZeroDivisionError('a bug')\n"
            "c._cmd_config = boom\n"
            "import sys; sys.exit(par.cli.main(['config', 'schema']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" in r.stderr and "ZeroDivisionError: a bug" in r.stderr


def test_a_read_only_output_is_an_environment_fault(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        status, err = run_par(capsys, "make-tinyset", "--out", ro / "imgs", "--images-per-class", 1, "--size", 8)
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)
    assert status == 3, err
    one_line(err, rf"^par make-tinyset: error: {re.escape(str(ro))}\S*: read-only file system; fix its permissions")


# ------------------------------------------------------------------------------------------ Slurm arrays (#26)

@pytest.mark.parametrize("name,value", [("SLURM_ARRAY_TASK_ID", "x"), ("SLURM_ARRAY_TASK_COUNT", "3a"),
                                        ("RANK", "one")])
def test_a_non_integer_array_variable_is_one_line_exit_2(capsys, tmp_path, monkeypatch, name, value):
    for k in [k for k in os.environ if k.startswith("SLURM_ARRAY") or k in ("RANK", "WORLD_SIZE")]:
        monkeypatch.delenv(k)
    env = {"SLURM_ARRAY_TASK_ID": "0"} if name.startswith("SLURM") else {"WORLD_SIZE": "2"}
    for k, v in {**env, name: value}.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "tokens"
    status, err = run_par(capsys, "tokenize", "--images", tmp_path, "--vq", tmp_path / "vq.pt", "--out", out)
    assert status == 2
    one_line(err, rf"^par tokenize: error: {name}='{value}' is not an integer; unset it")
    assert not out.exists()


def test_a_list_array_runs_every_listed_slot(monkeypatch):
    """`sbatch --array=1,3,5` sets MIN=1, MAX=5, COUNT=3 and no STEP: the three tasks are slots 0, 1, 2 of 3."""
    from par.cluster import array_slot, array_task
    from par.errors import UserError

    listed = {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "5", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert [array_task({**listed, "SLURM_ARRAY_TASK_ID": t}) for t in "135"] == [(0, 3), (1, 3), (2, 3)]
    ranged = {"SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_MAX": "6", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert [array_task({**ranged, "SLURM_ARRAY_TASK_ID": t}) for t in "456"] == [(0, 3), (1, 3), (2, 3)]
    uneven = {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "7", "SLURM_ARRAY_TASK_COUNT": "3",
              "SLURM_ARRAY_TASK_ID": "2"}  # --array=1,2,7: a task cannot know its position
    with pytest.raises(UserError, match=r"^Slurm array task 2 does not fit .* submit --array=0-2, or pass --shard"):
        array_task(uneven)
    for k, v in uneven.items():
        monkeypatch.setenv(k, v)
    assert array_slot(1, 3) == (1, 3)  # explicit flags need nothing from the environment


# ------------------------------------------------------------------------------------------ one line, not a traceback (#26)

@pytest.mark.parametrize("argv,pattern", [
    (["--ch", "8", "--z-channels", "8"], r"--ch 8 --ch-mult 1,2,2: level widths \[8, 16\] are not multiples of 32"),
    (["--ch-mult", "1,a"], r"--ch-mult '1,a': expected a comma list of integers"),
])
def test_train_vq_widths_the_groupnorm_cannot_take_are_one_line(capsys, tmp_path, argv, pattern):
    out = tmp_path / "vq"
    status, err = run_par(capsys, "train-vq", "--images", tmp_path, "--out", out, *argv)
    assert status == 2
    one_line(err, r"^par train-vq: error: " + pattern)
    assert not out.exists()


@pytest.mark.parametrize("keys", ["clips", "mu,sigma"])
def test_fvd_reference_with_object_arrays_is_one_line_and_never_unpickled(capsys, tmp_path, keys):
    gen, ref = tmp_path / "gen.npz", tmp_path / "ref.npz"
    np.savez(gen, clips=np.zeros((2, 4, 8, 8, 3), np.uint8))
    np.savez(ref, **{k: np.array([np.zeros(3), "x"], dtype=object) for k in keys.split(",")})
    status, err = run_par(capsys, "fvd", "--generated", gen, "--reference", ref, "--out", tmp_path / "fvd.json")
    assert status == 2
    one_line(err, rf"^par fvd: error: {re.escape(str(ref))}: .*Object arrays cannot be loaded")
    assert not (tmp_path / "fvd.json").exists()
