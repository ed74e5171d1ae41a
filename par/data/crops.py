"""Image input of `par tokenize` (spec §8.1): the ImageFolder listing, robust RGB decoding and the ten-crop
transform of LlamaGen's `extract_codes_c2i.py --ten-crop --crop-range 1.1`: ADM centre crop to
int(image_size·crop_range), torchvision `TenCrop(image_size)` (5 crops of the image, then the same 5 of its
horizontal flip: the order `par.data.shards.CROP_ORDER` records), ToTensor, Normalize(0.5, 0.5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from par.errors import UserError


def center_crop_arr(pil_image, image_size: int):
    """ADM centre crop (guided-diffusion / LlamaGen): BOX-halve while the short side is ≥ 2·size, BICUBIC
    resize so the short side is `image_size` (both sides scaled and rounded), centre crop at (side−size)//2."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size])


def crop_size(image_size: int, crop_range: float) -> int:
    return int(image_size * crop_range)


class TenCropTransform:
    """PIL RGB image → float tensor (10, 3, S, S) in [−1, 1]: the reference's transform chain (ADM centre crop,
    `TenCrop`, ToTensor, Normalize(0.5, 0.5)). A plain class, so it pickles into DataLoader workers."""

    def __init__(self, image_size: int = 384, crop_range: float = 1.1):
        self.image_size, self.crop_range = image_size, crop_range
        self.crop_size = crop_size(image_size, crop_range)

    def __call__(self, img):
        import torch
        from torchvision.transforms import functional as TF

        img = center_crop_arr(img, self.crop_size)
        crops = TF.ten_crop(img, self.image_size)  # what transforms.TenCrop calls: 5 crops, then 5 of the h-flip
        x = torch.stack([TF.to_tensor(c) for c in crops])
        return TF.normalize(x, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], inplace=True)


def ten_crop_transform(image_size: int = 384, crop_range: float = 1.1) -> TenCropTransform:
    return TenCropTransform(image_size, crop_range)


class BadImage(ValueError):
    """An image file that cannot be decoded to RGB; the message is the reason recorded in the shard."""


# Formats whose 32-bit integer mode "I" holds 16-bit samples (Pillow scales PGM/PPM to 0..65535; PNG has no
# 32-bit samples: older Pillow opened 16-bit grey PNGs as "I").
_SIXTEEN_BIT_I = ("PNG", "PPM")


def to_rgb(img):
    """A decoded PIL image as 8-bit RGB. 8-bit modes (L, P, RGBA, CMYK, …) go through `convert("RGB")`
    as always; 16-bit grey (mode I;16*, or I from PNG/PGM) is scaled to 8 bit as round(value / 257) — PIL's
    own conversion clips it at 255, turning a 16-bit photo white. Other high-depth modes (32-bit integer or
    float samples, whose range is unknown) raise `BadImage`."""
    from PIL import Image

    if img.mode.startswith("I;16") or (img.mode == "I" and img.format in _SIXTEEN_BIT_I):
        v = np.asarray(img).astype(np.int64)
        if v.min(initial=0) < 0 or v.max(initial=0) > 65535:
            raise BadImage(f"mode {img.mode} samples outside 0..65535; re-export it as an 8- or 16-bit image")
        return Image.fromarray(((v + 128) // 257).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("I", "F"):
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise BadImage(f"{kind} samples (PIL mode {img.mode}) of unknown range; re-export it as an 8- or 16-bit "
                       "image")
    return img.convert("RGB")


def load_rgb(path):
    """Decode an image fully (truncated files raise) and convert it to RGB (grey, CMYK, palette… are fine;
    16-bit grey is scaled to 8 bit, see `to_rgb`)."""
    import warnings

    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # the default; a truncated JPEG must fail, not decode grey
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency / EXIF / decompression-bomb chatter
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()  # PIL decodes lazily: force it so truncation is detected here
                return to_rgb(img)
    except BadImage:
        raise
    except Exception as e:  # noqa: BLE001 — PIL raises OSError, ValueError, SyntaxError, struct.error, ...
        raise BadImage(f"{type(e).__name__}: {e}".strip()) from None


def list_images(root):
    """torchvision ImageFolder listing: (class names, [(path, label)]) — class folders sorted → 0..C−1,
    files sorted within each class, image extensions only. The list index is the ImageFolder index."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--images {root}: no such folder; pass an ImageFolder root (one sub-folder per class)")
    try:
        classes, class_to_idx = find_classes(str(root))
    except FileNotFoundError:
        raise UserError(f"--images {root}: no class folders; an ImageFolder root holds one sub-folder of "
                        "images per class") from None
    try:
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:  # a class folder without any image (ImageFolder refuses those too)
        raise UserError(f"--images {root}: {e}; remove the empty class folder(s) or add images") from None
    return classes, samples
