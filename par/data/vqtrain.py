"""`par train-vq`: train a small VQ tokenizer from scratch (the tiny preset's stand-in for VQ-16).

The paper uses LlamaGen's released `vq_ds16_c2i`; on a laptop we train the same architecture at a small
width on the offline tiny dataset. Losses: L2 reconstruction + codebook + commitment (+ optional entropy);
LlamaGen's perceptual (LPIPS) and adversarial terms need downloaded networks, so they are off.
Augmentation as in LlamaGen's tokenizer training: ADM centre crop to 1.1× then a random crop and flip.

Writes `<out>/vq.pt` (save_vq format) and `<out>/vq_metrics.json` with held-out PSNR, MSE and codebook
usage before and after training (and rFID with `--rfid-images`), and the images it could not use
(``num_skipped``, ``skipped``: [{path, reason}]; each is also named on stderr).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from par import io
from par.config import VQTrainJob, add_arguments, from_args
from par.errors import UserError


def _load_images(root: str, size: int, seed: int, heldout: int, crop_range: float = 1.1):
    """(train, test, skipped): uint8 (N, 3, c, c) centre crops (c = int(size · crop_range)), shuffled, the last
    `heldout` the test split; and the images that could not be used, as [{"path", "reason"}] (path relative to
    `root`), each also reported on stderr as it is met, as `par tokenize` does."""
    import os
    import sys

    from par.data.crops import BadImage, center_crop_arr, crop_size, list_images, load_rgb

    _, samples = list_images(root)
    if len(samples) <= heldout or not samples:
        raise UserError(f"--images {root}: {len(samples)} images, need more than --heldout {heldout}")
    big = crop_size(size, crop_range)
    arrs, skipped = [], []
    for path, _ in samples:
        try:
            arrs.append(np.asarray(center_crop_arr(load_rgb(path), big)))
            continue
        except BadImage as e:
            reason = str(e)
        except Exception as e:  # noqa: BLE001 — e.g. a degenerate 1-pixel-wide image (as `par tokenize`)
            reason = f"cannot crop: {type(e).__name__}: {e}"
        skipped.append({"path": os.path.relpath(path, root), "reason": reason})
        print(f"par train-vq: skipped {skipped[-1]['path']}: {reason}", file=sys.stderr)
    if len(arrs) <= heldout or not arrs:
        raise UserError(f"--images {root}: {len(arrs)} readable images ({len(skipped)} skipped, listed above), "
                        f"need more than --heldout {heldout}; add images or lower --heldout")
    x = np.stack(arrs).transpose(0, 3, 1, 2)
    x = x[np.random.default_rng(seed).permutation(len(x))]
    return x[:len(x) - heldout], x[len(x) - heldout:], skipped


def _to_float(x_uint8):
    import torch

    return torch.as_tensor(x_uint8).float().div(127.5).sub(1.0)


def _center(x, size):
    o = (x.shape[-1] - size) // 2
    return x[..., o:o + size, o:o + size]


def evaluate_vq(vq, test_uint8, size: int, rfid_images: int = 0, batch_size: int = 512) -> dict:
    import torch

    x = _to_float(_center(test_uint8, size)).to(next(vq.parameters()).device)
    with torch.no_grad():
        parts = [vq.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]  # encode once
        recon = torch.cat([vq.decode(quant) for quant, _ in parts])
        codes = torch.cat([c for _, c in parts])
    recon = recon.clamp(-1, 1)
    mse = ((recon - x) ** 2).mean(dim=(1, 2, 3))
    psnr = (10 * torch.log10(4.0 / mse)).mean().item()  # peak-to-peak range 2 in [-1, 1]
    out = {"psnr_db": psnr, "psnr_db_se": (10 * torch.log10(4.0 / mse)).std().item() / math.sqrt(len(mse)),
           "images": len(mse), "mse": mse.mean().item(),
           "codebook_usage": torch.unique(codes).numel() / vq.cfg.codebook_size}
    if rfid_images:
        from par.eval.metrics import extract_features, feature_statistics, frechet_distance

        to8 = lambda t: torch.clamp(127.5 * t + 128, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # noqa
        real, fake = (feature_statistics(extract_features(to8(t[:rfid_images]))) for t in (x, recon))
        out["rfid"] = frechet_distance(*real, *fake)
    return out


def restart_dead_codes(vq, x, window: int, gen) -> int:
    """Dead-code restart (as in SoundStream / Jukebox VQ training): codes absent from the last `window`
    logged assignments are re-initialised to random encoder outputs of the current batch. Without it a
    small codebook trained briefly collapses onto a handful of codes."""
    import torch
    import torch.nn.functional as F

    q = vq.quantize
    recent = q.codebook_used[-window:].long()
    dead = torch.ones(vq.cfg.codebook_size, dtype=torch.bool, device=recent.device)
    dead[recent] = False
    num = int(dead.sum())
    if num == 0:
        return 0
    with torch.no_grad():
        z = vq.quant_conv(vq.encoder(x)).permute(0, 2, 3, 1).reshape(-1, vq.cfg.codebook_embed_dim)
        pick = z[torch.randint(0, z.shape[0], (num,), generator=gen).to(z.device)]  # drawn on the CPU: same stream
        q.embedding.weight[dead] = F.normalize(pick, dim=-1) if vq.cfg.codebook_l2_norm else pick
    return num


def train_vq(cfg: VQTrainJob) -> dict:
    import torch

    from par.data.tokenizer import VQConfig, VQModel, save_vq

    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    try:
        mult = tuple(int(m) for m in cfg.ch_mult.split(","))
    except ValueError:
        raise UserError(f"--ch-mult {cfg.ch_mult!r}: expected a comma list of integers, e.g. 1,2,2") from None
    odd = sorted({cfg.ch * m for m in mult if (cfg.ch * m) % 32})
    if odd:  # every level's width is normalised by a GroupNorm of 32 groups (LlamaGen's VQ architecture)
        raise UserError(f"--ch {cfg.ch} --ch-mult {cfg.ch_mult}: level widths {odd} are not multiples of 32, the "
                        "VQ's GroupNorm groups; use --ch 32 (or another multiple of 32)")
    vq = VQModel(VQConfig(codebook_size=cfg.codebook_size, codebook_embed_dim=cfg.codebook_embed_dim, ch=cfg.ch,
                          encoder_ch_mult=mult, decoder_ch_mult=mult, z_channels=cfg.z_channels,
                          enc_res_blocks=cfg.res_blocks, dec_res_blocks=cfg.res_blocks))
    from par.devices import resolve

    device = resolve(cfg.device)
    vq = vq.to(device)
    train_x, test_x, skipped = _load_images(cfg.images, cfg.image_size, cfg.seed, cfg.heldout, cfg.crop_range)
    before = evaluate_vq(vq.eval(), test_x, cfg.image_size, cfg.rfid_images)
    opt = torch.optim.Adam(vq.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    big, size = train_x.shape[-1], cfg.train_crop or cfg.image_size
    vq.train()
    t0, log = time.perf_counter(), []
    from par.progress import progress

    for step in progress(range(cfg.steps), "train-vq"):
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(train_x), (cfg.batch_size,), generator=gen)
        ox, oy = torch.randint(0, big - size + 1, (2,), generator=gen).tolist()
        x = _to_float(train_x[idx.numpy()][..., oy:oy + size, ox:ox + size]).to(device)
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        _, losses = vq(x)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        if cfg.restart_every and (step + 1) % cfg.restart_every == 0 and step < 0.8 * cfg.steps:
            restart_dead_codes(vq, x, window=cfg.restart_every * x.shape[0] * (size // vq.cfg.downsample) ** 2,
                               gen=gen)
        if (step + 1) % max(1, cfg.steps // 20) == 0:
            log.append({"step": step + 1, **{k: v.item() for k, v in losses.items()}})
    after = evaluate_vq(vq.eval(), test_x, cfg.image_size, cfg.rfid_images)
    if cfg.test_images:  # the preset's held-out split (never trained on): what the report quotes
        test_split = _load_images(cfg.test_images, cfg.image_size, cfg.seed, 0, cfg.crop_range)[0]
        after["test"] = evaluate_vq(vq, test_split, cfg.image_size)
    grid = cfg.image_size // vq.cfg.downsample
    metrics = {"config": dataclasses.asdict(cfg), "grid": [grid, grid], "train_images": len(train_x),
               "heldout_images": len(test_x), "num_skipped": len(skipped), "skipped": skipped, "device": str(device),
               "seconds": time.perf_counter() - t0, "before": before, "after": after, "log": log}
    save_vq(vq, out / "vq.pt")
    io.write_json(out / "vq_metrics.json", metrics)
    return metrics


def cmd_train_vq(args) -> int:
    m = train_vq(from_args(VQTrainJob, args, config_file=args.config))
    b, a = m["before"], m["after"]
    print(f"held-out PSNR {b['psnr_db']:.2f} → {a['psnr_db']:.2f} dB, MSE {b['mse']:.4f} → {a['mse']:.4f}, "
          f"codebook usage {b['codebook_usage']:.2%} → {a['codebook_usage']:.2%}"
          + (f", rFID {b['rfid']:.1f} → {a['rfid']:.1f}" if "rfid" in a else "")
          + (f"; test split PSNR {a['test']['psnr_db']:.2f} dB" if "test" in a else ""))
    return 0


def register(sub):
    p = sub.add_parser("train-vq", help="train a small VQ tokenizer (the CPU presets' stand-in for VQ-16)")
    add_arguments(p, VQTrainJob)
    p.add_argument("--config", help="JSON/YAML file with the fields above")
    p.set_defaults(func=cmd_train_vq)
