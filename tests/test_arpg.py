"""ARPG (spec §12): golden-exact model and sampler, the reference's behaviours, released checkpoints, training,
NLL and its place in the workflow."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from par.cli import main
from par.config import SamplingSettings
from par.core import arpg
from par.core.golden_arpg import check_arpg_case, check_schedule, manifest_model
from par.core.model import build, load_checkpoint, model_config
from par.core.order import arpg_tokens_per_step
from par.errors import UserError

GOLDEN = Path(__file__).parent / "data" / "golden_arpg"
ROOT = Path(__file__).resolve().parent.parent


# -- golden ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["arpg_A", "arpg_B"])
def test_golden_case_passes_every_check(case):
    checks = check_arpg_case(GOLDEN / case)
    assert [c.name for c in checks if not c.ok] == []
    names = " ".join(c.name for c in checks)
    assert names.count("tokens (raster)") == 12 and "logits (teacher forcing)" in names  # every recorded run


def test_schedule_matches_the_reference_for_every_entry():
    checks = check_schedule(GOLDEN / "schedule.json")
    assert len(checks) > 30 and all(c.ok for c in checks)


def _float32_schedule(N, S, kind):
    counts, done = [], 0
    for s in range(S):
        x = np.float32(s + 1) / np.float32(S)
        r = np.arccos(x) / np.float32(np.pi / 2) if kind == "arccos" else np.cos(np.float32(np.pi / 2) * x)
        k = N - done if s == S - 1 else N - done - max(1, min(N - done - 1, int(np.float32(N) * np.float32(r))))
        counts.append(k)
        done += k
    return counts


def test_schedule_is_computed_in_float64_where_float32_lands_on_the_other_side_of_an_integer():
    entries = json.loads((GOLDEN / "schedule.json").read_text())["entries"]
    boundary = [e for e in entries if e["near_integer_steps"] and e["schedule"] == "cosine" and e["S"] == 36]
    assert boundary
    for e in boundary:
        assert arpg_tokens_per_step(e["N"], e["S"], "cosine") == e["tokens_per_step"]
        assert _float32_schedule(e["N"], e["S"], "cosine") != e["tokens_per_step"]  # why float64 matters (Q9)


@pytest.mark.parametrize("steps", [0, 65])
def test_schedule_rejects_impossible_step_counts(steps):
    with pytest.raises(UserError, match="ARPG steps"):
        arpg_tokens_per_step(64, steps)


def test_check_golden_cli_passes_and_fails_on_a_perturbed_copy(tmp_path, capsys):
    assert main(["check-golden", str(GOLDEN)]) == 0
    passed, failed = (int(s.split()[0]) for s in capsys.readouterr().out.strip().splitlines()[-1].split(", "))
    assert failed == 0 and passed > 400
    shutil.copytree(GOLDEN, tmp_path / "g")
    ckpt = torch.load(tmp_path / "g/arpg_B/model.pt", weights_only=True)
    ckpt["model"]["layers.to_k.weight"] *= 1.01
    torch.save(ckpt, tmp_path / "g/arpg_B/model.pt")
    assert main(["check-golden", str(tmp_path / "g")]) == 1
    out = capsys.readouterr().out
    assert "FAIL  arpg/arpg_B logits (teacher forcing)" in out and "arpg/arpg_A" not in out
    assert out.strip().splitlines()[-1].endswith("failed") and " 0 failed" not in out


@pytest.mark.parametrize("name", ["ARPG-L", "ARPG-XL", "ARPG-XXL"])
def test_released_checkpoints_load_strictly_with_weights_only(tmp_path, name):
    """A file with the manifest's tensors (meta: no memory) in the reference's {"model": …} layout loads strictly."""
    from par.io import torch_load

    manifest = json.loads((GOLDEN / "keys" / f"{name}.json").read_text())
    index = json.loads((GOLDEN / "keys" / "index.json").read_text())[name]
    torch.save({"model": {k: torch.empty(s, device="meta") for k, s in manifest.items()}}, tmp_path / "w.pt")
    model = manifest_model(name, None, manifest)  # sizes from the name alone (GPT-L/XL/XXL)
    model.load_state_dict(torch_load(tmp_path / "w.pt")["model"], strict=True, assign=True)
    assert model.num_params == index["num_parameters"] and list(model.state_dict()) == list(manifest)


# -- an independent, cache-free reference at another size (the hidden set's kind) -----------------------------


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rot(x, f):  # x (T, H, hd), f (T, hd/2, 2)
    xs = x.reshape(*x.shape[:-1], -1, 2)
    c, s = f[:, None, :, 0], f[:, None, :, 1]
    return torch.stack([xs[..., 0] * c - xs[..., 1] * s, xs[..., 1] * c + xs[..., 0] * s], -1).flatten(-2)


def _attn(q, k, v, mask):  # (T, H, hd), (S, H, hd); mask (T, S) True = visible
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("hts,shd->thd", scores.masked_fill(~mask, float("-inf")).softmax(-1), v).flatten(1)


def _reference_logits(sd, cfg, content_ids, content_rows, query_rows, mask_self, table):
    """One image: explicit masked softmax attention over the whole content (no cache), README §1.4 / §3.1."""
    H, eps = cfg.n_head, cfg.norm_eps
    x = sd["embeddings.weight"][content_ids]
    ffn = lambda p, h: F.linear(F.silu(F.linear(h, sd[p + "w1.weight"])) * F.linear(h, sd[p + "w3.weight"]),  # noqa: E731
                                sd[p + "w2.weight"])
    fc, fq = table[content_rows], table[query_rows]
    for i in range(cfg.n_layer // 2):
        p = f"layers.self_dec.{i}."
        h = _rms(x, sd[p + "attn_norm.weight"], eps)
        q, k, v = (F.linear(h, sd[p + f"attn.{n}.weight"]).view(len(x), H, -1) for n in ("to_q", "to_k", "to_v"))
        x = x + F.linear(_attn(_rot(q, fc), _rot(k, fc), v, mask_self), sd[p + "attn.proj.weight"])
        x = x + ffn(p + "ffn.", _rms(x, sd[p + "ffn_norm.weight"], eps))
    xn = _rms(x, sd["layers.norm.weight"], eps)
    k = _rot(F.linear(xn, sd["layers.to_k.weight"]).view(len(x), H, -1), fc)
    v = F.linear(xn, sd["layers.to_v.weight"]).view(len(x), H, -1)
    q = sd["embeddings.weight"][cfg.vocab_size].expand(len(query_rows), -1)
    for i in range(cfg.n_layer // 2):
        p = f"layers.cross_dec.{i}."
        h = _rms(q, sd[p + "attn_norm.weight"], eps)
        qq = _rot(F.linear(h, sd[p + "attn.to_q.weight"]).view(len(q), H, -1), fq)
        q = q + F.linear(_attn(qq, k, v, torch.ones(len(q), len(x), dtype=torch.bool)), sd[p + "attn.proj.weight"])
        q = q + ffn(p + "ffn.", _rms(q, sd[p + "ffn_norm.weight"], eps))
    return F.linear(_rms(q, sd["norm.weight"], eps), sd["head.weight"])


@pytest.fixture(scope="module")
def odd_model():
    """Another grid, dims, heads, vocabulary, classes and FFN rounding than the public cases."""
    cfg = model_config("tiny-S", dim=48, n_layer=4, n_head=3, multiple_of=16, ffn_dim_multiplier=1.3, grid=(6, 6),
                       vocab_size=37, num_classes=5, order="arpg", token_dropout_p=0.0, resid_dropout_p=0.0,
                       ffn_dropout_p=0.0, class_dropout_prob=0.0)
    torch.manual_seed(3)
    model = build(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.25 * torch.randn_like(p) if name.endswith("norm.weight") else 0.2 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("schedule,steps,cfg_scale", [("arccos", 7, 3.0), ("cosine", 12, 1.0), ("arccos", 36, 2.0)])
def test_cached_decoding_equals_a_cache_free_masked_reference(odd_model, schedule, steps, cfg_scale):
    m, cfg = odd_model, odd_model.config
    sc = SamplingSettings(cfg_scale=cfg_scale, temperature=0.0, arpg_steps=steps, arpg_schedule=schedule,
                          arpg_cfg_schedule="linear")
    labels = torch.tensor([1, 4])
    torch.manual_seed(0)
    tokens, rec = arpg.generate(m, labels, sc, return_logits=True)
    sd, table, N = m.state_dict(), m.freqs_cis, m.num_tokens
    order, gen = rec["orders"][0], rec["tokens_gen_order"]
    counts = rec["tokens_per_step"]
    assert sum(counts) == N and len(counts) == steps
    assert torch.equal(tokens.gather(1, rec["orders"]), gen)  # raster ← generation order round trip
    done = 0
    for s, (k, scale) in enumerate(zip(counts, rec["cfg_scale_per_step"])):
        group = torch.tensor([0] + [j + 1 for j, c in enumerate(counts[:s]) for _ in range(c)])  # class = group 0
        mask = group[None, :] <= group[:, None]
        rows = torch.cat([torch.zeros(1, dtype=torch.long), order[:done] + 1])
        out = []
        for b, y in enumerate(labels.tolist()):
            for cls in (cfg.vocab_size + 1 + y, cfg.vocab_size + cfg.num_classes + 1):
                ids = torch.cat([torch.tensor([cls]), gen[b, :done]])
                out.append(_reference_logits(sd, cfg, ids, rows, order[done:done + k] + 1, mask, table))
        cond, uncond = torch.stack(out[0::2]), torch.stack(out[1::2])
        torch.testing.assert_close(rec["cond"][s], cond, atol=2e-4, rtol=0)
        torch.testing.assert_close(rec["uncond"][s], uncond, atol=2e-4, rtol=0)
        assert scale == pytest.approx(1 + (cfg_scale - 1) * (done + k) / N)
        done += k


# -- the reference's behaviours ----------------------------------------------------------------------------------


def test_teacher_forcing_is_causal_in_the_random_order_in_both_modes(odd_model):
    m = odd_model
    tokens = torch.randint(0, m.config.vocab_size, (1, m.num_tokens))
    orders = torch.randperm(m.num_tokens)[None]
    base = m(tokens, torch.tensor([2]), orders=orders)
    t = 10
    changed = tokens.clone()
    changed[0, orders[0, t]] = (changed[0, orders[0, t]] + 1) % m.config.vocab_size
    after = m(changed, torch.tensor([2]), orders=orders)
    assert torch.equal(base[:, :t + 1], after[:, :t + 1])  # query ≤ t never sees z_t (its own target included)
    assert not torch.allclose(base[:, t + 1:], after[:, t + 1:])
    m.train()
    try:
        torch.testing.assert_close(m(tokens, torch.tensor([2]), orders=orders), base)  # dropout is 0 here
    finally:
        m.eval()


def test_label_dropout_runs_in_eval_mode_and_always_draws(odd_model):
    m, C = odd_model, odd_model.config.num_classes
    tokens, orders = torch.randint(0, 37, (3, m.num_tokens)), torch.randperm(m.num_tokens).expand(3, -1)
    labels = torch.tensor([0, 1, 2])
    m.config.class_dropout_prob = 1.0
    try:
        dropped = m(tokens, labels, orders=orders)  # eval mode, as the reference (Q2)
        kept = m(tokens, labels, orders=orders, drop_labels=False)
    finally:
        m.config.class_dropout_prob = 0.0
    torch.testing.assert_close(dropped, m(tokens, torch.full_like(labels, C), orders=orders))
    torch.testing.assert_close(kept, m(tokens, labels, orders=orders))
    torch.manual_seed(5)
    m(tokens, labels, orders=orders)  # probability 0: the B uniforms are drawn all the same
    after = torch.rand(1)
    torch.manual_seed(5)
    torch.rand(3)
    assert torch.equal(after, torch.rand(1))


def test_sampler_ignores_top_k_unless_asked_and_shares_one_order_per_batch(odd_model):
    labels = torch.tensor([0, 1, 2, 3])
    greedy = arpg.generate(odd_model, labels, SamplingSettings(temperature=0.0, arpg_steps=6),
                           torch.Generator().manual_seed(1))
    draw = lambda **kw: arpg.generate(odd_model, labels, SamplingSettings(top_k=1, arpg_steps=6, **kw),  # noqa: E731
                                      torch.Generator().manual_seed(1), return_logits=True)
    ignored, rec = draw()
    assert not torch.equal(ignored, greedy)  # top_k=1 was not applied (Q8): a temperature-1 draw
    assert (rec["orders"] == rec["orders"][0]).all()  # one order for the batch (Q4)
    filtered, _ = draw(arpg_filters=True)
    assert torch.equal(filtered, greedy)
    _, per_sample = draw(arpg_order="sample")
    assert len({tuple(o.tolist()) for o in per_sample["orders"]}) == 4


def test_model_config_rejects_an_odd_layer_count_and_ropeless_heads():
    with pytest.raises(UserError, match="even n_layer"):
        model_config("small-S", order="arpg", grid=(16, 16))
    with pytest.raises(UserError, match="divisible by 4"):
        model_config("tiny-S", order="arpg", dim=72, n_head=4, grid=(16, 16))


def test_small_arpg_size_has_the_parameter_budget_of_small_s():
    kw = dict(grid=(16, 16), vocab_size=512, num_classes=10)
    par = build(model_config("small-S", order="par", n=4, **kw)).num_params
    peer = build(model_config("small-S-arpg", order="arpg", **kw)).num_params
    assert abs(peer - par) / par < 0.03


# -- training, checkpoints, NLL -----------------------------------------------------------------------------------


def test_cosine_schedule_ends_at_min_lr():
    from par.config import TrainSettings
    from par.train.train import lr_at

    cfg = TrainSettings(lr=1e-3, min_lr=1e-5, warmup_epochs=1, schedule="cosine")
    assert lr_at(0, 100, 10, cfg) == pytest.approx(1e-4)
    assert lr_at(10, 100, 10, cfg) == pytest.approx(1e-3)
    assert lr_at(100, 100, 10, cfg) == pytest.approx(1e-5)


def test_training_steps_lower_the_loss_and_the_checkpoint_round_trips(tmp_path, odd_model):
    torch.manual_seed(0)
    m = build(odd_model.config)
    data = torch.randint(0, 4, (16, m.num_tokens))  # few distinct tokens: learnable in a few steps
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    m.train()
    losses = []
    for _ in range(15):
        _, loss = m(data, torch.zeros(16, dtype=torch.long), targets=data)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    torch.save({"model": m.state_dict(), "config": m.config.to_dict()}, tmp_path / "model.pt")
    back = load_checkpoint(tmp_path / "model.pt")
    assert isinstance(back, arpg.ARPG) and not back.training
    orders = torch.randperm(m.num_tokens)[None]
    m.eval()
    torch.testing.assert_close(back(data[:1], torch.zeros(1, dtype=torch.long), orders=orders),
                               m(data[:1], torch.zeros(1, dtype=torch.long), orders=orders))


def test_nll_averages_random_orders_and_is_seeded(odd_model):
    from par.eval.nll import heldout_nll

    codes = np.random.default_rng(0).integers(0, 37, (6, odd_model.num_tokens))
    labels = np.arange(6) % 5
    one = heldout_nll(odd_model, codes, labels, 4, orders=1)
    four = heldout_nll(odd_model, codes, labels, 4, orders=4)
    assert one.shape == (6,) and not np.allclose(one, four)
    np.testing.assert_array_equal(four, heldout_nll(odd_model, codes, labels, 3, orders=4))


# -- the workflow --------------------------------------------------------------------------------------------------


def _experiment(preset, edit=None):
    from par.workflow import Experiment

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["preset"] = preset
    if edit:
        edit(cfg["presets"][preset]["models"])
    return Experiment(cfg)


def test_trained_as_samples_the_runs_of_another_entry():
    e = _experiment("small-ablations")
    assert e.model_path("arpg-n16steps/s2") == "results/small-ablations/models/arpg/s2/model.pt"
    assert [r for r in e.runs if r.startswith("arpg-n16steps/")] == [f"arpg-n16steps/s{k}" for k in range(3)]
    assert "--arpg-steps 31" in e.sample_args("arpg-n16steps/s1") and "--seed 1" in e.sample_args("arpg-n16steps/s1")
    # its NLL is arpg's (the same weights), scored once
    assert "arpg/s1" in e.nll_runs and not [r for r in e.nll_runs if r.startswith("arpg-n16steps/")]
    with pytest.raises(UserError, match="trained_as: 'nope' is not another model"):
        _experiment("small-ablations", lambda m: m["arpg-n16steps"].update(trained_as="nope"))
    with pytest.raises(UserError, match="arpg-n16steps.seeds: it samples the runs of 'arpg', which has 3"):
        _experiment("small-ablations", lambda m: m["arpg-n16steps"].update(seeds=2))


def test_released_arpg_weights_are_downloaded_and_skip_the_nll():
    e = _experiment("paper")
    assert e.model_path("arpg-XL/s0") == "results/paper/downloads/arpg_700m.pt"
    assert e.fetch_args("arpg_700m.pt").startswith("--url https://huggingface.co/hp-l33/ARPG/resolve/main/arpg_700m.pt")
    assert "arpg-XL/s0" in e.runs and "arpg-XL/s0" not in e.nll_runs and "arpg-L-147/s0" in e.nll_runs
    assert e.sample_args("arpg-XL/s0").endswith("--procs 8 --size GPT-XL --order arpg --n 1")


def test_plan_bills_arpg_training_once_and_its_released_weights_never(tmp_path):
    from par.train.plan import plan

    rows = {r["model"]: r for r in plan(ROOT / "config.yaml", "paper", tmp_path, 0.4)}
    assert rows["arpg-L-147"]["train_flops"] > 0 and rows["arpg-L-51"]["train_flops"] == 0
    assert rows["arpg-XL"]["train_flops"] == 0 and rows["arpg-XL"]["params"] == 718_997_760
    # ARPG's sampler always doubles the batch; 16×16 tokens for the released weights
    assert rows["arpg-XL"]["sample_flops"] == 2 * 718_997_760 * 256 * 50_000 * 2
