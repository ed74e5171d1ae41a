"""The LlamaGen GPT with PAR's parallel-group modifications (paper §3.3).

One readable file in the spirit of nanoGPT. What PAR adds to LlamaGen is small and visible here:

* `spe_tok_embeddings`: n−1 learnable transition tokens that stand in for the not-yet-generated
  inputs of the first parallel group (`Layout.sources`);
* a group attention mask: bidirectional inside a group of n, causal across groups (`Layout.block_end`);
* 2D RoPE indexed by *sequence position*: each image token carries the angles of its own grid cell
  (taken in generation order), while the class and transition tokens get an all-zero (cos, sin)
  row — which zeroes their q and k exactly, as the released checkpoints were trained (not the
  identity rotation). Video grids get 3D RoPE over (frame, row, col).

Module and parameter names equal the reference implementation's, so the released `PAR-*.pt` and
LlamaGen `c2i_*.pt` checkpoints load with `strict=True` (`load_checkpoint`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from par import io
from par.errors import UserError
from par.core.layers import Backbone, FeedForward, RMSNorm, apply_rotary_emb, rope_cell_table  # noqa: F401
from par.core.order import CLS, SPE, TOKEN, Order, RandomOrder


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


@dataclass
class ModelConfig:
    # backbone (LlamaGen names)
    dim: int = 1024
    n_layer: int = 24
    n_head: int = 16
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    vocab_size: int = 16384
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    # token grid and generation order (PAR)
    grid: tuple[int, ...] = (24, 24)
    order: str = "par"  # "raster" | "par" | "arpg" (ARPG's random orders and decoder, par.core.arpg)
    n: int = 4  # tokens per step (ar_token_num); n - 1 transition tokens (spe_token_num)
    initial_sequential: bool = True
    group_attention: str = "full"  # "full" | "causal" (Table 3(c) ablation)
    regions: int = 0  # regions of the PAR permutation when it differs from n (Table 3(d) "distant one")

    def __post_init__(self):
        self.grid = tuple(int(g) for g in self.grid)
        if self.dim % self.n_head:
            raise UserError(f"model config: dim={self.dim} is not divisible by n_head={self.n_head}")
        if self.head_dim % 2:
            raise UserError(f"model config: head_dim={self.head_dim} must be even for RoPE")
        if self.order == "arpg":
            if self.n_layer % 2:
                raise UserError(f"model config: ARPG splits its n_layer={self.n_layer} blocks into self- and cross-"
                                "decoder halves; use an even n_layer (e.g. size small-S-arpg)")
            if self.head_dim % 4:
                raise UserError(f"model config: ARPG's 2D RoPE needs head_dim={self.head_dim} divisible by 4")
            self.n = 1  # tokens per step come from the sampler's schedule, not the model

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)

    @property
    def order_obj(self) -> Order | RandomOrder:
        if self.order == "arpg":
            return RandomOrder(self.grid)
        return Order(self.grid, self.order, self.n, self.initial_sequential, self.group_attention, self.regions)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"{source}: unknown model config field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_reference(cls, model_args: dict, family: str = "PAR") -> "ModelConfig":
        """Build from the reference implementation's constructor arguments (golden `config.json`)."""
        side = math.isqrt(int(model_args["block_size"]))  # the reference's grid: int(sqrt(block_size))
        n = int(model_args.get("ar_token_num", 1)) if family == "PAR" else 1
        order = "arpg" if family == "ARPG" else ("par" if n > 1 else "raster")
        keep = {k: model_args[k] for k in (
            "dim", "n_layer", "n_head", "multiple_of", "ffn_dim_multiplier", "rope_base", "norm_eps",
            "initializer_range", "token_dropout_p", "attn_dropout_p", "resid_dropout_p", "ffn_dropout_p",
            "drop_path_rate", "vocab_size", "num_classes", "class_dropout_prob") if k in model_args}
        if model_args.get("n_kv_head") not in (None, model_args["n_head"]):
            raise UserError("grouped-query attention (n_kv_head != n_head) is not used by any PAR/LlamaGen c2i model")
        if family == "ARPG" and int(model_args.get("cls_token_num", 1)) != 1:
            raise UserError("ARPG: cls_token_num must be 1 (the reference's generate hard-codes RoPE row 0, Q10)")
        return cls(**keep, grid=(side, side), order=order, n=n)


