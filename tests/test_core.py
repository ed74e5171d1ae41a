"""Core engine: orders, model, cached decoding, checkpoint loading, check-golden."""

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from par.cli import main
from par.errors import UserError
from par.core.generate import SamplingSettings, compile_decode_step, generate, guided_call
from par.core.sampling import draw_categorical, filter_logits
from par.core.model import ModelConfig, Transformer, load_checkpoint, model_config
from par.core.order import Layout, Order, num_forward_calls

GOLDEN = __import__("pathlib").Path(__file__).parent / "data" / "golden"


# -- orders (§3.2) -----------------------------------------------------------------------------------


def test_orders_match_golden():
    for e in json.loads((GOLDEN / "orders.json").read_text())["entries"]:
        o = Order((e["L"], e["L"]), "par", e["n"])
        np.testing.assert_array_equal(o.perm, e["par_order"])
        np.testing.assert_array_equal(o.inverse, e["raster_to_par"])
        assert o.num_calls == e["num_forward_calls"]


@pytest.mark.parametrize("grid,kind,n,init,calls", [
    ((24, 24), "raster", 1, True, 576),
    ((24, 24), "par", 4, True, 147),
    ((24, 24), "par", 16, True, 51),
    ((24, 24), "par", 4, False, 144),  # Table 3(a): no initial sequential phase
    ((24, 24), "raster", 4, True, 147),  # Table 3(d): raster multi
    ((5, 16, 16), "raster", 1, True, 1280),  # video (Table 4): 5×16×16 tokens
    ((5, 16, 16), "par", 4, True, 323),  # video, spatial-only regions
    ((5, 16, 16), "par", 16, True, 95),
])
def test_forward_call_counts(grid, kind, n, init, calls):
    assert num_forward_calls(grid, kind, n, init) == calls


