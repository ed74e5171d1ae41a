"""`par bench sample`: schedules (PAR / raster on one backbone, ARPG on its own model of the same size), output
files, and the per-call / compute cost model."""

import json

import pytest
import torch

from par.eval.bench import Preset, cost_model, run_sample_bench
from par.cli import main

# 8×8 tokens (the smallest square grid PAR n=16 accepts), tiny-M (n_layer 3: odd, so ARPG's is derived)
TINY = Preset("tiny-M", (8, 8), 32, 3, (1,), 1, "cpu", "float32")


@pytest.fixture
def tiny_preset(monkeypatch):
    from par.eval import bench

    monkeypatch.setitem(bench.PRESETS, "test-tiny", TINY)
    return "test-tiny"


def _row(variant, n, calls, seconds, batch=1):
    return {"variant": variant, "n": n, "batch": batch, "forward_calls": calls, "seconds_per_batch": seconds}


def test_cost_model_recovers_call_cost_and_compute():
    F, C = 2e-3, 30e-3  # 2 ms per call, 30 ms of arithmetic per image
    rows = [_row("raster n=1", 1, 576, 576 * F + C), _row("PAR n=4", 4, 147, 147 * F + C),
            _row("PAR n=16", 16, 51, 51 * F + C)]
    m = cost_model(rows)["1"]
    assert m["seconds_per_call"] == pytest.approx(F) and m["compute_seconds"] == pytest.approx(C)
    assert m["compute_over_call"] == pytest.approx(15.0)
    assert m["max_compute_over_call_for_0.9_at_n16"] == pytest.approx(576 * 51 * 0.1 / (0.9 * 576 - 51))
    measured_n4 = (576 * F + C) / (147 * F + C) / (576 / 147)
    assert m["predicted_speedup_over_step_ratio"]["PAR n=4"] == pytest.approx(measured_n4)
    # at the allowed C/F the n=16 ratio is exactly the target
    C_max = m["max_compute_over_call_for_0.9_at_n16"] * F
    assert (576 * F + C_max) / (51 * F + C_max) / (576 / 51) == pytest.approx(0.9)


