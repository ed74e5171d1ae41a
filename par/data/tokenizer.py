"""LlamaGen VQ-16 image tokenizer (`vq_ds16_c2i`), exact to the reference `tokenizer/tokenizer_image/vq_model.py`.

Images in [-1, 1] -> conv encoder (downsample 2**(len(ch_mult)-1)) -> 1x1 `quant_conv` -> L2-normalised
nearest-codebook quantiser -> 1x1 `post_quant_conv` -> conv decoder. Module and buffer names reproduce
the reference state dict key-for-key and in order (spec §10, Appendix A), so released checkpoints load
with `strict=True`.

Training (`VQModel.forward`) gives the reconstruction plus the reference's VQ losses: L2 reconstruction,
codebook loss, beta-weighted commitment loss (straight-through estimator) and the optional entropy loss.
The reference's adversarial (PatchGAN) and perceptual (LPIPS) terms are left out on purpose: their
pretrained weights cannot be had offline, so this trains a plain VQ-VAE.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from par.errors import UserError
from par.io import torch_load, torch_save

CODEBOOK_LOG_LEN = 65536  # length of the reference's `codebook_used` usage log (a state-dict buffer)


@dataclass
class VQConfig:
    # reference `ModelArgs` field names; defaults = the released VQ-16 (vq_ds16_c2i)
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    dropout_p: float = 0.0
    # encoder/decoder constructor arguments (fixed defaults in the reference `VQ_16`)
    ch: int = 128
    enc_res_blocks: int = 2  # ResBlocks per encoder level
    dec_res_blocks: int = 3  # ResBlocks per decoder level (reference: num_res_blocks + 1)

    def __post_init__(self):
        self.encoder_ch_mult = tuple(self.encoder_ch_mult)
        self.decoder_ch_mult = tuple(self.decoder_ch_mult)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    @classmethod
    def from_golden_config(cls, cfg: dict) -> "VQConfig":
        """Build from a golden `config.json` (`model_args` + `encoder_decoder_args`)."""
        if "model_args" not in cfg:
            raise UserError("VQ config: no 'model_args' section; pass a golden-format config.json")
        ed = cfg.get("encoder_decoder_args", {})
        # Only the reference's fixed architecture choices are implemented; refuse anything else loudly.
        fixed = {"in_channels": 3, "out_channels": 3, "norm_type": "group", "group_norm_groups": 32,
                 "group_norm_eps": 1e-6, "resamp_with_conv": True, "attn_at_lowest_resolution": True}
        for k, want in fixed.items():
            if k in ed and ed[k] != want:
                raise UserError(f"VQ config: encoder_decoder_args.{k}={ed[k]!r} is not supported "
                                f"(only {want!r}); fix the config")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in cfg["model_args"].items() if k in names}
        kw["ch"] = ed.get("ch", cls.ch)
        kw["enc_res_blocks"] = ed.get("num_res_blocks_encoder", cls.enc_res_blocks)
        kw["dec_res_blocks"] = ed.get("res_blocks_per_level_decoder", cls.dec_res_blocks)
        return cls(**kw)


# ----------------------------------------------------------------------------- building blocks

def swish(x):
    return x * torch.sigmoid(x)


def Normalize(c):
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in, c_out, dropout=0.0):
        super().__init__()
        self.norm1 = Normalize(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = Normalize(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with a residual."""

    def __init__(self, c):
        super().__init__()
        self.norm = Normalize(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q = self.q(h).reshape(b, c, hh * ww).permute(0, 2, 1)  # b, hw, c
        k = self.k(h).reshape(b, c, hh * ww)  # b, c, hw
        v = self.v(h).reshape(b, c, hh * ww)
        w = F.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # [b, query, key]
        h = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad (right, bottom), as the reference


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(c_in, c_out, n_res, attn, dropout):
    """One resolution level: `res` ResBlocks, plus an AttnBlock after each one at the lowest resolution."""
    block = nn.Module()
    block.res = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, dropout) for i in range(n_res))
    block.attn = nn.ModuleList(AttnBlock(c_out) for _ in range(n_res if attn else 0))
    return block


