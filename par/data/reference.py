"""`par make-reference`: real images → ADM-format npz at the evaluation size (FID reference set).

The tiny preset has no ADM reference batch, so held-out real images play its role: each image gets the
same ADM centre crop as the training data (spec §8.1) at the evaluation size, then uint8 NHWC.
"""

from __future__ import annotations

import numpy as np

from par.errors import UserError


def make_reference(images: str, size: int, out: str, max_images: int = 0) -> int:
    from par.data.crops import BadImage, center_crop_arr, list_images, load_rgb
    from par.data.imageio import write_adm_npz

    _, samples = list_images(images)
    if max_images:
        rng = np.random.default_rng(0)  # a class-balanced-in-expectation subset, fixed
        samples = [samples[i] for i in sorted(rng.permutation(len(samples))[:max_images])]
    arrs = []
    for path, _ in samples:
        try:
            arrs.append(np.asarray(center_crop_arr(load_rgb(path), size), dtype=np.uint8))
        except BadImage as e:
            print(f"skipping {path}: {e}")
    if not arrs:
        raise UserError(f"--images {images}: no readable images")
    write_adm_npz(arrs, out)
    return len(arrs)


def cmd_make_reference(args) -> int:
    n = make_reference(args.images, args.size, args.out, args.max_images)
    print(f"wrote {n} reference images to {args.out}")
    return 0


def register(sub):
    p = sub.add_parser("make-reference", help="pack real images (ADM centre crop) into an ADM npz for FID")
    p.add_argument("--images", required=True, help="ImageFolder root")
    p.add_argument("--size", type=int, required=True, help="evaluation image size")
    p.add_argument("--out", required=True, help="output .npz (arr_0 uint8 N×H×W×3)")
    p.add_argument("--max-images", type=int, default=0, help="random subset of this many (0 = all)")
    p.set_defaults(func=cmd_make_reference)
