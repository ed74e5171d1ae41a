"""`par check-golden DIR`: compare this implementation with golden vectors from the authors' code.

DIR has the layout documented in its README (orders.json, gpt/<case>/, vq_tiny/, keys/), or that of the ARPG
set (<case>/, schedule.json, keys/ARPG-*.json; `par.core.golden_arpg`); every part that is present is checked,
so it also runs on other directories of the same format. Tolerances are
the README's: logits / hidden states atol 1e-4, loss 1e-5, RoPE 1e-6; tokens, codes, masks, orders
and forward-call counts exact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from par.core import golden_arpg
from par.core.checks import ATOL_LOGITS, ATOL_LOSS, ATOL_ROPE, Check, _close, _equal
from par.errors import UserError
from par.io import torch_load

# -- orders.json -----------------------------------------------------------------------------------


def reference_call_table(order) -> list[list[int]]:
    """[first_input_pos, num_positions, num_idx_tokens, num_logits] per call, in the reference's
    convention: the transition call is handed the n−1 sequential tokens (only the last is embedded)."""
    from par.core.order import TOKEN

    layout = order.layout
    kind, _ = layout.sources
    rows = []
    for s, e in layout.calls:
        handed = int((kind[s:e] == TOKEN).sum())
        if layout.n > 1 and layout.first_block and s == layout.first_block:
            handed = layout.n - 1
        rows.append([s, e - s, handed, e - s])
    return rows


def check_orders(path: Path) -> list[Check]:
    from par.core.order import Order

    checks = []
    for e in json.loads(path.read_text())["entries"]:
        tag = f"orders L={e['L']} n={e['n']}"
        o = Order((e["L"], e["L"]), "par", e["n"])
        checks += [
            _equal(f"{tag} par_order", o.perm, e["par_order"]),
            _equal(f"{tag} raster_to_par", o.inverse, e["raster_to_par"]),
            _equal(f"{tag} forward calls", o.num_calls, e["num_forward_calls"]),
            _equal(f"{tag} forward calls n=1", Order((e["L"], e["L"]), "raster", 1).num_calls, e["num_forward_calls_n1"]),
        ]
        if "calls" in e:
            checks.append(_equal(f"{tag} call table", reference_call_table(o), e["calls"]))
    return checks


# -- gpt/<case> ------------------------------------------------------------------------------------


def _load_case(case: Path):
    from par.core.model import ModelConfig, Transformer, load_state_dict_strict

    ref = json.loads((case / "config.json").read_text())
    model = Transformer(ModelConfig.from_reference(ref["model_args"], ref.get("family", "PAR")))
    sd = torch_load(case / "model.pt")["model"]
    load_state_dict_strict(model, sd, case / "model.pt")
    return model.eval(), sd


@torch.no_grad()
def check_gpt_case(case: Path) -> list[Check]:
    from par.config import SamplingSettings
    from par.core.generate import generate

    tag = f"gpt/{case.name}"
    try:
        model, sd = _load_case(case)
    except UserError as e:
        return [Check(f"{tag} strict load", False, str(e))]
    checks = [
        Check(f"{tag} strict load", True, f"{len(sd)} tensors"),
        _equal(f"{tag} state-dict key order", list(model.state_dict()), list(sd)),
    ]

    if (case / "forward.npz").exists():
        f = np.load(case / "forward.npz")
        z, y = torch.as_tensor(f["codes_par"]), torch.as_tensor(f["labels"])
        S = model.seq_len
        captured = {}
        hooks = [model.tok_dropout.register_forward_hook(lambda m, i, o: captured.__setitem__("embeddings", o)),
                 model.norm.register_forward_hook(lambda m, i, o: captured.__setitem__("final_norm", o))]
        hooks += [layer.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(f"layer{k}", o))
                  for k, layer in enumerate(model.layers)]
        try:
            full = model(z, y, all_positions=True)
        finally:
            for h in hooks:
                h.remove()
        kept, loss = model(z, y, targets=z)
        pos = torch.arange(S)
        checks += [
            _equal(f"{tag} raster→order permutation", model.order.to_order(torch.as_tensor(f["codes_raster"])), f["codes_par"]),
            _equal(f"{tag} attention mask", model._mask(pos, S), f["attn_mask"]),
            _close(f"{tag} RoPE table", model.freqs_cis, f["freqs_cis"][:S], ATOL_ROPE),
            _close(f"{tag} embeddings", captured["embeddings"], f["embeddings"], ATOL_LOGITS),
            _close(f"{tag} layer outputs", torch.stack([captured[f"layer{k}"] for k in range(len(model.layers))]),
                   f["layer_outputs"], ATOL_LOGITS),
            _close(f"{tag} final norm", captured["final_norm"], f["final_norm"], ATOL_LOGITS),
            _close(f"{tag} logits (kept)", kept, f["logits"], ATOL_LOGITS),
            _close(f"{tag} logits (all positions)", full, f["logits_full"], ATOL_LOGITS),
            _close(f"{tag} loss", loss, f["loss"], ATOL_LOSS),
        ]

    if (case / "generate.npz").exists():
        g = np.load(case / "generate.npz")
        labels = torch.as_tensor(g["labels"])
        layout = model.order.layout
        for P in ("cfg_", "nocfg_"):
            if f"{P}tokens_par" not in g:
                continue
            run = f"{tag} greedy {P[:-1]}"
            sc = SamplingSettings(cfg_scale=float(g[f"{P}scale"]), temperature=0.0)
            toks, lg = generate(model, labels, sc, return_logits=True)
            toks_order = model.order.to_order(toks)
            calls = reference_call_table(model.order)
            checks += [
                _equal(f"{run} tokens (raster)", toks, g[f"{P}tokens_raster"]),
                _equal(f"{run} tokens (order)", toks_order, g[f"{P}tokens_par"]),
                _equal(f"{run} forward calls", len(layout.calls), len(g[f"{P}call_start_pos"])),
                _equal(f"{run} call start positions", [c[0] for c in calls], g[f"{P}call_start_pos"]),
                _equal(f"{run} call sizes", [c[1] for c in calls], g[f"{P}call_num_pos"]),
                _equal(f"{run} tokens handed per call", [c[2] for c in calls], g[f"{P}call_num_idx"]),
                _equal(f"{run} step of token", layout.step_of_token, g[f"{P}step_of_token"]),
                _close(f"{run} guided logits", lg["guided"], g[f"{P}logits_guided"], ATOL_LOGITS),
                _close(f"{run} conditional logits", lg["cond"], g[f"{P}logits_cond"], ATOL_LOGITS),
                _close(f"{run} chosen logit", lg["guided"].gather(-1, toks_order[..., None])[..., 0],
                       g[f"{P}chosen_logit"], ATOL_LOGITS),
            ]
            if "uncond" in lg and f"{P}logits_uncond" in g:
                checks.append(_close(f"{run} unconditional logits", lg["uncond"], g[f"{P}logits_uncond"], ATOL_LOGITS))
            # cached decoding must reproduce a teacher-forced pass over the generated sequence
            checks.append(_close(f"{run} cached == teacher-forced", model(toks_order, labels), lg["cond"], ATOL_LOGITS))
    return checks


# -- keys/ -----------------------------------------------------------------------------------------


def _manifest_config(name: str, info: dict | None, manifest: dict):
    from par.core.model import SIZES, ModelConfig

    dim = manifest["tok_embeddings.weight"][1]
    if info is None:  # fall back to the size in the file name, e.g. PAR_GPT-XL_n4
        size = next((s for s in SIZES if f"_{s}_" in f"{name}_"), None)
        if size is None:
            raise UserError(f"keys/{name}.json: no index.json entry and no known size in the name")
        info = {**SIZES[size], "family": name.split("_")[0]}
    n = int(info.get("ar_token_num", 1)) if info.get("family") == "PAR" else 1
    side = math.isqrt(int(info.get("block_size", 576)))
    return ModelConfig(
        dim=dim, n_layer=info["n_layer"], n_head=info["n_head"], vocab_size=manifest["tok_embeddings.weight"][0],
        num_classes=manifest["cls_embedding.embedding_table.weight"][0] - 1, grid=(side, side),
        order="par" if n > 1 else "raster", n=n,
    )


def check_manifest(path: Path, index: dict) -> list[Check]:
    manifest = json.loads(path.read_text())
    name = path.stem
    tag = f"keys/{path.name}"
    info = index.get(name)
    if (info or {}).get("family") == "VQ" or "quantize.embedding.weight" in manifest:
        from par.data import tokenizer

        with torch.device("meta"):
            sd = tokenizer.VQModel(tokenizer.VQConfig()).state_dict()
    elif golden_arpg.is_arpg_manifest(manifest):
        try:
            sd = golden_arpg.manifest_model(name, info, manifest).state_dict()
        except (UserError, KeyError) as e:
            return [Check(tag, False, f"cannot build a config: {e}")]
    else:
        from par.core.model import Transformer

        try:
            cfg = _manifest_config(name, info, manifest)
        except (UserError, KeyError) as e:
            return [Check(tag, False, f"cannot build a config: {e}")]
        with torch.device("meta"):
            sd = Transformer(cfg).state_dict()
    got = [(k, list(v.shape)) for k, v in sd.items()]
    want = [(k, list(v)) for k, v in manifest.items()]
    if got == want:
        return [Check(f"{tag} keys+shapes", True, f"{len(want)} tensors, same order")]
    missing = [k for k, _ in want if k not in sd][:3]
    extra = [k for k, _ in got if k not in manifest][:3]
    shapes = [f"{k} {s} != {dict(want).get(k)}" for k, s in got if k in manifest and s != dict(want)[k]][:3]
    check = Check(f"{tag} keys+shapes", False, f"missing {missing}, unexpected {extra}, shapes {shapes}, "
                  f"order differs: {[k for k, _ in got] != [k for k, _ in want]}")
    return [check]


# -- driver ----------------------------------------------------------------------------------------


def run_checks(root: Path) -> list[Check]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory; pass a golden directory (with orders.json, gpt/, keys/, vq_tiny/)")
    checks: list[Check] = []
    if (root / "orders.json").exists():
        checks += check_orders(root / "orders.json")
    for case in sorted(p for p in (root / "gpt").glob("*") if (p / "config.json").exists()):
        checks += golden_arpg.check_arpg_case(case) if golden_arpg.is_arpg_case(case) else check_gpt_case(case)
    for case in sorted(p for p in root.glob("*") if golden_arpg.is_arpg_case(p)):
        checks += golden_arpg.check_arpg_case(case)
    if (root / "schedule.json").exists():
        checks += golden_arpg.check_schedule(root / "schedule.json")
    keys = root / "keys"
    if keys.is_dir():
        index = json.loads((keys / "index.json").read_text()) if (keys / "index.json").exists() else {}
        for path in sorted(keys.glob("*.json")):
            if path.name != "index.json":
                checks += check_manifest(path, index)
    for vq_dir in sorted(p for p in root.glob("vq*") if (p / "vq.npz").exists()):
        from par.data.tokenizer import golden_checks

        checks += [Check(f"{vq_dir.name} {name}", ok, detail) for name, ok, detail in golden_checks(vq_dir)]
    if not checks:
        raise UserError(f"{root}: no golden data found (expected orders.json, gpt/<case>/, keys/, vq_tiny/, or ARPG "
                        "<case>/ and schedule.json)")
    return checks


def cmd_check_golden(args) -> int:
    checks = run_checks(Path(args.dir))
    failed = [c for c in checks if not c.ok]
    for c in checks if args.verbose else failed:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def register(sub):
    p = sub.add_parser("check-golden", help="compare against golden vectors from the reference implementation")
    p.add_argument("dir", help="golden directory (orders.json, gpt/<case>/, keys/, vq_tiny/; or ARPG's <case>/, "
                   "schedule.json, keys/)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every check, not only failures")
    p.set_defaults(func=cmd_check_golden)
