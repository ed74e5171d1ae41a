"""The reference side of an evaluation: both image sets read and checked before any feature is extracted, ADM
reference statistics, and the reference's pool3 features cached across the models a workflow scores."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from par.errors import UserError
from par.eval.metrics.convert import cache_dir
from par.eval.metrics.fidelity import FEATURE_DIM, features_of
from par.io import sha256_file, torch_load, torch_save, verify


def cached_features(name: str, path, key: str, compute):
    """`compute()`'s features of the reference file `path`, cached in `cache_dir()` per (its content, `key`):
    every model of a workflow is scored against the same reference, whose features are then computed once."""
    if path is None or not Path(path).is_file():
        return compute()
    digest = hashlib.sha256(f"{sha256_file(path)}|{key}".encode()).hexdigest()[:24]
    cached = cache_dir() / f"{name}-{digest}.pt"
    if cached.exists():
        return torch_load(cached)
    feats = compute()
    torch_save(feats, cached)
    return feats


def reference_features(path, images, max_images, extractor_sha: str, batch_size, cuda, extractor, verbose):
    """Pool3 features of the reference set, cached per (file content, extractor, max_images)."""
    return cached_features("reference-features", path, f"{extractor_sha}|{max_images}",
                           lambda: features_of(images, extractor, batch_size, cuda, verbose))


def load_reference_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` (2048,) and ``sigma`` (2048, 2048) of an ADM reference npz."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    verify(path, "download or make it again")  # against its `.sha256` (a `par fetch` pin, a par writer's record)
    try:
        npz = np.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npz ({e})") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise UserError(f"{path}: a single array, not an .npz; save the statistics with np.savez(path, mu=..., sigma=...)")
    with npz:
        missing = [k for k in ("mu", "sigma") if k not in npz.files]
        if missing:
            raise UserError(f"{path}: no {' or '.join(missing)} array (keys: {', '.join(npz.files) or 'none'}); "
                            "a reference-stats npz holds ADM pool3 statistics 'mu' (2048,) and 'sigma' (2048, 2048)")
        mu, sigma = npz["mu"], npz["sigma"]
    if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
        raise UserError(f"{path}: mu {mu.shape} / sigma {sigma.shape}, expected ({FEATURE_DIM},) / "
                        f"({FEATURE_DIM}, {FEATURE_DIM}) Inception pool3 statistics")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{path}: mu/sigma contain NaN or inf; regenerate the reference statistics")
    return mu, sigma


def _describe(source) -> tuple[str | None, str]:
    if isinstance(source, (str, os.PathLike)):
        return str(source), "folder" if Path(source).is_dir() else "npz"
    return None, "array"


@dataclass
class _Inputs:
    """The two image sets of an evaluation, read and checked before any feature is extracted."""

    sample_path: str | None
    sample_kind: str
    sample_images: object
    ref_path: str | None
    ref_kind: str
    ref_images: object = None  # None: only reference statistics were given
    ref_mu_sigma: tuple | None = None  # ADM mu/sigma, used for FID when present

    @property
    def n_ref(self) -> int | None:
        return len(self.ref_images) if self.ref_images is not None else None


def _reference_inputs(inputs: _Inputs, reference, max_images) -> None:
    """Reference images (ADM npz or folder); an npz that also holds mu/sigma gives FID its statistics."""
    inputs.ref_images = _load_images(reference, max_images, "reference")
    if inputs.ref_kind == "npz":
        with np.load(inputs.ref_path) as npz:
            has_stats = "mu" in npz.files and "sigma" in npz.files
        # ADM's evaluator takes the FID statistics from the reference batch when it has them.
        inputs.ref_mu_sigma = load_reference_stats(inputs.ref_path) if has_stats else None
        inputs.ref_kind = "images+stats-npz" if has_stats else "images-npz"
    elif inputs.ref_kind == "folder":
        inputs.ref_kind = "images-folder"
    if inputs.ref_mu_sigma is None and len(inputs.ref_images) < 2:
        raise UserError(f"{inputs.ref_path or 'reference'}: {len(inputs.ref_images)} image; FID needs at least 2")


def _read_inputs(samples, reference, reference_stats, max_images) -> _Inputs:
    sample_path, sample_kind = _describe(samples)
    sample_images = _load_images(samples, max_images, "samples")
    if len(sample_images) < 2:
        raise UserError(f"{sample_path or 'samples'}: {len(sample_images)} image; FID needs at least 2")
    inputs = _Inputs(sample_path, sample_kind, sample_images,
                     *_describe(reference if reference is not None else reference_stats))
    if reference_stats is not None:
        inputs.ref_mu_sigma, inputs.ref_kind = load_reference_stats(reference_stats), "stats-npz"
    else:
        _reference_inputs(inputs, reference, max_images)
    return inputs


def _load_images(source, max_images, what: str):
    from par.data.imageio import check_nhwc, read_images

    if isinstance(source, np.ndarray):
        check_nhwc(source.shape, source.dtype, what)
        return source[:max_images]
    return read_images(source, max_images)
