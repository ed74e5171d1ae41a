"""Sample-set I/O in the OpenAI ADM evaluator format, shared by sampling and evaluation.

An ADM sample file is an ``.npz`` whose ``arr_0`` is uint8 ``(N, H, W, 3)`` (NHWC, RGB). 50k ImageNet-256
samples are 9.8 GB, so neither direction holds the whole set in memory: `write_adm_npz` streams into an
uncompressed zip member (as `np.savez` lays it out) and `read_images` memory-maps such a member.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from par.errors import UserError
from par.io import atomic_path, verify

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
NPZ_KEY = "arr_0"


class ImageFolder(Sequence):
    """Lazy, read-only view of the images in one folder (sorted by name): item i is uint8 (H, W, 3).

    All images must have the size of the first; a mismatch is reported when that image is read.
    """

    def __init__(self, files: list[Path]):
        self.files = files
        first = self._load(files[0])
        self.shape = (len(files), *first.shape)
        self.dtype = np.dtype(np.uint8)

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        from PIL import Image

        from par.data.crops import BadImage, to_rgb

        try:
            with Image.open(path) as im:
                return np.asarray(to_rgb(im), dtype=np.uint8)  # 16-bit grey scaled to 8 bit, not clipped
        except BadImage as e:
            raise UserError(f"{path}: {e}") from None
        except OSError as e:
            raise UserError(f"{path}: cannot decode image ({e}); remove or re-export it") from e

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ImageFolder(self.files[i])
        img = self._load(self.files[i])
        if img.shape != self.shape[1:]:
            raise UserError(
                f"{self.files[i]}: image is {img.shape[1]}x{img.shape[0]}, but {self.files[0].name} is "
                f"{self.shape[2]}x{self.shape[1]}; all images of a set must have the same size"
            )
        return img


def check_nhwc(shape, dtype, where: str) -> None:
    if np.dtype(dtype) != np.uint8:
        raise UserError(f"{where}: dtype is {np.dtype(dtype)}, expected uint8 images in 0..255 (convert with "
                        "np.clip(np.round(x), 0, 255).astype(np.uint8))")
    if len(shape) != 4 or shape[3] != 3:
        raise UserError(f"{where}: shape is {tuple(shape)}, expected (N, H, W, 3) RGB images (NHWC)")
    if shape[0] == 0:
        raise UserError(f"{where}: holds no images")


def _memmap_stored_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Memory-map an uncompressed .npy member of a zip; None if the member cannot be mapped."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        # The central directory's extra-field length may differ from the local header's, so read the latter.
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        if fortran or dtype.hasobject:
            return None
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def read_images(path: str | os.PathLike, max_images: int | None = None) -> np.ndarray | ImageFolder:
    """Images of an ADM ``.npz`` (``arr_0``) or of a folder of png/jpg files, as uint8 (N, H, W, 3).

    An uncompressed npz comes back memory-mapped, a compressed one loaded; a folder comes back as a lazy
    `ImageFolder`. ``max_images`` keeps the first N.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise UserError(f"{path}: folder holds no {'/'.join(IMAGE_EXTENSIONS)} images")
        images = ImageFolder(files[:max_images])
    elif path.is_file():
        if path.suffix != ".npz":
            raise UserError(f"{path}: expected an ADM .npz (arr_0 uint8 NxHxWx3) or a folder of images")
        verify(path, "make it again (samples: rerun `par sample`, which repacks them from its shards; a reference: "
                     "rerun `par make-reference` or `par fetch`)")
        try:
            with zipfile.ZipFile(path) as zf:
                info = next((i for i in zf.infolist() if i.filename == NPZ_KEY + ".npy"), None)
                keys = [i.filename.removesuffix(".npy") for i in zf.infolist()]
        except zipfile.BadZipFile as e:
            raise UserError(f"{path}: not a valid .npz ({e}); re-create it with par.data.imageio.write_adm_npz") from e
        if info is None:
            raise UserError(f"{path}: no '{NPZ_KEY}' array (keys: {', '.join(keys) or 'none'}); "
                            f"an ADM sample file stores the images under '{NPZ_KEY}'")
        images = _memmap_stored_member(path, info)
        if images is None:
            with np.load(path) as npz:
                images = npz[NPZ_KEY]
        if max_images is not None:
            images = images[:max_images]
    else:
        raise UserError(f"{path}: no such file or folder")
    check_nhwc(images.shape, images.dtype, f"{path}:{NPZ_KEY}" if path.is_file() else str(path))
    return images


def write_adm_npz(images: np.ndarray | Sequence[np.ndarray], path: str | os.PathLike) -> None:
    """Write uint8 images (an (N, H, W, 3) array, or a sequence of (H, W, 3) arrays) as an ADM ``.npz``.

    Streamed one image at a time into an uncompressed ``arr_0.npy`` member, written to a temporary file
    and renamed into place, so readers never see a partial file. `np.load` reads the result as usual.
    """
    n = len(images)
    if n == 0:
        raise ValueError("write_adm_npz: no images")
    first = np.asarray(images[0])
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"write_adm_npz: images must be uint8 (H, W, 3); got {first.dtype} {first.shape}")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (n, *first.shape)}

    def write(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(NPZ_KEY + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                for i in range(n):
                    img = np.asarray(images[i])
                    if img.shape != first.shape or img.dtype != np.uint8:
                        raise ValueError(f"write_adm_npz: image {i} is {img.dtype} {img.shape}, "
                                         f"expected uint8 {first.shape}")
                    f.write(np.ascontiguousarray(img).tobytes())

    with atomic_path(path, digest=True) as tmp:
        write(tmp)
