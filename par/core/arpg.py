"""ARPG: randomized parallel decoding with target-aware queries (Li et al. 2025; spec §12) — the peer row.

ARPG generates in a random order, several tokens per forward call, and separates *what* is known from
*where* to predict ("guided decoding"), in two stacks of n_layer/2 Llama blocks:

* a causal **self-decoder** over the content stream `[class, z_σ(0) … z_σ(N−2)]`, each token rotated
  (2D RoPE) to its own cell, the class token to the all-zero row (its q and k become exactly 0);
* one shared K/V from `layers.norm → to_k (+RoPE) / to_v` of the content, read by every block of
* a **cross-decoder** whose queries are N copies of the [MASK] embedding rotated to their *target* cells:
  query t attends to the class and z_σ(0) … z_σ(t−1) and predicts z_σ(t).

One embedding table holds image tokens, [MASK], the classes, the null class and an unused row. Names equal
the reference's (`hp-l33/ARPG` models/arpg.py), so the released `arpg_{300m,700m,1b}.pt` load with
`strict=True` into `model_config("GPT-{L,XL,XXL}", order="arpg", grid=(16, 16))`.

Behaviours of the reference reproduced by default (golden README §7; a deviation is an explicit option):

* Q2: label dropout runs with `class_dropout_prob` in eval mode too, and always draws `torch.rand(B)`
  (`forward(drop_labels=False)` turns it off, as `par nll` does);
* Q3: at inference the tokens fed in one step attend to each other bidirectionally (training is causal);
* Q4: one random order per `generate` call, shared by the batch (`SamplingSettings.arpg_order = sample`
  draws one per image); one per sample in training;
* Q6: CFG always doubles the batch, guided = u + (c − u)·s, with a linear (default) or constant scale;
* Q8: the reference sampler never passes top-k / top-p (`arpg_filters = true` applies them).

One deliberate deviation: the reference's `forward()` is causal only in train mode (Q1), so an eval-mode
teacher-forced pass lets query t see its own target. Ours is causal in both modes.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from par.config import SamplingSettings
from par.core.layers import Backbone, FeedForward, RMSNorm, apply_rotary_emb, rope_cell_table
from par.core.sampling import sample_tokens
from par.core.order import arpg_tokens_per_step


def rope_table(cfg) -> torch.Tensor:
    """(N+1, hd/2, 2): row 0 all zeros (class token), row 1 + r·L + c = cell (r, c)'s 2D angles."""
    cells = rope_cell_table(cfg.grid, cfg.head_dim, cfg.rope_base)
    return torch.cat([torch.zeros(1, *cells.shape[1:]), cells])


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    return x.view(*x.shape[:2], n_head, -1)


