"""`par plan` knows memory: per-GPU weights, gradients, AdamW states and activations, and the fix of a job that
does not fit."""

from pathlib import Path

import pytest
import yaml

from par.cli import main
from par.train import memory

ROOT = Path(__file__).resolve().parent.parent
GPT_3B = dict(params=3_100_000_000, block_params=4 * 3200 ** 2 + 3 * 3200 * 8704 + 2 * 3200, layers=24, dim=3200,
              vocab=16384, seq_len=579)


def job(world, micro_batch, strategy="fsdp", checkpointing=False):
    return memory.Job(**GPT_3B, world=world, micro_batch=micro_batch, strategy=strategy, checkpointing=checkpointing)


def test_fsdp_shards_the_states_and_ddp_does_not():
    ddp, fsdp = memory.per_gpu(job(8, 8, "ddp")), memory.per_gpu(job(8, 8, "fsdp"))
    assert ddp["optimizer"] == pytest.approx(8 * 3.1e9 / memory.GiB)  # AdamW: two fp32 moments
    assert fsdp["optimizer"] == pytest.approx(ddp["optimizer"] / 8)
    assert ddp["activations"] == fsdp["activations"]
    assert memory.per_gpu(job(8, 8, checkpointing=True))["activations"] < fsdp["activations"] / 5


@pytest.mark.parametrize("world,micro_batch,strategy,fits,fix", [
    (1, 512, "ddp", False, "activation_checkpointing: true, micro_batch: "),  # one GPU: no FSDP in the fix
    (8, 64, "ddp", False, "activation_checkpointing: true"),
    (8, 64, "fsdp", False, "activation_checkpointing: true"),
    (32, 16, "fsdp", True, ""),
])
def test_gpt_3b_on_1_8_and_32_gpus(world, micro_batch, strategy, fits, fix):
    j = job(world, micro_batch, strategy)
    assert (memory.per_gpu(j)["total"] <= 80) == fits
    assert memory.fix(j, 80).startswith(fix) and bool(memory.fix(j, 80)) != fits
    if not fits:  # the fix, applied, fits
        text = memory.fix(j, 80)
        kw = dict(checkpointing=True) if "checkpointing" in text else {}
        if "micro_batch:" in text:
            kw["micro_batch"] = int(text.split("micro_batch: ")[1].split()[0])
        assert memory.per_gpu(memory.replace(j, **kw))["total"] <= 80


def test_par_plan_prints_memory_and_refuses_a_job_that_does_not_fit(tmp_path, capsys):
    assert main(["plan", "--preset", "paper", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "total GB" in out and "optimizer GB" in out and "| fsdp " in out
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["presets"]["paper"]["models"]["par-3B-n4"]["resources"] = "train"  # one node of 8: 3B does not fit
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["plan", "--config", str(tmp_path / "c.yaml"), "--preset", "paper", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "par-3B-n4: " in err and "on 8 GPU(s)" in err and "fix: activation_checkpointing: true" in err


def test_plan_of_the_released_checkpoints_bills_sampling_only(tmp_path, capsys):
    assert main(["plan", "--preset", "paper-released", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| par-3B-n4 " in out and "Total: 0.00e+00 training" in out