# Sizes of §5 (LlamaGen GPT-*), plus small CPU sizes standing in for them in the tiny preset.
SIZES: dict[str, dict] = {
    "GPT-B": dict(n_layer=12, n_head=12, dim=768),
    "GPT-L": dict(n_layer=24, n_head=16, dim=1024),
    "GPT-XL": dict(n_layer=36, n_head=20, dim=1280),
    "GPT-XXL": dict(n_layer=48, n_head=24, dim=1536),
    "GPT-3B": dict(n_layer=24, n_head=32, dim=3200),
    "tiny-S": dict(n_layer=2, n_head=4, dim=64, multiple_of=32),
    "tiny-M": dict(n_layer=3, n_head=4, dim=96, multiple_of=32),
    "tiny-L": dict(n_layer=4, n_head=4, dim=128, multiple_of=32),
    # the small preset (Fashion-MNIST, 16×16 tokens, 2 CPU cores): three sizes for Table 3(e)
    "small-S": dict(n_layer=3, n_head=4, dim=64, multiple_of=32),
    "small-M": dict(n_layer=4, n_head=4, dim=96, multiple_of=32),
    "small-L": dict(n_layer=5, n_head=4, dim=128, multiple_of=32),
    "tiny-XL": dict(n_layer=6, n_head=6, dim=192, multiple_of=32),
    # ARPG beside small-S at the same parameter budget (an even n_layer for its self/cross halves)
    "small-S-arpg": dict(n_layer=4, n_head=4, dim=64, multiple_of=32, ffn_dim_multiplier=0.75),
}


def model_config(size: str, **overrides) -> ModelConfig:
    if size not in SIZES:
        raise UserError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    return ModelConfig(**{**SIZES[size], **overrides})


# ---------------------------------------------------------------------------------------------
# Rotary position embedding
# ---------------------------------------------------------------------------------------------


def rope_sequence_table(order: Order, head_dim: int, base: float) -> torch.Tensor:
    """(S, head_dim/2, 2) table indexed by sequence position: own-cell angles for image tokens, zero rows
    (cos = sin = 0) for the class and transition tokens."""
    kind, index = order.layout.sources
    cells = rope_cell_table(order.grid, head_dim, base)[torch.as_tensor(order.perm)]  # order positions
    is_tok = torch.as_tensor(kind == TOKEN)[:, None, None]
    return cells[torch.as_tensor(index)] * is_tok  # index is a valid order position everywhere


# ---------------------------------------------------------------------------------------------
# Modules (reference names)
# ---------------------------------------------------------------------------------------------


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row (index num_classes) = null class for CFG and label dropout."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class SpecialEmbeddings(nn.Module):
    def __init__(self, num: int, dim: int):
        super().__init__()
        self.special_embeddings = nn.Embedding(num, dim)


ATTENTION = ("sdpa", "flex")


def flex_attention(q, k, v, block_mask):
    """FlexAttention over PAR's group mask as a `BlockMask`: on a GPU a fused kernel (compiled once) that skips the
    fully masked tiles, where SDPA's masked path materialises nothing but must take the slower kernel for a boolean
    mask. Eager elsewhere: the unfused reference, forward only on the CPU (how tests check it against SDPA)."""
    from torch.nn.attention.flex_attention import flex_attention as flex

    global _compiled_flex
    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask)
    return flex(q, k, v, block_mask=block_mask)


_compiled_flex = None


class KVCache(nn.Module):
    """Static (B, H, L, hd) key/value cache written at absolute sequence positions."""

    def __init__(self, batch: int, n_head: int, length: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_head, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dim = cfg.n_head, cfg.head_dim, cfg.dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)  # rows: q | k | v, head-major
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout_p = cfg.attn_dropout_p
        self.resid_dropout = nn.Dropout(cfg.resid_dropout_p)
        self.kv_cache: KVCache | None = None

    def forward(self, x, freqs, mask, pos=None, num_keys=None):
        """`pos`: sequence positions written to the KV cache (decoding); attention then covers the first
        `num_keys` cached keys under `mask` (None: every query sees all of them)."""
        B, T, _ = x.shape
        q, k, v = self.wqkv(x).split(self.dim, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim) for t in (q, k, v))
        q, k = apply_rotary_emb(q, freqs), apply_rotary_emb(k, freqs)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(pos, k, v)
            k, v = k[:, :, :num_keys], v[:, :, :num_keys]
        if mask is not None and not isinstance(mask, torch.Tensor):  # a BlockMask: FlexAttention (no attention dropout)
            y = flex_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.attn_dropout_p if self.training else 0.0
            )
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(B, T, self.dim)))


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, drop_path: float):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, freqs, mask, pos=None, num_keys=None):
        h = x + self.drop_path(self.attention(self.attention_norm(x), freqs, mask, pos, num_keys))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))


