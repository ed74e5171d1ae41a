"""`par bench sample`: schedules, output files, and the per-call / compute cost model."""

import json

import pytest
import torch

from par.eval.bench import cost_model, run_sample_bench
from par.cli import main


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
    assert calls == {"raster n=1": 576, "PAR n=4": 147, "PAR n=16": 51, "raster-multi n=4": 147}
    for r in result["rows"]:
        assert len(r["runs"]) == 1 and r["seconds_per_image"] > 0
        assert r["step_ratio"] == pytest.approx(576 / r["forward_calls"])
    assert "1" in result["cost_model"]
    md = (tmp_path / "sample-cpu-tiny.md").read_text()
    assert "| PAR n=16 | 1 | 51 |" in md and "Cost model" in md


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