def test_cpu_tiny_bench_times_every_schedule_on_one_backbone(tmp_path, capsys):
    assert main(["bench", "sample", "--preset", "cpu-tiny", "--batch-sizes", "1", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sample-cpu-tiny.json").read_text())
    calls = {r["variant"]: r["forward_calls"] for r in result["rows"]}
    assert calls == {"raster n=1": 576, "PAR n=4": 147, "PAR n=16": 51, "raster-multi n=4": 147,
                     "ARPG S=64": 64, "ARPG S=32": 32, "ARPG S=16": 16}
    for r in result["rows"]:
        assert len(r["runs"]) == 1 and r["seconds_per_image"] > 0
        assert r["step_ratio"] == pytest.approx(576 / r["forward_calls"])
        assert r["n_layer"] == 2 and r["params"] > 0  # tiny-S's n_layer is even: ARPG uses it as it is
    for r in (r for r in result["rows"] if r["order"] == "arpg"):
        assert r["forward_calls"] == r["arpg_steps"] == int(r["variant"].split("=")[1])
        assert sum(r["tokens_per_step"]) == 576 and len(r["tokens_per_step"]) == r["arpg_steps"]
        assert "note" not in r and r["speedup"] > 0
    assert result["skipped"] == [] and result["config"]["arpg"]["steps"] == [64, 32, 16]
    assert set(result["cost_model"]["1"]["predicted_speedup_over_step_ratio"]) == {
        "raster n=1", "PAR n=4", "PAR n=16", "raster-multi n=4"}  # ARPG is not on the shared backbone
    md = (tmp_path / "sample-cpu-tiny.md").read_text()
    assert "| PAR n=16 | 1 | 51 | 2 |" in md and "Cost model" in md
    for S in (64, 32, 16):
        assert f"| ARPG S={S} | 1 | {S} | 2 |" in md


def test_arpg_rows_make_s_calls_on_a_same_size_model(tiny_preset, tmp_path, monkeypatch):
    """ARPG at each valid S on an 8×8 grid: S decode calls per image, its own tiny-M-sized model with the odd
    n_layer rounded up (noted in the rows), S above the 64 tokens skipped with a note."""
    from par.core.arpg import ARPG
    from par.core.model import build, model_config

    calls = []
    step = ARPG.decode_step
    monkeypatch.setattr(ARPG, "decode_step", lambda self, *a: calls.append(1) or step(self, *a))
    args = ["bench", "sample", "--preset", tiny_preset, "--arpg-steps", "128,32,16", "--out", str(tmp_path)]
    assert main(args) == 0
    assert len(calls) == 2 * (32 + 16)  # warm-up + 1 timed run, batch 1: the sampler really took S steps
    result = json.loads((tmp_path / "sample-test-tiny.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert [v for v in rows if v.startswith("ARPG")] == ["ARPG S=32", "ARPG S=16"]
    assert result["skipped"] == [{"variant": "ARPG S=128", "reason": "S=128 is outside 1 … 64 (the tokens per image)"}]
    ref = model_config("tiny-M", grid=(8, 8), order="arpg", n_layer=4, vocab_size=32, num_classes=3)
    for S in (32, 16):
        r = rows[f"ARPG S={S}"]
        assert r["order"] == "arpg" and r["forward_calls"] == S and r["step_ratio"] == pytest.approx(64 / S)
        assert r["n_layer"] == 4 and "n_layer=3" in r["note"]
        assert r["params"] == build(ref).num_params
    assert rows["raster n=1"]["n_layer"] == 3 and "note" not in rows["raster n=1"]
    md = (tmp_path / "sample-test-tiny.md").read_text()
    assert "| ARPG S=32 | 1 | 32 | 4† |" in md and "| ARPG S=16 | 1 | 16 | 4† |" in md
    assert "† tiny-M has n_layer=3" in md and "Skipped ARPG S=128" in md


def test_arpg_steps_all_invalid_is_a_clear_error(tiny_preset, tmp_path, capsys):
    assert main(["bench", "sample", "--preset", tiny_preset, "--arpg-steps", "65,128", "--out", str(tmp_path)]) == 2
    assert "none lies in 1 … 64" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_arpg_steps_none_and_compile_leave_arpg_out(tiny_preset, monkeypatch):
    import par.core.generate

    result = run_sample_bench(tiny_preset, arpg_steps=())
    assert not [r for r in result["rows"] if r["order"] == "arpg"] and result["skipped"] == []
    # --compile: PAR's compiled step (stubbed by the eager one here, to keep the test fast); ARPG is skipped
    monkeypatch.setattr(par.core.generate, "compile_decode_step", lambda model: model.decode_step)
    result = run_sample_bench(tiny_preset, compile_=True)
    assert not [r for r in result["rows"] if r["order"] == "arpg"]
    assert [s["variant"] for s in result["skipped"]] == ["ARPG S=64", "ARPG S=32", "ARPG S=16"]
    assert all("--compile" in s["reason"] for s in result["skipped"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_gpu_preset_without_gpu_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "sample", "--preset", "paper-3b", "--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_unknown_preset_is_rejected(tmp_path, capsys):
    assert main(["bench", "sample", "--preset", "nope", "--out", str(tmp_path)]) == 2
    assert "cpu-tiny" in capsys.readouterr().err


def test_variants_share_one_backbone_and_decode_like_separate_models():
    from par.eval.bench import PRESETS, _build_variants
    from par.config import SamplingSettings
    from par.core.generate import generate
    from par.core.model import Transformer

    variants = _build_variants(PRESETS["cpu-tiny"], torch.device("cpu"), torch.float32, False)
    base = variants[0][3]
    for _, _, n, m, _ in variants[1:]:
        assert m.layers[0].attention.wqkv.weight.data_ptr() == base.layers[0].attention.wqkv.weight.data_ptr()
        assert m.output.weight.data_ptr() == base.output.weight.data_ptr()
        assert not any(t.is_meta for t in [*m.parameters(), *m.buffers()])
    # the shared-parameter PAR n=16 model decodes exactly like an ordinary model with the same weights
    m16 = next(v[3] for v in variants if v[0] == "PAR n=16")
    plain = Transformer(m16.config)
    plain.load_state_dict(m16.state_dict())
    labels = torch.tensor([1, 7])
    a = generate(m16, labels, SamplingSettings(cfg_scale=1.5), torch.Generator().manual_seed(0))
    b = generate(plain.eval(), labels, SamplingSettings(cfg_scale=1.5), torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_bench_train_measures_the_step_and_names_its_memory_estimate(tmp_path, capsys):
    from par.cli import main

    assert main(["bench", "train", "--preset", "cpu-tiny", "--steps", "2", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "train-cpu-tiny.json").read_text())
    assert r["tokens_per_step"] == 8 * (576 + 3) and len(r["step_times"]) == 2  # PAR n=4: N + n − 1 positions
    assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["seconds_per_step"])
    assert r["model_flops_per_step"] == 6 * r["params"] * r["tokens_per_step"] and r["mfu"] is None  # no CPU peak
    assert 0 < r["planned_memory_gb"] < 1 and "tokens / s" in (tmp_path / "train-cpu-tiny.md").read_text()


def test_bench_train_on_a_gpu_preset_without_a_gpu_names_the_fix(tmp_path, capsys):
    import torch

    from par.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["bench", "train", "--preset", "paper-L", "--out", str(tmp_path)]) == 2
    assert "pass --device cpu or --preset cpu-tiny" in capsys.readouterr().err
