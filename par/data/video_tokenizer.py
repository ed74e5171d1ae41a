"""A MAGVIT-v2-style video tokenizer (Yu et al. 2023, arXiv 2310.05737): causal 3D CNN + lookup-free quantization.

PAR's video experiment (arXiv 2412.15119 §4) re-implements MAGVIT-v2 for UCF-101: 17 frames at 128×128 →
5×16×16 = 1280 tokens (8× spatial, 4× temporal), vocabulary 2^16 = 65,536. This module is that tokenizer, sized by
`VideoVQConfig` (`PRESETS`: tiny / small for the CPU presets, paper for the GPU run).

Architecture (clips (B, 3, T, H, W) in [−1, 1]):

* Causal 3D convolutions: every 3×3×3 convolution pads k_t − 1 = 2 frames before the clip and none after (space is
  zero-padded on both sides as usual), so output frame t sees input frames ≤ t only. The past padding repeats the
  first frame (`pad_mode="replicate"`, default: the first frame is coded as a still clip of itself) or is zeros
  (`pad_mode="zeros"`). Normalisation is GroupNorm computed per frame (statistics over channels-in-group × H × W
  of each frame, never over time), since a GroupNorm over (T, H, W) would let later frames leak into earlier ones.
* Encoder: conv_in, then per level `res_blocks` ResBlocks (GroupNorm → SiLU → causal conv, twice, plus a skip);
  between levels a strided causal conv halves H and W, and also T where `temporal_downsample` says so (stride 2 in
  time with the 2-frame past padding: output j sees input frames ≤ 2j, so T = 1 + 2k → 1 + k). Two ResBlocks at the
  widest level, GroupNorm, SiLU and a conv to `bits` channels. The first frame is therefore coded alone:
  T = 1 + 4k → 1 + k latent frames (17 → 5), and latent frame j depends on input frames ≤ 4j only.
* LFQ (par.data.lfq): q = sign(z) per channel, id = Σ bit_i 2^i, straight-through, commitment + entropy losses.
* Decoder mirrors the encoder: conv_in, two ResBlocks, then per level ResBlocks and a depth-to-space upsampling
  (a causal conv to c·s_t·2·2 channels rearranged into s_t frames and 2×2 pixels, initialised so that it starts
  as nearest-neighbour upsampling; where time is upsampled the first frame of the result is dropped, so
  1 + k → 1 + 2k and the first latent frame decodes to the first frame alone: 5 → 9 → 17). Decoded frames ≤ 4j
  depend on latent frames ≤ j only.

Left out, on purpose, for the CPU presets: MAGVIT-v2's adaptive GroupNorm in the decoder, its GAN and perceptual
(LPIPS / I3D) losses, and LeCam regularisation — training here is reconstruction (L2 or L1) + LFQ losses only, so
reconstructions are blurrier than the paper's (its rFVD 32 is not a target of the CPU runs).

Checkpoints: `save_video_vq` writes {"kind": "video_lfq", "model": state_dict, "config": asdict(VideoVQConfig)}
atomically; `load_video_vq` reads it with torch.load(weights_only=True) (par.io.torch_load) and strict key and
shape checks. `train_video_tokenizer` trains one from uint8 clips and writes the checkpoint and a metrics JSON.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from par.data.lfq import LFQ
from par.config import VideoVQTrainJob, VideoVQTrainSettings, add_arguments, from_args
from par.errors import UserError
from par.io import torch_load, torch_save, write_json

KIND = "video_lfq"
CKPT_NAME = "video_vq.pt"
METRICS_NAME = "video_vq_metrics.json"


@dataclass
class VideoVQConfig:
    """Architecture and quantizer losses of a `VideoTokenizer`; defaults = the PAR paper's UCF-101 tokenizer."""

    bits: int = 16  # LFQ latent channels; vocabulary 2^bits
    ch: int = 128  # base width
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)  # width multiplier per level; spatial downsampling 2^(levels − 1)
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # per level transition: also halve T there
    res_blocks: int = 4  # ResBlocks per level (encoder and decoder)
    in_channels: int = 3
    norm_groups: int = 32  # GroupNorm groups (gcd with the width, so any width works)
    pad_mode: str = "replicate"  # causal temporal padding: "replicate" (first frame) or "zeros"
    commit_beta: float = 0.25
    entropy_weight: float = 0.1
    entropy_sample_weight: float = 1.0
    entropy_batch_weight: float = 1.0
    entropy_temperature: float = 0.01
    entropy_exact_bits: int = 10  # codebook entropy exact over 2^bits codes up to this, else sub-groups

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.temporal_downsample = tuple(bool(t) for t in self.temporal_downsample)
        if len(self.temporal_downsample) != len(self.ch_mult) - 1:
            raise ValueError(f"temporal_downsample has {len(self.temporal_downsample)} entries; need one per "
                             f"level transition ({len(self.ch_mult) - 1} for ch_mult {self.ch_mult})")
        if self.pad_mode not in ("replicate", "zeros"):
            raise ValueError(f"pad_mode={self.pad_mode!r}: choose 'replicate' or 'zeros'")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def vocab_size(self) -> int:
        return 2 ** self.bits

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the token grid of a clip; T must be 1 + k · temporal_factor, H and W multiples of
        spatial_factor."""
        tf, sf = self.temporal_factor, self.spatial_factor
        if frames < 1 or (frames - 1) % tf or height % sf or width % sf:
            raise ValueError(f"clip {frames}×{height}×{width}: need T = 1 + k·{tf} frames and H, W multiples of {sf}")
        return 1 + (frames - 1) // tf, height // sf, width // sf


# sizes: tiny / small for the CPU presets (e.g. 64×64 moving Fashion-MNIST clips), paper = PAR's UCF-101 tokenizer
PRESETS = {
    "tiny": dict(bits=10, ch=8, ch_mult=(1, 2, 2, 4), temporal_downsample=(False, True, True), res_blocks=1),
    "small": dict(bits=12, ch=16, ch_mult=(1, 2, 2, 4), temporal_downsample=(False, True, True), res_blocks=2),
    "paper": dict(bits=16, ch=128, ch_mult=(1, 2, 2, 4), temporal_downsample=(False, True, True), res_blocks=4),
}


# ----------------------------------------------------------------------------- building blocks

class CausalConv3d(nn.Module):
    """Conv3d that pads k_t − 1 frames before the clip (first frame repeated, or zeros) and none after."""

    def __init__(self, c_in, c_out, kernel=3, stride=(1, 1, 1), pad_mode="replicate"):
        super().__init__()
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        self.pad_t, self.pad_mode = kt - 1, pad_mode
        self.conv = nn.Conv3d(c_in, c_out, (kt, kh, kw), stride=stride, padding=(0, kh // 2, kw // 2))

    def forward(self, x):
        if self.pad_t:
            first = x[:, :, :1]
            pad = first.expand(-1, -1, self.pad_t, -1, -1) if self.pad_mode == "replicate" else \
                torch.zeros_like(first).expand(-1, -1, self.pad_t, -1, -1)
            x = torch.cat([pad, x], dim=2)
        return self.conv(x)


class FrameGroupNorm(nn.Module):
    """GroupNorm with statistics per frame (over the group's channels × H × W), so it never mixes frames."""

    def __init__(self, c, groups=32, eps=1e-6):
        super().__init__()
        self.groups, self.eps = math.gcd(groups, c), eps
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        b, c, t, h, w = x.shape  # frames into the batch: F.group_norm's fused kernel, 2-3× the speed of var_mean
        y = F.group_norm(x.transpose(1, 2).reshape(b * t, c, h, w), self.groups, self.weight, self.bias, self.eps)
        return y.view(b, t, c, h, w).transpose(1, 2)


class ResBlock3d(nn.Module):
    def __init__(self, c_in, c_out, groups, pad_mode):
        super().__init__()
        self.norm1 = FrameGroupNorm(c_in, groups)
        self.conv1 = CausalConv3d(c_in, c_out, 3, pad_mode=pad_mode)
        self.norm2 = FrameGroupNorm(c_out, groups)
        self.conv2 = CausalConv3d(c_out, c_out, 3, pad_mode=pad_mode)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample3d(nn.Module):
    """Strided causal 3×3×3 conv: H, W halved; T = 1 + 2k → 1 + k when `time` (output j sees frames ≤ 2j)."""

    def __init__(self, c, time: bool, pad_mode):
        super().__init__()
        self.conv = CausalConv3d(c, c, 3, stride=(2 if time else 1, 2, 2), pad_mode=pad_mode)

    def forward(self, x):
        return self.conv(x)


class Upsample3d(nn.Module):
    """Depth-to-space: causal conv to c·s_t·4 channels → s_t frames × 2×2 pixels each; with `time` the first
    frame of the result is dropped (1 + k → 1 + 2k), so the first frame still comes from the first latent alone."""

    def __init__(self, c, time: bool, pad_mode):
        super().__init__()
        self.c, self.st = c, 2 if time else 1
        r = self.st * 4
        self.conv = CausalConv3d(c, c * r, 3, pad_mode=pad_mode)
        with torch.no_grad():  # ICNR-style: every sub-position starts equal → nearest-neighbour upsampling
            self.conv.conv.weight.copy_(self.conv.conv.weight[::r].repeat_interleave(r, dim=0))
            self.conv.conv.bias.copy_(self.conv.conv.bias[::r].repeat_interleave(r, dim=0))

    def forward(self, x):
        h = self.conv(x)
        b, _, t, hh, ww = h.shape
        h = h.view(b, self.c, self.st, 2, 2, t, hh, ww).permute(0, 1, 5, 2, 6, 3, 7, 4)
        h = h.reshape(b, self.c, t * self.st, 2 * hh, 2 * ww)
        return h[:, :, self.st - 1:] if self.st > 1 else h


def _level(c_in, c_out, n, groups, pad_mode):
    return nn.ModuleList(ResBlock3d(c_in if i == 0 else c_out, c_out, groups, pad_mode) for i in range(n))


class Encoder3d(nn.Module):
    def __init__(self, cfg: VideoVQConfig):
        super().__init__()
        g, pm = cfg.norm_groups, cfg.pad_mode
        self.conv_in = CausalConv3d(cfg.in_channels, cfg.ch, 3, pad_mode=pm)
        self.levels = nn.ModuleList()
        self.down = nn.ModuleList()
        c = cfg.ch
        for i, m in enumerate(cfg.ch_mult):
            self.levels.append(_level(c, cfg.ch * m, cfg.res_blocks, g, pm))
            c = cfg.ch * m
            if i < len(cfg.ch_mult) - 1:
                self.down.append(Downsample3d(c, cfg.temporal_downsample[i], pm))
        self.mid = _level(c, c, 2, g, pm)
        self.norm_out = FrameGroupNorm(c, g)
        self.conv_out = CausalConv3d(c, cfg.bits, 3, pad_mode=pm)

    def forward(self, x):
        h = self.conv_in(x)
        for i, level in enumerate(self.levels):
            for block in level:
                h = block(h)
            if i < len(self.down):
                h = self.down[i](h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder3d(nn.Module):
    def __init__(self, cfg: VideoVQConfig):
        super().__init__()
        g, pm = cfg.norm_groups, cfg.pad_mode
        c = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = CausalConv3d(cfg.bits, c, 3, pad_mode=pm)
        self.mid = _level(c, c, 2, g, pm)
        self.levels = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(len(cfg.ch_mult))):  # widest (lowest resolution) level first
            self.levels.append(_level(c, cfg.ch * cfg.ch_mult[i], cfg.res_blocks, g, pm))
            c = cfg.ch * cfg.ch_mult[i]
            if i > 0:
                self.up.append(Upsample3d(c, cfg.temporal_downsample[i - 1], pm))
        self.norm_out = FrameGroupNorm(c, g)
        self.conv_out = CausalConv3d(c, cfg.in_channels, 3, pad_mode=pm)

    def forward(self, z):
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for i, level in enumerate(self.levels):
            for block in level:
                h = block(h)
            if i < len(self.up):
                h = self.up[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------- the tokenizer

def clips_to_tensor(clips) -> torch.Tensor:
    """uint8 clips (B, T, H, W, C) (numpy or torch; (B, T, H, W) grey gets C = 1) → float (B, C, T, H, W) in
    [−1, 1]."""
    x = torch.as_tensor(np.asarray(clips) if not isinstance(clips, torch.Tensor) else clips)
    if x.dtype != torch.uint8:
        raise ValueError(f"clips of dtype {x.dtype}: expected uint8 (B, T, H, W, C)")
    if x.ndim == 4:
        x = x[..., None]
    if x.ndim != 5:
        raise ValueError(f"clips of shape {tuple(x.shape)}: expected (B, T, H, W, C) uint8")
    return x.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0).contiguous()


def tensor_to_clips(x) -> np.ndarray:
    """float (B, C, T, H, W) in [−1, 1] → uint8 (B, T, H, W, C)."""
    return torch.clamp(127.5 * x.detach().float() + 128, 0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


class VideoTokenizer(nn.Module):
    """Causal 3D CNN encoder → LFQ → causal 3D CNN decoder. Clips are float (B, C, T, H, W) in [−1, 1] (or uint8
    (B, T, H, W, C), converted); tokens are int64 ids (B, t, h, w) in 0..2^bits − 1."""

    def __init__(self, cfg: VideoVQConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or VideoVQConfig()
        self.encoder = Encoder3d(cfg)
        self.quantize = LFQ(cfg.bits, cfg.commit_beta, cfg.entropy_weight, cfg.entropy_sample_weight,
                            cfg.entropy_batch_weight, cfg.entropy_temperature, cfg.entropy_exact_bits)
        self.decoder = Decoder3d(cfg)

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def _input(self, clips):
        x = clips if isinstance(clips, torch.Tensor) else torch.as_tensor(np.asarray(clips))
        x = clips_to_tensor(x) if x.dtype == torch.uint8 else x.float()
        x = x.to(next(self.parameters()).device)
        if x.ndim != 5 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"clips of shape {tuple(x.shape)}: expected (B, {self.cfg.in_channels}, T, H, W)")
        self.cfg.latent_shape(*x.shape[2:])  # validates T, H, W
        return x

    def encode_latent(self, clips):
        """The encoder's continuous latent z (B, bits, t, h, w), before quantization."""
        return self.encoder(self._input(clips))

    def encode(self, clips):
        """clips → token ids (B, t, h, w); t = 1 + (T − 1) / temporal_factor, h = H / spatial_factor."""
        return self.quantize.ids(self.encode_latent(clips))

    def codes_to_latent(self, ids):
        return self.quantize.codes_to_latent(ids)

    def decode(self, q):
        return self.decoder(q)

    def decode_codes(self, ids):
        """ids (B, t, h, w) → clips float (B, C, 1 + (t − 1)·temporal_factor, h·s, w·s), about [−1, 1]."""
        return self.decoder(self.codes_to_latent(ids.to(next(self.parameters()).device)))

    def forward(self, clips, recon_loss: str = "l2"):
        """-> (reconstruction, losses): recon (L2 or L1), commit, entropy, their sum `loss`, plus the unweighted
        sample_entropy / codebook_entropy (nats) for the log."""
        x = self._input(clips)
        q, _, qlosses = self.quantize(self.encoder(x))
        recon = self.decoder(q)
        rec = F.mse_loss(recon, x) if recon_loss == "l2" else F.l1_loss(recon, x)
        losses = {"recon": rec, **qlosses}
        losses["loss"] = rec + qlosses["commit"] + qlosses.get("entropy", rec.new_zeros(()))
        return recon, losses


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- checkpoints

def _plain_config(cfg: VideoVQConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def save_video_vq(model: VideoTokenizer, path) -> None:
    """Write {"kind": "video_lfq", "model": state_dict, "config": plain dict} atomically (par.io.torch_save)."""
    torch_save({"kind": KIND, "model": model.state_dict(), "config": _plain_config(model.cfg)}, path)


def load_video_vq(path, config: VideoVQConfig | None = None) -> VideoTokenizer:
    """Load a `save_video_vq` checkpoint (torch.load weights_only=True) strictly, in eval mode; the config comes
    from `config`, else the file's own."""
    path = Path(path)
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise UserError(f"{path}: not a video tokenizer checkpoint (expected {{'kind', 'model', 'config'}})")
    if ckpt.get("kind") != KIND:
        raise UserError(f"{path}: checkpoint kind {ckpt.get('kind')!r}, expected {KIND!r} (an image VQ "
                        f"checkpoint? load it with par.data.tokenizer.load_vq)")
    if config is None:
        try:
            config = VideoVQConfig(**ckpt["config"])
        except (TypeError, ValueError, KeyError) as e:
            raise UserError(f"{path}: stored 'config' is not a VideoVQConfig ({e}); pass config= explicitly") from None
    model = VideoTokenizer(config)
    own, sd = model.state_dict(), ckpt["model"]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise UserError(f"{path}: state dict does not match the video tokenizer (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}); pass the matching config or checkpoint")
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        k, got, want = bad[0]
        raise UserError(f"{path}: {len(bad)} tensor shape(s) differ from the config, e.g. {k} {got} vs {want}")
    model.load_state_dict(sd, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- synthetic clips

def moving_squares(n: int, frames: int, size: int, seed: int = 0, squares: int = 2) -> np.ndarray:
    """uint8 (n, frames, size, size, 3): coloured squares moving at constant velocity, bouncing off the edges, on
    a dark background; clip i depends only on (seed, i). A smoke-test set, not a benchmark."""
    out = np.zeros((n, frames, size, size, 3), np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        out[i] = rng.integers(0, 40, 3, dtype=np.uint8)
        for _ in range(squares):
            s = int(rng.integers(max(2, size // 6), max(3, size // 3) + 1))
            pos = rng.uniform(0, size - s, 2)
            vel = rng.uniform(-size / 10, size / 10, 2)
            color = rng.integers(80, 256, 3, dtype=np.uint8)
            for t in range(frames):
                y, x = (int(round(v)) for v in pos)
                out[i, t, y:y + s, x:x + s] = color
                pos = pos + vel
                for d in range(2):  # reflect at the walls
                    if pos[d] < 0 or pos[d] > size - s:
                        vel[d] = -vel[d]
                        pos[d] = min(max(pos[d], 0.0), size - s)
    return out


# ----------------------------------------------------------------------------- training

def _ints(s) -> tuple[int, ...]:
    return tuple(int(v) for v in str(s).split(",")) if isinstance(s, str) else tuple(int(v) for v in s)


def config_from_settings(settings: VideoVQTrainSettings, in_channels: int = 3) -> VideoVQConfig:
    """The network of a `par train-video-vq` run."""
    return VideoVQConfig(bits=settings.bits, ch=settings.ch, ch_mult=_ints(settings.ch_mult),
                         temporal_downsample=tuple(bool(v) for v in _ints(settings.temporal_downsample)),
                         res_blocks=settings.res_blocks, in_channels=in_channels, pad_mode=settings.pad_mode,
                         commit_beta=settings.commit_beta, entropy_weight=settings.entropy_weight,
                         entropy_temperature=settings.entropy_temperature,
                         entropy_exact_bits=settings.entropy_exact_bits)


@torch.no_grad()
def evaluate_video_vq(model: VideoTokenizer, clips_uint8: np.ndarray, frames: int, batch_size: int = 8) -> dict:
    """Held-out reconstruction through the tokens (encode → ids → decode_codes) of the first `frames` frames:
    PSNR (peak-to-peak 2 in [−1, 1], per clip over all its frames, then averaged) with its standard error, PSNR per
    frame, MSE, the share of the vocabulary used and the entropy of the code histogram (bits)."""
    model.eval()
    mses, frame_mse, ids_all = [], [], []
    for i in range(0, len(clips_uint8), batch_size):
        x = clips_to_tensor(clips_uint8[i:i + batch_size, :frames]).to(next(model.parameters()).device)
        ids = model.encode(x)
        recon = model.decode_codes(ids).clamp(-1, 1)
        err = (recon - x) ** 2
        mses.append(err.mean(dim=(1, 2, 3, 4)).cpu())
        frame_mse.append(err.mean(dim=(1, 3, 4)).cpu())  # (B, T)
        ids_all.append(ids.flatten().cpu())
    mse, fmse, ids = torch.cat(mses), torch.cat(frame_mse), torch.cat(ids_all)
    psnr = 10 * torch.log10(4.0 / mse)
    counts = torch.bincount(ids, minlength=model.vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return {"psnr_db": psnr.mean().item(), "psnr_db_se": psnr.std().item() / math.sqrt(len(psnr)) if len(psnr) > 1
            else 0.0, "psnr_per_frame_db": (10 * torch.log10(4.0 / fmse)).mean(0).tolist(),
            "clips": len(mse), "mse": mse.mean().item(), "codebook_usage": int((counts > 0).sum()) / model.vocab_size,
            "code_entropy_bits": float(-(p * p.log2()).sum())}


def train_video_tokenizer(clips, settings, out, test_clips=None) -> dict:
    """Train a VideoTokenizer on uint8 clips (N, T, H, W, C) (C = 3, or grey (N, T, H, W)); the last
    `settings.heldout` clips of a seeded shuffle are held out. Adam (β = 0.9, 0.95), cosine LR, batches of random
    `settings.frames`-frame windows (random horizontal flips with `flip`), loss = recon (L2/L1) + commitment +
    entropy. No GAN / perceptual loss. Windows shorter than the clips make a step cheaper (9 frames: half of 17's
    cost); the metrics are always on whole clips, the length the tokenizer codes downstream. Writes
    out/video_vq.pt and out/video_vq_metrics.json (atomic); returns the metrics (held-out PSNR before/after, and
    on `test_clips` if given)."""
    clips = np.asarray(clips)
    if clips.ndim == 4:
        clips = clips[..., None]
    if clips.ndim != 5 or clips.dtype != np.uint8:
        raise UserError(f"video clips: expected uint8 (N, T, H, W, C), got {clips.dtype} {clips.shape}")
    n, t_all, hh, ww, c = clips.shape
    frames = settings.frames or t_all
    out = Path(out)
    torch.manual_seed(settings.seed)
    cfg = config_from_settings(settings, in_channels=c)
    if frames > t_all:
        raise UserError(f"--frames {frames}: the clips have only {t_all} frames")
    try:  # trained on `frames`-frame windows; the causal encoder codes any 1 + k·factor frames, whole clips included
        cfg.latent_shape(frames, hh, ww)
        grid = cfg.latent_shape(t_all, hh, ww)
    except ValueError as e:
        raise UserError(f"video tokenizer: {e}") from None
    if n <= settings.heldout:
        raise UserError(f"{n} clips, need more than --heldout {settings.heldout}")
    clips = clips[np.random.default_rng(settings.seed).permutation(n)]
    train_x, held_x = clips[:n - settings.heldout], clips[n - settings.heldout:]
    from par.devices import resolve

    device = resolve(settings.device)
    model = VideoTokenizer(cfg).to(device)
    before = evaluate_video_vq(model, held_x, t_all)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(settings.seed)
    t0, log = time.perf_counter(), []
    from par.progress import progress

    model.train()
    for step in progress(range(settings.steps), "train-vq --video"):
        lr = settings.lr * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(train_x), (settings.batch_size,), generator=gen).numpy()
        start = int(torch.randint(0, t_all - frames + 1, (), generator=gen))
        x = clips_to_tensor(train_x[idx, start:start + frames]).to(device)
        if settings.flip and torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        _, losses = model(x, recon_loss=settings.recon_loss)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        if (step + 1) % max(1, settings.steps // 20) == 0:
            log.append({"step": step + 1, "lr": lr, **{k: v.item() for k, v in losses.items()}})
    seconds = time.perf_counter() - t0
    after = evaluate_video_vq(model, held_x, t_all)
    if test_clips is not None:
        tc = np.asarray(test_clips)
        after["test"] = evaluate_video_vq(model, tc[..., None] if tc.ndim == 4 else tc, t_all)
    metrics = {"settings": dataclasses.asdict(settings),
               "model_config": _plain_config(cfg), "params": num_params(model), "clip": [t_all, hh, ww],
               "train_window": frames,
               "grid": list(grid), "tokens_per_clip": int(np.prod(grid)), "vocab_size": cfg.vocab_size,
               "train_clips": len(train_x), "heldout_clips": len(held_x), "device": str(device),
               "seconds": seconds, "before": before, "after": after, "log": log}
    save_video_vq(model.cpu(), out / CKPT_NAME)
    write_json(out / METRICS_NAME, metrics)
    return metrics


# ----------------------------------------------------------------------------- CLI

def cmd_train_video_vq(args) -> int:
    from par.data.clips import VideoClips

    job = from_args(VideoVQTrainJob, args)
    clips = VideoClips(job.clips).load()[0]
    test = VideoClips(job.test_clips).load()[0] if job.test_clips else None
    m = train_video_tokenizer(clips, job, job.out, test)
    print(f"{job.out}: held-out PSNR {m['after']['psnr_db']:.2f} ± {m['after']['psnr_db_se']:.2f} dB, "
          f"{m['tokens_per_clip']} tokens per clip, vocabulary {m['vocab_size']}")
    return 0


def register(sub):
    p = sub.add_parser("train-video-vq", help="train the MAGVIT-v2-style video tokenizer (causal 3D CNN + LFQ)")
    add_arguments(p, VideoVQTrainJob)
    p.set_defaults(func=cmd_train_video_vq)