def _attend(q, k, v, causal: bool, dropout: float) -> torch.Tensor:
    """(B, T, H, hd) inputs → (B, T, H·hd); `causal` on a square (T == S) score matrix."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=causal, dropout_p=dropout)
    return y.transpose(1, 2).flatten(2)


class Cache:
    """Keys/values (B, L, H, hd) appended call by call (the reference concatenates; this preallocates)."""

    def __init__(self, batch: int, length: int, n_head: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, length, n_head, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.len = 0

    def append(self, k, v):
        end = self.len + k.shape[1]
        self.k[:, self.len:end], self.v[:, self.len:end] = k, v
        self.len = end
        return self.k[:, :end], self.v[:, :end]


class SelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.attn_drop = cfg.n_head, cfg.attn_dropout_p
        self.to_q, self.to_k, self.to_v, self.proj = (nn.Linear(cfg.dim, cfg.dim, bias=False) for _ in range(4))
        self.proj_drop = nn.Dropout(cfg.resid_dropout_p)
        self.cache: Cache | None = None

    def forward(self, x, freqs):
        q, k, v = (_heads(f(x), self.n_head) for f in (self.to_q, self.to_k, self.to_v))
        q, k = apply_rotary_emb(q, freqs), apply_rotary_emb(k, freqs)
        if self.cache is not None:  # decoding: every cached key, and this call's own keys with no mask (Q3)
            k, v = self.cache.append(k, v)
        y = _attend(q, k, v, self.cache is None, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(y))


class CrossAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.attn_drop = cfg.n_head, cfg.attn_dropout_p
        self.to_q = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.proj_drop = nn.Dropout(cfg.resid_dropout_p)

    def forward(self, x, k, v, freqs, causal: bool):
        q = apply_rotary_emb(_heads(self.to_q(x), self.n_head), freqs)  # target-aware: the target cell's angles
        return self.proj_drop(self.proj(_attend(q, k, v, causal, self.attn_drop if self.training else 0.0)))


class SelfDecoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn, self.ffn = SelfAttention(cfg), FeedForward(cfg)
        self.attn_norm, self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps), RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, freqs):
        h = x + self.attn(self.attn_norm(x), freqs)
        return h + self.ffn(self.ffn_norm(h))


class CrossDecoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn, self.ffn = CrossAttention(cfg), FeedForward(cfg)
        self.attn_norm, self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps), RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, q, k, v, freqs, causal: bool):
        h = q + self.attn(self.attn_norm(q), k, v, freqs, causal)
        return h + self.ffn(self.ffn_norm(h))


class DecoderDecoder(nn.Module):
    """Self-decoder stack → one shared K/V → cross-decoder stack (reference `Decoder_Decoder`)."""

    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.self_dec = nn.ModuleList(SelfDecoder(cfg) for _ in range(cfg.n_layer // 2))
        self.cross_dec = nn.ModuleList(CrossDecoder(cfg) for _ in range(cfg.n_layer // 2))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.to_k = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.to_v = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.cache: Cache | None = None

    def forward(self, x, q, content_freqs, query_freqs):
        for layer in self.self_dec:
            x = layer(x, content_freqs)
        xn = self.norm(x)
        k = apply_rotary_emb(_heads(self.to_k(xn), self.n_head), content_freqs)
        v = _heads(self.to_v(xn), self.n_head)  # no RoPE on v
        if self.cache is not None:  # decoding: the queries see every content entry fed so far
            k, v = self.cache.append(k, v)
        for layer in self.cross_dec:
            q = layer(q, k, v, query_freqs, self.cache is None)
        return q


class ARPG(Backbone):
    def __init__(self, cfg):
        super().__init__()
        if cfg.order != "arpg":
            raise ValueError(f"ARPG needs order='arpg', got {cfg.order!r}")
        self.config = cfg
        self.order = cfg.order_obj
        self.num_tokens = self.order.num_tokens
        V, C = cfg.vocab_size, cfg.num_classes
        # rows: image tokens 0…V−1 | [MASK] V | class c → V+1+c | null class V+C+1 (label C lands here) | unused
        self.mask_id, self.class_offset, self.null_id = V, V + 1, V + C + 1
        self.embeddings = nn.Embedding(V + 1 + C + 1 + 1, cfg.dim)
        self.embed_drop = nn.Dropout(cfg.token_dropout_p)
        self.layers = DecoderDecoder(cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, V, bias=False)
        self.register_buffer("freqs_cis", rope_table(cfg), persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        self.init_weights(self.head)

    # -- inputs ----------------------------------------------------------------------------------

    def condition_ids(self, labels: torch.Tensor, drop_prob: float) -> torch.Tensor:
        """Embedding rows of the class tokens (B,). `torch.rand(B)` is drawn whatever `drop_prob` (Q2)."""
        drop = torch.rand(labels.shape, device=labels.device) < drop_prob
        return torch.where(drop, self.null_id, labels + self.class_offset)

    def shared(self, content_ids, content_freqs, query_freqs):
        """Logits (B, Q, V) of Q [MASK] queries at `query_freqs` given the content `content_ids`."""
        x = self.embed_drop(self.embeddings(content_ids))
        q = self.embeddings.weight[self.mask_id].expand(content_ids.shape[0], query_freqs.shape[-3], -1)
        return self.head(self.norm(self.layers(x, q, content_freqs, query_freqs))).float()

    # -- training / teacher forcing --------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None,
                orders: torch.Tensor | None = None, drop_labels: bool | None = None):
        """Teacher-forced pass in random orders (the reference's `forward`).

        tokens (B, N) raster codes; labels (B,), the value num_classes = the null class. orders (B, N): the
        permutation per sample, `orders[b, t]` = raster cell generated t-th (default: drawn, one per sample,
        as the reference, after the label-dropout draw). drop_labels: None = the reference (dropout with
        `class_dropout_prob` in any mode, Q2), False = never. Returns logits (B, N, V) in the order's
        positions (row t predicts `tokens[b, orders[b, t]]`) and, with `targets`, the mean cross-entropy."""
        B, N = tokens.shape
        prob = 0.0 if drop_labels is False else self.config.class_dropout_prob
        cond = self.condition_ids(labels, prob)
        if orders is None:
            orders = torch.rand(B, N, device=tokens.device).argsort(dim=1)
        z = tokens.gather(1, orders)
        rows = torch.cat([torch.zeros_like(orders[:, :1]), orders + 1], dim=1)  # RoPE rows: class, then own cells
        freqs = self.freqs_cis[rows]
        logits = self.shared(torch.cat([cond[:, None], z[:, :-1]], dim=1), freqs[:, :-1], freqs[:, 1:])
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.gather(1, orders).flatten())

    # -- cached decoding -------------------------------------------------------------------------

    def setup_caches(self, batch: int, dtype=None):
        p = self.head.weight
        args = (batch, self.num_tokens + 1, self.config.n_head, self.config.head_dim, dtype or p.dtype, p.device)
        for layer in self.layers.self_dec:
            layer.attn.cache = Cache(*args)
        self.layers.cache = Cache(*args)

    def clear_caches(self):
        for layer in self.layers.self_dec:
            layer.attn.cache = None
        self.layers.cache = None

    def decode_step(self, ids, fed_rows, query_rows):
        """One generation call: feed `ids` (B, k) at RoPE rows `fed_rows` into the caches and return the logits
        (B, q, V) of [MASK] queries at `query_rows` (rows of the (N+1)-row table; (q,) or (B, q))."""
        def f(rows):
            t = self.freqs_cis[rows]
            return t if t.dim() == 4 else t.expand(ids.shape[0], *t.shape)
        return self.shared(ids, f(fed_rows), f(query_rows))


def cfg_scales(counts: list[int], num_tokens: int, scale: float, schedule: str) -> list[float]:
    """The CFG scale of each step: `linear` 1 + (g − 1)·(tokens decoded after this step)/N (so the last step
    is exactly g; Q6), or `constant` g."""
    if schedule == "constant":
        return [float(scale)] * len(counts)
    done, out = 0, []
    for k in counts:
        done += k
        out.append(1.0 + (scale - 1.0) * done / num_tokens)
    return out


def draw_orders(model: ARPG, batch: int, per_sample: bool, generator, device) -> torch.Tensor:
    """(B, N) generation orders: first the reference's label-preprocessing draw `torch.rand(B)`, then
    `rand(N).argsort()` shared by the batch (Q4), or one permutation per image."""
    N = model.num_tokens
    torch.rand(batch, generator=generator, device=device)  # consumed as the reference does
    if per_sample:
        return torch.rand(batch, N, generator=generator, device=device).argsort(dim=1)
    return torch.rand(N, generator=generator, device=device).argsort().expand(batch, N)


@torch.no_grad()
def generate(model: ARPG, labels: torch.Tensor, sampling: SamplingSettings = SamplingSettings(),
             generator: torch.Generator | None = None, return_logits: bool = False):
    """ARPG sampling (spec §12.3): `sampling.arpg_steps` calls, `arpg_schedule` tokens per call. Returns raster
    tokens (B, N); with `return_logits` also a record of the run (orders, tokens per step, CFG scales, per-step
    guided / cond / uncond logits, tokens in generation order)."""
    was_training = model.training
    model.eval()
    B, device, N = labels.shape[0], labels.device, model.num_tokens
    orders = draw_orders(model, B, sampling.arpg_order == "sample", generator, device)
    counts = arpg_tokens_per_step(N, sampling.arpg_steps, sampling.arpg_schedule)
    scales = cfg_scales(counts, N, sampling.cfg_scale, sampling.arpg_cfg_schedule)
    pick = sampling if sampling.arpg_filters else dataclasses.replace(sampling, top_k=0, top_p=1.0)
    rows = torch.cat([orders, orders]) + 1  # RoPE rows of both CFG halves
    gen_tokens = torch.zeros(B, N, dtype=torch.long, device=device)
    record = {"guided": [], "cond": [], "uncond": []}
    model.setup_caches(2 * B)  # CFG always doubles the batch (Q6), even at scale 1
    try:
        ids = torch.cat([labels + model.class_offset, torch.full_like(labels, model.null_id)])[:, None]
        fed = torch.zeros(2 * B, 1, dtype=torch.long, device=device)  # the class token's all-zero row
        done = 0
        for k, scale in zip(counts, scales):
            logits = model.decode_step(ids, fed, rows[:, done:done + k])
            cond, uncond = logits.split(B)
            guided = uncond + (cond - uncond) * scale  # the reference's expression, float32 (Q6)
            z = sample_tokens(guided, pick, generator)
            gen_tokens[:, done:done + k] = z
            if return_logits:
                record["guided"].append(guided), record["cond"].append(cond), record["uncond"].append(uncond)
            ids, fed = torch.cat([z, z]), rows[:, done:done + k]  # both halves get the guided choice (Q7)
            done += k
    finally:
        model.clear_caches()
        model.train(was_training)
    raster = torch.empty_like(gen_tokens).scatter_(1, orders, gen_tokens)
    if not return_logits:
        return raster
    return raster, {**record, "orders": orders, "tokens_per_step": counts, "cfg_scale_per_step": scales,
                    "tokens_gen_order": gen_tokens}
