"""`par make-reference`: real images → ADM-format npz at the evaluation size (FID reference set and floors).

Presets without an ADM reference batch use held-out real images instead: each image gets the same ADM centre
crop as the training data (spec §8.1) at the evaluation size, then uint8 NHWC. The held-out split is drawn in
one fixed random order, so `--offset` gives disjoint sets from it: the reference (offset 0), then the images
of the floors — the same real images as they are (real vs real) and passed through the VQ tokenizer (`--vq`:
the reconstruction floor, what no model on these tokens can beat). `--labels` also writes their classes.
"""

from __future__ import annotations

import numpy as np

from par.errors import UserError


def _reconstruct(arrs: list[np.ndarray], vq_path: str, vq_size: int, size: int, batch_size: int = 256):
    """The images encoded and decoded by the VQ (at its input side `vq_size`, output resized to `size`)."""
    import torch
    import torch.nn.functional as F

    from par.data.tokenizer import load_vq
    from par.eval.sample import decode_to_uint8

    vq = load_vq(vq_path).eval()
    x = torch.as_tensor(np.stack(arrs)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if x.shape[-1] != vq_size:
        x = F.interpolate(x, size=(vq_size, vq_size), mode="bicubic", align_corners=False, antialias=True)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            _, codes = vq.encode(x[i:i + batch_size])
            side = vq_size // vq.cfg.downsample
            out.append(decode_to_uint8(vq, codes, (side, side), size))
    return list(np.concatenate(out))


def make_reference(images: str, size: int, out: str, max_images: int = 0, offset: int = 0, vq: str = "",
                   vq_size: int = 0, labels_out: str = "") -> int:
    from par.data.crops import BadImage, center_crop_arr, list_images, load_rgb
    from par.data.imageio import write_adm_npz
    from par.io import atomic_path

    _, samples = list_images(images)
    if max_images or offset:
        order = np.random.default_rng(0).permutation(len(samples))  # class-balanced in expectation, fixed
        pick = order[offset:offset + max_images] if max_images else order[offset:]
        if len(pick) == 0 or (max_images and len(pick) < max_images):
            raise UserError(f"--images {images}: {len(samples)} images, but --offset {offset} --max-images "
                            f"{max_images} needs {offset + max_images}; lower data.reference_images / "
                            "data.floor_images or hold out more images")
        samples = [samples[i] for i in sorted(pick)]
    arrs, classes = [], []
    for path, c in samples:
        try:
            arrs.append(np.asarray(center_crop_arr(load_rgb(path), size), dtype=np.uint8))
            classes.append(c)
        except BadImage as e:
            print(f"par make-reference: skipped {path}: {e}", file=__import__("sys").stderr)
    if not arrs:
        raise UserError(f"--images {images}: no readable images")
    if vq:
        arrs = _reconstruct(arrs, vq, vq_size or size, size)
    write_adm_npz(arrs, out)
    if labels_out:
        with atomic_path(labels_out) as tmp, open(tmp, "wb") as f:
            np.save(f, np.array(classes, dtype=np.int64), allow_pickle=False)
    return len(arrs)


def cmd_make_reference(args) -> int:
    n = make_reference(args.images, args.size, args.out, args.max_images, args.offset, args.vq, args.vq_size,
                       args.labels)
    print(f"wrote {n} {'VQ-reconstructed' if args.vq else 'reference'} images to {args.out}")
    return 0


def register(sub):
    p = sub.add_parser("make-reference", help="pack real images (ADM centre crop) into an ADM npz for FID")
    p.add_argument("--images", required=True, help="ImageFolder root")
    p.add_argument("--size", type=int, required=True, help="evaluation image size")
    p.add_argument("--out", required=True, help="output .npz (arr_0 uint8 N×H×W×3)")
    p.add_argument("--max-images", type=int, default=0, help="random subset of this many (0 = all)")
    p.add_argument("--offset", type=int, default=0, help="skip this many of the fixed random order first "
                   "(disjoint sets from one held-out split)")
    p.add_argument("--vq", default="", help="VQ checkpoint: pack the images' reconstructions (the tokenizer floor)")
    p.add_argument("--vq-size", type=int, default=0, help="the VQ's input side (default: --size)")
    p.add_argument("--labels", default="", help="also write the images' classes to this .npy")
    p.set_defaults(func=cmd_make_reference)