def test_permutation_round_trip_and_groups():
    o = Order((8, 8), "par", 4)
    x = torch.arange(64).repeat(3, 1)
    assert torch.equal(o.to_raster(o.to_order(x)), x)
    # a group = the same offset in every region: cells of group g are R apart
    rc = o.cell_coords()
    for g in range(16):
        cells = rc[g * 4:(g + 1) * 4]
        assert len({(r % 4, c % 4) for r, c in cells}) == 1
        assert len({(r // 4, c // 4) for r, c in cells}) == 4


def test_raster_multi_groups_are_consecutive():
    o = Order((8, 8), "raster", 4)
    steps = o.step_grid().ravel()
    assert list(steps[:8]) == [0, 1, 2, 3, 4, 4, 4, 4]


def test_distant_one_uses_par_permutation_sequentially():
    o = Order((8, 8), "par", 1, regions=4)
    np.testing.assert_array_equal(o.perm, Order((8, 8), "par", 4).perm)
    assert o.num_calls == 64 and o.name == "par-n1-regions4"


def test_video_groups_stay_spatial():
    o = Order((2, 4, 4), "par", 4)
    coords = o.cell_coords()  # (t, r, c)
    first_group = coords[:4]
    assert set(map(tuple, first_group)) == {(0, 0, 0), (0, 0, 2), (0, 2, 0), (0, 2, 2)}


@pytest.mark.parametrize("grid,n", [((24, 24), 3), ((24, 24), 25), ((6, 8), 4)])
def test_bad_orders_raise_clear_error(grid, n):
    with pytest.raises(UserError):
        Order(grid, "par", n)


def test_causal_group_mask_is_causal():
    assert (Layout(16, 4, group_attention="causal").attention_mask() == np.tril(np.ones((19, 19), bool))).all()


# -- model (§3.3) ------------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", sorted(p.name for p in (GOLDEN / "keys").glob("*_GPT-*.json")))
def test_state_dict_matches_released_manifests(manifest):
    from par.core.golden import check_manifest

    index = json.loads((GOLDEN / "keys" / "index.json").read_text())
    (check,) = check_manifest(GOLDEN / "keys" / manifest, index)
    assert check.ok, check.detail


def test_param_counts_of_paper_sizes():
    with torch.device("meta"):
        assert Transformer(model_config("GPT-3B", n=4)).num_params == 3_096_668_800
        assert Transformer(model_config("GPT-L", n=16)).num_params == 342_926_336
        assert Transformer(model_config("GPT-XL", order="raster", n=1)).num_params == 774_699_520


def test_cls_and_spe_positions_get_zero_rope():
    m = Transformer(ModelConfig(dim=32, n_layer=1, n_head=2, vocab_size=16, num_classes=3, grid=(4, 4), n=4))
    zero = (m.freqs_cis == 0).all(-1).all(-1)
    assert zero.tolist() == [True] + [False] * 4 + [True] * 3 + [False] * 11


def test_rope_table_stays_float32_when_the_model_is_cast():
    """As in the reference (a plain fp32 attribute): bf16 inference rotates with fp32 cos/sin."""
    m = Transformer(ModelConfig(dim=32, n_layer=1, n_head=2, vocab_size=16, num_classes=3, grid=(4, 4), n=4))
    table = m.freqs_cis.clone()
    m = m.to(torch.bfloat16)
    assert m.freqs_cis.dtype == torch.float32 and torch.equal(m.freqs_cis, table)
    assert m.output.weight.dtype == torch.bfloat16 and m.block_end.dtype == torch.int64
    assert m.to("meta").freqs_cis.device.type == "meta"


def test_class_dropout_only_in_training():
    m = Transformer(ModelConfig(dim=32, n_layer=1, n_head=2, vocab_size=16, num_classes=3, grid=(4, 4), n=4,
                                class_dropout_prob=0.5))
    labels = torch.zeros(4000, dtype=torch.long)
    emb = m.cls_embedding
    null_row = emb.embedding_table.weight[3]
    emb.train()
    dropped = (emb(labels) == null_row).all(-1).float().mean().item()
    assert 0.45 < dropped < 0.55
    emb.eval()
    assert not (emb(labels) == null_row).all(-1).any()


# -- cached decoding (Fig. 4) --------------------------------------------------------------------------

VARIANTS = [
    dict(order="raster", n=1),
    dict(order="par", n=4),
    dict(order="par", n=16),
    dict(order="par", n=4, initial_sequential=False),
    dict(order="par", n=4, group_attention="causal"),
    dict(order="raster", n=4),
    dict(order="par", n=1, regions=4),  # Table 3(d) "distant one": PAR permutation, one token per step
]


def _random_model(grid=(8, 8), seed=0, **kw):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(dim=48, n_layer=2, n_head=4, multiple_of=16, vocab_size=32, num_classes=5,
                                grid=grid, **kw))
    torch.nn.init.normal_(m.output.weight, std=0.5)
    return m.eval()


@pytest.mark.parametrize("variant", VARIANTS + [dict(order="par", n=4, grid=(2, 4, 4))])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_cached_decoding_reproduces_teacher_forcing(variant, cfg_scale):
    m = _random_model(**variant)
    labels = torch.tensor([0, 4, 2])
    gen = torch.Generator().manual_seed(1)
    toks, logits = generate(m, labels, SamplingSettings(cfg_scale=cfg_scale, top_k=20), gen, return_logits=True)
    assert toks.shape == (3, m.num_tokens) and toks.dtype == torch.long
    with torch.no_grad():
        tf = m(m.order.to_order(toks), labels)
    torch.testing.assert_close(logits["cond"], tf, atol=1e-4, rtol=1e-4)
    if cfg_scale > 1:
        tf_u = m(m.order.to_order(toks), torch.full_like(labels, 5))
        torch.testing.assert_close(logits["uncond"], tf_u, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(logits["guided"], logits["uncond"] + cfg_scale * (logits["cond"] - logits["uncond"]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_static_cache_decoding_equals_visible_keys_decoding(variant):
    """The GPU path (whole static cache under the group mask) against the CPU path (visible keys only)."""
    m = _random_model(**variant)
    labels = torch.tensor([0, 4])
    out = {}
    for static in (True, False):
        gen = torch.Generator().manual_seed(3)
        out[static] = generate(m, labels, SamplingSettings(cfg_scale=2.0), gen, return_logits=True, static_cache=static)
    assert torch.equal(out[True][0], out[False][0])
    torch.testing.assert_close(out[True][1]["guided"], out[False][1]["guided"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("static", [False, True])
def test_bf16_decoding_matches_bf16_teacher_forcing(static):
    """The GPU sampling precision (bf16 weights and caches, fp32 logits and RoPE table), run on the CPU."""
    m = _random_model(order="par", n=4).to(torch.bfloat16)
    labels = torch.tensor([0, 4, 2])
    toks, lg = generate(m, labels, SamplingSettings(cfg_scale=2.0), torch.Generator().manual_seed(1),
                        return_logits=True, static_cache=static)
    with torch.no_grad():
        tf = m(m.order.to_order(toks), labels)
    assert lg["cond"].dtype == torch.float32 and m.freqs_cis.dtype == torch.float32
    torch.testing.assert_close(lg["cond"], tf, atol=0.07, rtol=0.01)  # ≤ about one bf16 ulp at |logit| ≈ 12


@pytest.mark.slow
def test_compiled_decode_step_is_one_graph_and_matches_eager():
    """torch.compile(fullgraph=True) of the static-cache step: no graph breaks, same tokens and logits."""
    m = _random_model(grid=(4, 4), order="par", n=4)
    labels = torch.tensor([0, 3])
    sc = SamplingSettings(cfg_scale=2.0, temperature=0)
    toks, logits = generate(m, labels, sc, return_logits=True, step_fn=compile_decode_step(m))
    ref, ref_logits = generate(m, labels, sc, return_logits=True, static_cache=True)
    assert torch.equal(toks, ref)
    torch.testing.assert_close(logits["guided"], ref_logits["guided"], atol=1e-4, rtol=1e-4)


def test_cfg_interval_follows_the_reference_counters():
    par = Order((24, 24), "par", 4).layout
    # prefill; sequential calls counted 0, 1, 2; parallel calls counted 0, 4, 8, … from the transition call
    assert [guided_call(par, c, 2) for c in range(7)] == [True, True, True, True, True, False, False]
    assert [guided_call(par, c, 4) for c in range(7)] == [True] * 6 + [False]
    raster = Order((24, 24), "raster", 1).layout  # LlamaGen: prefill, then decode calls counted 0, 1, 2, …
    assert [guided_call(raster, c, 5) for c in range(8)] == [True] * 7 + [False]
    assert all(guided_call(par, c, -1) for c in range(len(par.calls)))


def test_cfg_interval_falls_back_to_conditional_logits():
    m = _random_model(order="par", n=4)  # 8×8 grid: 4 single calls, then 15 parallel calls
    labels = torch.tensor([1, 3])
    sc = SamplingSettings(cfg_scale=3.0, cfg_interval=8)
    toks, lg = generate(m, labels, sc, torch.Generator().manual_seed(0), return_logits=True)
    guided = lg["uncond"] + 3.0 * (lg["cond"] - lg["uncond"])
    cut = 4 + 3 * 4  # calls 0–3 and the parallel calls counted 0, 4, 8 are guided: the first 16 positions
    torch.testing.assert_close(lg["guided"][:, :cut], guided[:, :cut])
    torch.testing.assert_close(lg["guided"][:, cut:], lg["cond"][:, cut:])
    always = generate(m, labels, SamplingSettings(cfg_scale=3.0, cfg_interval=10_000), torch.Generator().manual_seed(0))
    assert torch.equal(always, generate(m, labels, SamplingSettings(cfg_scale=3.0), torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("static", [False, True])
def test_decoding_detects_a_wrong_mask(static):
    """The consistency test above must be able to fail: break the group mask of the cached path only
    (teacher forcing keeps the right one) and its comparison must no longer hold."""
    m = _random_model(order="par", n=4)
    labels = torch.tensor([1, 2])
    right = m.block_end.clone()
    wrong = {"causal inside groups": torch.arange(1, m.seq_len + 1),  # sees too little
             "one key too many": (right + 1).clamp(max=m.seq_len)}  # sees the next, not yet written key

    def consistency(step_fn):  # the check of test_cached_decoding_reproduces_teacher_forcing
        toks, logits = generate(m, labels, SamplingSettings(temperature=0), return_logits=True, step_fn=step_fn,
                                static_cache=static)
        with torch.no_grad():
            tf = m(m.order.to_order(toks), labels)
        torch.testing.assert_close(logits["cond"], tf, atol=1e-4, rtol=1e-4)

    consistency(m.decode_step)  # the right mask passes
    for name, ends in wrong.items():
        def broken_step(tokens, labels, pos, ends=ends):
            m.block_end.copy_(ends)
            try:
                return m.decode_step(tokens, labels, pos)
            finally:
                m.block_end.copy_(right)

        with pytest.raises(AssertionError):
            consistency(broken_step)
        assert torch.equal(m.block_end, right), name


def test_generation_is_seeded():
    m = _random_model(order="par", n=4)
    labels = torch.tensor([1, 2, 3])
    a = generate(m, labels, SamplingSettings(cfg_scale=1.5), torch.Generator().manual_seed(7))
    b = generate(m, labels, SamplingSettings(cfg_scale=1.5), torch.Generator().manual_seed(7))
    c = generate(m, labels, SamplingSettings(cfg_scale=1.5), torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.9)).tolist() == [[False, False, False, True]]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isinf(filter_logits(shuffled, top_p=0.7)).tolist() == [[True, False, True, False]]


def test_draw_categorical_follows_probabilities_and_never_draws_zero_mass():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.25, 0.0, 0.75, 0.0]])
    draws = draw_categorical(probs[:, None].expand(3, 40000, 5), torch.Generator().manual_seed(0))
    assert draws.shape == (3, 40000) and draws.dtype == torch.long
    freq = torch.nn.functional.one_hot(draws, 5).float().mean(1)
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)  # 4 sigma ≈ 0.01 at 40k draws
    assert not (probs.gather(1, draws) == 0).any()


def test_draw_categorical_target_stays_below_the_total(monkeypatch):
    """u → 1 must still land on the last token with positive mass, not on a filtered tail."""
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, 1.0, dtype=kw["dtype"]))
    assert draw_categorical(torch.tensor([[0.2, 0.8, 0.0, 0.0]]), None).tolist() == [1]


# -- checkpoints ---------------------------------------------------------------------------------------


def test_load_reference_checkpoint_with_pickled_args(tmp_path):
    m = _random_model(order="par", n=4)
    path = tmp_path / "ref.pt"
    torch.save({"model": m.state_dict(), "optimizer": None, "steps": 10,
                "args": argparse.Namespace(gpt_model="GPT-XL", ar_token_num=4)}, path)
    loaded = load_checkpoint(path, m.config)
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_load_checkpoint_errors_name_the_file(tmp_path):
    m = _random_model(order="par", n=4)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": m.state_dict()}, path)
    with pytest.raises(UserError, match="ckpt.pt.*does not match"):
        load_checkpoint(path, _random_model(order="par", n=16).config)
    with pytest.raises(UserError, match="no 'config'"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt", m.config)
    torch.save({"model": m.state_dict(), "config": m.config.to_dict()}, path)
    assert load_checkpoint(path).config == m.config


# -- check-golden ------------------------------------------------------------------------------------------


def test_check_golden_passes_on_public_set(capsys):
    assert main(["check-golden", str(GOLDEN)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    passed, failed = (int(s.split()[0]) for s in summary.split(", "))
    assert failed == 0 and passed > 150


def test_check_golden_fails_on_a_perturbed_copy(tmp_path, capsys):
    for name in ("orders.json", "gpt"):
        src = GOLDEN / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    case = tmp_path / "gpt" / "par_L4_n4"
    ckpt = torch.load(case / "model.pt", weights_only=True)
    ckpt["model"]["layers.1.ffn_norm.weight"] += 1e-2
    torch.save(ckpt, case / "model.pt")
    orders = json.loads((tmp_path / "orders.json").read_text())
    orders["entries"][0]["num_forward_calls"] += 1
    (tmp_path / "orders.json").write_text(json.dumps(orders))
    assert main(["check-golden", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  gpt/par_L4_n4 logits" in out and "FAIL  orders L=4 n=4 forward calls" in out
    assert "gpt/par_L8_n16" not in out  # untouched cases still pass


def test_check_golden_rejects_empty_dir(tmp_path):
    assert main(["check-golden", str(tmp_path)]) == 2


@pytest.mark.parametrize("order,n,attention", [("par", 4, "full"), ("par", 16, "full"), ("par", 4, "causal"),
                                               ("raster", 1, "full")])
def test_flex_attention_block_mask_equals_the_sdpa_group_mask(order, n, attention):
    """Training's FlexAttention path (a BlockMask of the same rule) gives SDPA's logits (forward on the CPU; the
    GPU acceptance suite checks gradients). It can fail: a wrong mask rule moves the logits by O(1)."""
    from par.core.model import build, model_config

    torch.manual_seed(0)
    model = build(model_config("tiny-S", grid=(8, 8), order=order, n=n, group_attention=attention, vocab_size=32,
                               num_classes=4)).eval()
    tokens, labels = torch.randint(0, 32, (3, 64)), torch.tensor([0, 1, 2])
    with torch.no_grad():
        sdpa = model(tokens, labels)
        model.attention_kernel = "flex"
        flex = model(tokens, labels)
    torch.testing.assert_close(flex, sdpa, atol=2e-5, rtol=1e-5)