class Transformer(Backbone):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.order = cfg.order_obj
        layout = self.order.layout
        self.num_tokens, self.seq_len = layout.num_tokens, layout.seq_len

        self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim, cfg.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        if layout.n > 1:
            self.spe_tok_embeddings = SpecialEmbeddings(layout.n - 1, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout_p)
        dpr = np.linspace(0, cfg.drop_path_rate, cfg.n_layer).tolist()  # stochastic depth per layer
        self.layers = nn.ModuleList(TransformerBlock(cfg, dpr[i]) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

        self.register_layout_buffers()
        self.cache_len, self.static_kv = 0, False
        self.attention_kernel = "sdpa"  # the teacher-forced pass's kernel: "sdpa" (boolean mask) or "flex" (BlockMask)
        self._block_masks: dict = {}
        self.reset_parameters()

    def register_layout_buffers(self, device=None):
        """Layout tables (not in the state dict): input source per position, RoPE rows, group mask.
        Computed from the config, so a model built on the meta device can get them on a real one."""
        cfg, layout = self.config, self.order.layout
        kind, index = layout.sources
        self.register_buffer("src_kind", torch.as_tensor(kind, device=device), persistent=False)
        self.register_buffer("src_index", torch.as_tensor(index, device=device), persistent=False)
        self.register_buffer("block_end", torch.as_tensor(layout.block_end, device=device), persistent=False)
        table = rope_sequence_table(self.order, cfg.head_dim, cfg.rope_base)
        self.register_buffer("freqs_cis", table if device is None else table.to(device), persistent=False)

    def reset_parameters(self):
        self.init_weights(self.output)

    # -- inputs ----------------------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Input embeddings at sequence positions `pos`: class / image token / transition token.

        tokens: (B, ≥ max source index + 1) in generation order; labels (B,)."""
        kind, index = self.src_kind[pos], self.src_index[pos]
        x = self.tok_embeddings(tokens[:, index])
        if hasattr(self, "spe_tok_embeddings"):
            spe = self.spe_tok_embeddings.special_embeddings(index.clamp(max=self.config.n - 2))
            x = torch.where((kind == SPE)[None, :, None], spe[None].to(x.dtype), x)
        cls = self.cls_embedding(labels)[:, None, :]
        x = torch.where((kind == CLS)[None, :, None], cls.to(x.dtype), x)
        return self.tok_dropout(x)

    def _mask(self, pos: torch.Tensor, num_keys: int) -> torch.Tensor:
        return torch.arange(num_keys, device=pos.device)[None, :] < self.block_end[pos][:, None]

    def _training_mask(self, pos: torch.Tensor):
        """The group mask of the full layout: a boolean matrix for SDPA, or (attention_kernel = "flex") the same rule as a
        FlexAttention BlockMask — key k is visible to query q iff k < block_end[q] — built once per device."""
        if self.attention_kernel != "flex" or self.config.attn_dropout_p > 0:
            return self._mask(pos, self.seq_len)
        if pos.device not in self._block_masks:
            from torch.nn.attention.flex_attention import create_block_mask

            end = self.block_end.to(pos.device)
            self._block_masks[pos.device] = create_block_mask(
                lambda b, h, q, kv: kv < end[q], None, None, self.seq_len, self.seq_len, device=pos.device)
        return self._block_masks[pos.device]

    def _trunk(self, x, pos, mask, num_keys=None):
        freqs = self.freqs_cis[pos]
        for layer in self.layers:
            x = layer(x, freqs, mask, pos, num_keys)
        return self.norm(x)

    # -- training / teacher forcing --------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None,
                all_positions: bool = False):
        """Teacher-forced pass over the training layout.

        tokens: (B, N) or (B, N-1) codes in generation order (the model never permutes; use
        `model.order.to_order` on raster codes). Returns logits (B, N, V) for the kept positions
        (position p predicts z_p), or all S positions with `all_positions=True`, and the mean
        cross-entropy when `targets` (B, N) is given.
        """
        if self.cache_len:
            raise RuntimeError("KV caches are set up; call model.clear_caches() before a teacher-forced forward")
        pos = torch.arange(self.seq_len, device=tokens.device)
        h = self._trunk(self.embed(tokens, labels, pos), pos, self._training_mask(pos))
        if not all_positions:
            h = h[:, : self.num_tokens]
        logits = self.output(h).float()
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits[:, : self.num_tokens].flatten(0, 1), targets.flatten())

    # -- cached decoding -------------------------------------------------------------------------

    def setup_caches(self, batch: int, dtype: torch.dtype | None = None, static: bool | None = None):
        """Allocate KV caches long enough for every generation position (rounded up to 8).

        static: every decode call attends over the whole cache under the group mask, so all shapes are fixed
        (what CUDA graphs / torch.compile need); otherwise a call attends only over the keys visible to it
        (fewer FLOPs, shapes vary per call). Default: static on CUDA."""
        p = next(self.parameters())
        self.static_kv = p.device.type == "cuda" if static is None else static
        self.cache_len = find_multiple(self.num_tokens, 8)
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(
                batch, self.config.n_head, self.cache_len, self.config.head_dim, dtype or p.dtype, p.device
            )

    def clear_caches(self):
        self.cache_len = 0
        for layer in self.layers:
            layer.attention.kv_cache = None

    def decode_step(self, tokens: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One forward call of generation over sequence positions `pos` (writes their keys/values);
        returns float32 logits (B, len(pos), V). See `setup_caches` for static vs visible-keys attention."""
        if self.static_kv:
            num_keys = self.cache_len
            mask = self._mask(pos, num_keys)
        else:
            ends = self.block_end.cpu().numpy()[pos.cpu().numpy()]  # host-side view on the CPU: no tensor ops
            num_keys = int(ends.max())
            # every query of a PAR / raster call sees exactly the keys up to its group's end: no mask needed,
            # which lets SDPA take its unmasked kernel (only the causal-in-group ablation keeps a mask)
            mask = None if ends.min() == num_keys else self._mask(pos, num_keys)
        h = self._trunk(self.embed(tokens, labels, pos), pos, mask, num_keys)
        return self.output(h).float()



# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def build(cfg: ModelConfig) -> nn.Module:
    """The network of a config: the PAR / LlamaGen `Transformer`, or ARPG's for order "arpg"."""
    if cfg.order == "arpg":
        from par.core.arpg import ARPG

        return ARPG(cfg)
    return Transformer(cfg)


def extract_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "module", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise UserError(f"{path}: no state dict found (expected a dict with 'model', 'module' or 'state_dict')")


def load_state_dict_strict(module: nn.Module, sd: dict, path: Path | str):
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:4]}" * bool(missing), f"unexpected {unexpected[:4]}" * bool(unexpected),
                 f"shape mismatch {wrong[:3]}" * bool(wrong)]
        raise UserError(f"{path}: state dict does not match the model config ({'; '.join(p for p in parts if p)}); "
                        "check size / n / order in the config")
    module.load_state_dict(sd, strict=True)


