"""`par evaluate` (workflow/rules/evaluate.smk): the Inception metrics of `evaluate`, the classifier metrics of
`par.eval.classifier`, one JSON record.

    par evaluate --samples samples.npz --reference reference.npz --out metrics.json [--classifier-weights C.pt]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from par.config import EvaluateSettings, add_arguments, from_args
from par.eval.metrics import evaluate
from par.eval.metrics.fidelity import ISC_WEIGHTS_FILE
from par.eval.metrics.record import _parse_meta, write_json_atomic
from par.eval.metrics.reference import _load_images
from par.io import sha256_file


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
                            _load_images(reference, None, "reference"), labels, blocks,
                            reference_path=None if isinstance(reference, np.ndarray) else reference)
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