def _run_level(block, h):
    for i, res in enumerate(block.res):
        h = res(h)
        if len(block.attn):
            h = block.attn[i](h)
    return h


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.encoder_ch_mult
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        c_in = ch
        for i, m in enumerate(mult):
            last = i == len(mult) - 1
            block = _level(c_in, ch * m, cfg.enc_res_blocks, attn=last, dropout=cfg.dropout_p)
            c_in = ch * m
            if not last:
                block.downsample = Downsample(c_in)
            self.conv_blocks.append(block)
        self.mid = nn.ModuleList([ResnetBlock(c_in, c_in, cfg.dropout_p), AttnBlock(c_in),
                                  ResnetBlock(c_in, c_in, cfg.dropout_p)])
        self.norm_out = Normalize(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.conv_blocks:
            h = _run_level(block, h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """`conv_blocks.0` is the lowest-resolution (widest) level, with attention; upsample after all but the last."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.decoder_ch_mult
        c_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(c_in, c_in, cfg.dropout_p), AttnBlock(c_in),
                                  ResnetBlock(c_in, c_in, cfg.dropout_p)])
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(len(mult))):
            block = _level(c_in, ch * mult[i], cfg.dec_res_blocks, attn=i == len(mult) - 1,
                           dropout=cfg.dropout_p)
            c_in = ch * mult[i]
            if i != 0:
                block.upsample = Upsample(c_in)
            self.conv_blocks.append(block)
        self.norm_out = Normalize(c_in)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for block in self.conv_blocks:
            h = _run_level(block, h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


def entropy_loss(affinity, temperature=0.01):
    """Reference `compute_entropy_loss`: per-sample entropy minus entropy of the batch-mean code distribution."""
    logits = affinity.reshape(-1, affinity.shape[-1]) / temperature
    probs = F.softmax(logits, dim=-1)
    log_probs = F.log_softmax(logits + 1e-5, dim=-1)
    avg_probs = probs.mean(dim=0)
    avg_entropy = -torch.sum(avg_probs * torch.log(avg_probs + 1e-5))
    sample_entropy = -torch.mean(torch.sum(probs * log_probs, dim=-1))
    return sample_entropy - avg_entropy


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        # Registered before `embedding` so the state-dict order matches the reference (buffer, then child).
        if cfg.codebook_show_usage:
            self.register_buffer("codebook_used", torch.zeros(CODEBOOK_LOG_LEN))
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_embed_dim)
        self.reset_parameters()

    def reset_parameters(self):
        w = self.embedding.weight.data
        w.uniform_(-1.0 / self.cfg.codebook_size, 1.0 / self.cfg.codebook_size)
        if self.cfg.codebook_l2_norm:
            w.copy_(F.normalize(w, p=2, dim=-1))

    def codebook(self):
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.cfg.codebook_l2_norm else w

    def distances(self, z_flat, emb):
        # same expression (and rounding) as the reference: |z|^2 + |e|^2 - 2 z.e
        return (z_flat.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1)
                - 2 * torch.einsum("bd,dn->bn", z_flat, emb.t()))

    def forward(self, z):
        """z (B, D, h, w) -> (z_q with straight-through grads (B, D, h, w), codes (B, h*w), losses dict)."""
        b, _, h, w = z.shape
        z = z.permute(0, 2, 3, 1).reshape(-1, self.cfg.codebook_embed_dim)  # rows in (b, h, w) order
        if self.cfg.codebook_l2_norm:
            z = F.normalize(z, p=2, dim=-1)
        emb = self.codebook()
        d = self.distances(z, emb)
        idx = torch.argmin(d, dim=1)
        z_q = emb[idx]
        if self.training and self.cfg.codebook_show_usage:
            self._log_usage(idx)
        losses = {
            "codebook": torch.mean((z_q - z.detach()) ** 2),
            "commit": self.cfg.commit_loss_beta * torch.mean((z_q.detach() - z) ** 2),
            "entropy": (self.cfg.entropy_loss_ratio * entropy_loss(-d) if self.cfg.entropy_loss_ratio
                        else d.new_zeros(())),  # skip the (B*h*w, K) softmax when unused
        }
        z_q = z + (z_q - z).detach()  # straight-through estimator
        z_q = z_q.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return z_q, idx.reshape(b, h * w), losses

    @torch.no_grad()
    def _log_usage(self, idx):
        # rolling log of the most recent code indices, exactly like the reference's shift-and-append
        log, n = self.codebook_used, min(idx.numel(), CODEBOOK_LOG_LEN)
        log.copy_(torch.cat([log[n:], idx[-n:].to(log.dtype)]))

    def lookup(self, codes, grid):
        """codes (B, h*w) raster -> channel-first (B, D, h, w) normalised codebook rows."""
        h, w = grid
        return self.codebook()[codes].reshape(codes.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or VQConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    def encode(self, images):
        """images (B, 3, H, W) in [-1, 1] -> (quant (B, D, H/16, W/16), codes (B, h*w) int64 raster)."""
        quant, codes, _ = self.quantize(self.quant_conv(self.encoder(images)))
        return quant, codes

    def decode(self, quant):
        return self.decoder(self.post_quant_conv(quant))

    def decode_codes(self, codes, grid=None):
        """codes (B, h*w) raster -> images (B, 3, 16h, 16w); grid (h, w) defaults to a square."""
        if grid is None:
            side = math.isqrt(codes.shape[1])
            if side * side != codes.shape[1]:
                raise ValueError(f"{codes.shape[1]} codes is not a square grid; pass grid=(h, w)")
            grid = (side, side)
        return self.decode(self.quantize.lookup(codes, grid))

    def forward(self, images):
        """-> (reconstruction, losses): recon (L2), codebook, commit, entropy and their sum `loss`."""
        quant, _, losses = self.quantize(self.quant_conv(self.encoder(images)))
        recon = self.decode(quant)
        losses = {"recon": F.mse_loss(recon, images), **losses}
        losses["loss"] = sum(losses.values())
        return recon, losses

    @torch.no_grad()
    def codebook_usage(self) -> float:
        """Fraction of the codebook seen in the rolling usage log (recent training batches), as the reference.

        Like the reference, the log starts as zeros, so code 0 counts as used until the log has filled."""
        if not self.cfg.codebook_show_usage:
            raise ValueError("codebook usage is not logged (codebook_show_usage=False)")
        return torch.unique(self.quantize.codebook_used).numel() / self.cfg.codebook_size


# ----------------------------------------------------------------------------- checkpoints

def load_vq(path, config: VQConfig | None = None) -> VQModel:
    """Load a VQ checkpoint ({"model"|"state_dict"|"module": sd} or a bare sd) strictly, in eval mode.

    The config comes from `config`, else the file's stored "config" (written by `save_vq`), else VQ-16."""
    path = pathlib.Path(path)
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: expected a dict (state dict or {{'model': state_dict}}), "
                        f"got {type(ckpt).__name__}; re-save the checkpoint")
    sd = next((ckpt[k] for k in ("model", "state_dict", "module") if isinstance(ckpt.get(k), dict)), ckpt)
    if config is None:
        try:
            config = VQConfig(**ckpt["config"]) if isinstance(ckpt.get("config"), dict) else VQConfig()
        except TypeError as e:
            raise UserError(f"{path}: stored 'config' is not a VQConfig ({e}); pass config= explicitly") from None
    model = VQModel(config)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise UserError(f"{path}: state dict does not match the VQ architecture (missing {missing[:3]}"
                        f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                        f"{'...' if len(unexpected) > 3 else ''}); pass the matching VQ config or checkpoint")
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        k, got, want = bad[0]
        raise UserError(f"{path}: {len(bad)} tensor shape(s) differ from the VQ config, e.g. {k} {got} vs "
                        f"{want}; pass the matching VQ config or checkpoint")
    model.load_state_dict(sd, strict=True)
    return model.eval()


def save_vq(model: VQModel, path) -> None:
    """Write {"model": state_dict, "config": asdict(cfg)} atomically (temp file in the same dir + os.replace)."""
    cfg = dataclasses.asdict(model.cfg)
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}  # plain types for weights_only
    torch_save({"model": model.state_dict(), "config": cfg}, path)