def load_checkpoint(path: str | Path, config: ModelConfig | None = None, dtype=torch.float32,
                    weights: str = "model") -> nn.Module:
    """Load one of our checkpoints (which carry their config) or a released PAR/LlamaGen file
    (pass `config`, e.g. `model_config("GPT-XL", n=4)`, or `model_config("GPT-L", order="arpg", grid=(16, 16))`
    for `arpg_300m.pt`). weights="ema" takes the EMA copy instead (written
    by `par train --ema true` and by the reference trainer's --ema)."""
    path = Path(path)
    obj = io.torch_load(path)
    if weights == "ema":
        if not (isinstance(obj, dict) and isinstance(obj.get("ema"), dict)):
            raise UserError(f"{path}: no 'ema' weights in this checkpoint (train with --ema true, or use weights=model)")
        obj = {**obj, "model": obj["ema"]}
    elif weights != "model":
        raise UserError(f"weights={weights!r}: use 'model' or 'ema'")
    if config is None:
        if not (isinstance(obj, dict) and isinstance(obj.get("config"), dict)):
            raise UserError(f"{path}: checkpoint carries no 'config'; pass the model config (size, n, order) explicitly")
        config = ModelConfig.from_dict(obj["config"].get("model", obj["config"]), source=f"{path}:config")
    model = build(config)
    load_state_dict_strict(model, extract_state_dict(obj, path), path)
    return model.to(dtype).eval()
