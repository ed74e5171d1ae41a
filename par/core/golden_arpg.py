"""Golden checks of ARPG (`par check-golden` on a folder laid out as `golden/arpg/`; its README is the format).

Cases are folders with a `config.json` whose family is ARPG (`<case>/` or `gpt/<case>/`): strict load, the
teacher-forced forward with the recorded orders (and the orders re-drawn from the recorded seed), and every
recorded greedy `generate` run. `schedule.json` pins the tokens per step; `keys/ARPG-*.json` the full sizes.
Tolerances: forward logits 1e-4 (the issue's bound), hidden states 1e-3, loss 1e-5, step logits 5e-4, chosen
logits 5e-3 (the README's float32 tolerances); tokens, orders, schedules, scales and counts exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from par.core.checks import ATOL_LOGITS, ATOL_LOSS, ATOL_ROPE, Check, _close, _equal
from par.errors import UserError
from par.io import torch_load

ATOL_HIDDEN, ATOL_STEP_LOGITS, ATOL_CHOSEN = 1e-3, 5e-4, 5e-3


def is_arpg_case(case: Path) -> bool:
    return (case / "config.json").exists() and json.loads((case / "config.json").read_text()).get("family") == "ARPG"


def _load(case: Path):
    from par.core.model import ModelConfig, build, load_state_dict_strict

    ref = json.loads((case / "config.json").read_text())
    model = build(ModelConfig.from_reference(ref["model_args"], "ARPG"))
    sd = torch_load(case / "model.pt")["model"]
    load_state_dict_strict(model, sd, case / "model.pt")
    return model, sd, ref


def _forward_checks(tag: str, model, ref: dict, f) -> list[Check]:
    tokens, labels, orders = (torch.as_tensor(f[k]) for k in ("tokens_raster", "labels", "orders"))
    captured: dict[str, list] = {"self": [], "cross": []}
    hooks = [layer.register_forward_hook(lambda m, i, o: captured["self"].append(o)) for layer in model.layers.self_dec]
    hooks += [layer.register_forward_hook(lambda m, i, o: captured["cross"].append(o)) for layer in model.layers.cross_dec]
    hooks += [model.layers.to_k.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o)),
              model.layers.to_v.register_forward_hook(lambda m, i, o: captured.__setitem__("v", o))]
    model.train()  # the reference's recorded pass ran in train mode (every dropout 0)
    try:
        logits, loss = model(tokens, labels, targets=tokens, orders=orders)
    finally:
        for h in hooks:
            h.remove()
    B, N = tokens.shape
    torch.manual_seed(ref["forward"]["fwd_seed"])  # the reference's draws: the label-drop test, then the orders
    torch.rand(B)
    redrawn = torch.rand(B, N).argsort(dim=1)
    return [
        _equal(f"{tag} forward orders re-drawn from the seed", redrawn, orders),
        _equal(f"{tag} condition ids", labels + model.class_offset, f["condition_ids"]),
        _equal(f"{tag} shuffled tokens", tokens.gather(1, orders), f["tokens_shuffled"]),
        _close(f"{tag} RoPE table", model.freqs_cis, f["freqs_cis_table"], ATOL_ROPE),
        _close(f"{tag} self-decoder outputs", torch.stack(captured["self"]), f["self_dec_outputs"], ATOL_HIDDEN),
        _close(f"{tag} cross K (before RoPE)", captured["k"], f["cross_k"], ATOL_HIDDEN),
        _close(f"{tag} cross V", captured["v"], f["cross_v"], ATOL_HIDDEN),
        _close(f"{tag} cross-decoder outputs", torch.stack(captured["cross"]), f["cross_dec_outputs"], ATOL_HIDDEN),
        _close(f"{tag} logits (teacher forcing)", logits, f["logits"], ATOL_LOGITS),
        _close(f"{tag} loss", loss, f["loss"], ATOL_LOSS),
    ]


def _generate_checks(tag: str, model, ref: dict, g) -> list[Check]:
    from par.config import SamplingSettings
    from par.core.arpg import generate

    model.eval()
    labels, gen = torch.as_tensor(g["labels"]), ref["generate"]
    checks = [_equal(f"{tag} generate condition ids", labels + model.class_offset, g["condition_ids"])]
    for run in gen["runs"]:
        name, r = f"{tag} {run['run']}", run["run"] + "__"
        sc = SamplingSettings(cfg_scale=float(run["guidance_scale"]), temperature=0.0, arpg_steps=int(run["num_iter"]),
                              arpg_schedule=run["sample_schedule"], arpg_cfg_schedule=run["cfg_schedule"])
        torch.manual_seed(gen["order_seed"])  # as the reference was called: the order comes from the global RNG
        tokens, rec = generate(model, labels, sc, return_logits=True)
        counts = rec["tokens_per_step"]
        guided = torch.cat(rec["guided"], 1)
        chosen = guided.gather(-1, rec["tokens_gen_order"][..., None])[..., 0]
        checks += [
            _equal(f"{name} order", rec["orders"][0], g[r + "order"]),
            _equal(f"{name} tokens per step", counts, g[r + "tokens_per_step"]),
            _equal(f"{name} CFG scale per step", np.array(rec["cfg_scale_per_step"]), g[r + "cfg_scale_per_step"]),
            _equal(f"{name} forward calls", len(counts), g[r + "num_forward_calls"]),
            _equal(f"{name} step of position", np.repeat(np.arange(len(counts)), counts), g[r + "step_of_position"]),
            _equal(f"{name} tokens (generation order)", rec["tokens_gen_order"], g[r + "tokens_gen_order"]),
            _equal(f"{name} tokens (raster)", tokens, g[r + "tokens_raster"]),
            _close(f"{name} chosen logit", chosen, g[r + "chosen_logit"], ATOL_CHOSEN),
        ]
        for s in (0, 1):
            for part in ("guided", "cond", "uncond"):
                key = f"{r}step{s}_logits_{part}"
                if key in g and s < len(rec[part]):
                    checks.append(_close(f"{name} step {s} {part} logits", rec[part][s], g[key], ATOL_STEP_LOGITS))
    return checks


@torch.no_grad()
def check_arpg_case(case: Path) -> list[Check]:
    tag = f"arpg/{case.name}"
    try:
        model, sd, ref = _load(case)
    except UserError as e:
        return [Check(f"{tag} strict load", False, str(e))]
    checks = [Check(f"{tag} strict load", True, f"{len(sd)} tensors"),
              _equal(f"{tag} state-dict key order", list(model.state_dict()), list(sd))]
    if "derived" in ref:
        d = ref["derived"]
        checks += [_equal(f"{tag} parameters", model.num_params, d["num_parameters"]),
                   _equal(f"{tag} FFN width", model.layers.self_dec[0].ffn.w1.out_features, d["ffn_hidden_dim"])]
    if (case / "forward.npz").exists():
        checks += _forward_checks(tag, model, ref, np.load(case / "forward.npz"))
    if (case / "generate.npz").exists():
        checks += _generate_checks(tag, model, ref, np.load(case / "generate.npz"))
    return checks


def check_schedule(path: Path) -> list[Check]:
    """`schedule.json`: tokens per step of every (N, S, schedule) entry, computed in float64."""
    from par.core.order import arpg_tokens_per_step

    data = json.loads(path.read_text())
    checks = []
    for e in data["entries"]:
        got = arpg_tokens_per_step(e["N"], e["S"], e["schedule"])
        checks += [_equal(f"schedule N={e['N']} S={e['S']} {e['schedule']}", got, e["tokens_per_step"]),
                   _equal(f"schedule N={e['N']} S={e['S']} {e['schedule']} calls", len(got), e["num_forward_calls"])]
    for kind, counts in (data.get("N256_S64") or {}).items():
        checks.append(_equal(f"schedule N=256 S=64 {kind} (README)", arpg_tokens_per_step(256, 64, kind), counts))
    return checks


def manifest_model(name: str, info: dict | None, manifest: dict):
    """The ARPG network of a key manifest, on the meta device: sizes from `index.json` (or the size in the
    name, ARPG-L → GPT-L), vocabulary and classes from the tensors."""
    import math

    from par.core.model import SIZES, build, model_config

    dim = manifest["embeddings.weight"][1]
    vocab = manifest["head.weight"][0]
    classes = manifest["embeddings.weight"][0] - vocab - 3
    if info is None:
        size = "GPT-" + name.split("-", 1)[1] if "-" in name else ""
        if size not in SIZES:
            raise UserError(f"keys/{name}.json: no index.json entry and no known size in the name")
        info = SIZES[size] | {"block_size": 256}
    side = math.isqrt(int(info.get("block_size", 256)))
    with torch.device("meta"):
        return build(model_config("GPT-L", dim=dim, n_layer=info["n_layer"], n_head=info["n_head"], vocab_size=vocab,
                                  num_classes=classes, grid=(side, side), order="arpg",
                                  **{k: info[k] for k in ("multiple_of", "ffn_dim_multiplier") if info.get(k)}))


def is_arpg_manifest(manifest: dict) -> bool:
    return "embeddings.weight" in manifest and "layers.to_k.weight" in manifest