# ----------------------------------------------------------------------------- golden checks

def golden_checks(vq_dir, atol: float = 1e-4) -> list[tuple[str, bool, str]]:
    """Compare against a golden VQ directory (config.json, model.pt, vq.npz; golden README §4).

    Returns (check, passed, detail) per array; codes must be identical, real arrays within `atol`."""
    vq_dir = pathlib.Path(vq_dir)
    for name in ("config.json", "model.pt", "vq.npz"):
        if not (vq_dir / name).is_file():
            raise UserError(f"{vq_dir / name}: missing; point at a golden VQ directory (config.json, model.pt, vq.npz)")
    cfg = VQConfig.from_golden_config(json.loads((vq_dir / "config.json").read_text()))
    try:
        model = load_vq(vq_dir / "model.pt", cfg)
    except UserError as e:
        return [("load_strict", False, str(e))]
    ref = np.load(vq_dir / "vq.npz")
    images = torch.from_numpy(ref["images"])
    codes_ref = torch.from_numpy(ref["codes"])
    grid = tuple(ref["latents"].shape[2:])
    q = model.quantize
    with torch.no_grad():
        enc = model.encoder(images)
        lat = model.quant_conv(enc)
        quant, codes = model.encode(images)
        z = F.normalize(lat.permute(0, 2, 3, 1).reshape(-1, cfg.codebook_embed_dim), dim=-1)
        got = {
            "encoder_out": enc, "latents": lat, "codes": codes, "quant": quant,
            "quant_from_codes": q.lookup(codes_ref, grid), "codebook_l2": q.codebook(),
            "distances": q.distances(z, q.codebook()),
            "decoded": model.decode_codes(codes_ref, grid), "reconstruction": model(images)[0],
        }
    out = [("load_strict", True, f"{len(model.state_dict())} tensors, strict=True")]
    for name, t in got.items():
        t, want = t.numpy(), ref[name]
        if t.shape != want.shape:
            out.append((name, False, f"shape {t.shape} != golden {want.shape}"))
        elif name == "codes":  # integer codes must match exactly
            n_bad = int((t != want).sum())
            out.append((name, n_bad == 0, f"{n_bad}/{want.size} codes differ"))
        else:
            err = float(np.abs(t - want).max())
            out.append((name, err <= atol, f"max abs err {err:.2e} (atol {atol:g})"))
    return out
