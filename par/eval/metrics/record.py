"""The result record of `par evaluate` (strict JSON, written atomically) and its ``--meta`` fields."""

from __future__ import annotations

import json
import os

from par.errors import UserError
from par.eval.metrics.fidelity import (
    ISC_SPLIT_SIZE, KID_SUBSET_SIZE, KID_SUBSETS, METRIC_KEYS, PRC_NEIGHBORHOOD, _Features,
)
from par.eval.metrics.reference import _Inputs
from par.io import sha256_file, write_text


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    """Strict JSON (no NaN/Infinity: an unavailable metric is null, never NaN), written atomically."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _parse_meta(items) -> dict[str, str]:
    meta = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--meta {item!r}: expected KEY=VALUE, e.g. --meta steps=147")
        meta[key.strip()] = value  # strings only: a git hash of digits must not turn into an int
    return meta


def _record(names, values, unavailable, inputs: _Inputs, f: _Features, extractor: dict, settings: dict,
            meta) -> dict:
    """The result record (see `par evaluate --help`), without its timing; `extractor`: what the features came from."""
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
        "feature_extractor": extractor,
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
