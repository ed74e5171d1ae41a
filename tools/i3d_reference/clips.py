"""The deterministic test clips of the I3D check (integer numpy only, so every numpy version makes the same bytes).

tests/test_fvd.py imports this file; tests/data/i3d/reference.json stores the sha256 of each clip's bytes, which
the test checks before comparing logits.
"""

import numpy as np

STRUCTURED_SHAPE = (16, 180, 320)  # T, H, W: non-square, H is upsampled to 224 and W downsampled


def structured_clip(t: int = 16, h: int = 180, w: int = 320) -> np.ndarray:
    """uint8 (t, h, w, 3): a diagonal ramp (R), vertical stripes moving right (G), horizontal stripes moving down
    (B), and a bright 40x24 box moving down-right: nothing in it is symmetric in height and width."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    r = (2 * xx + 3 * yy + 8 * tt) % 256
    g = np.where(((xx + 6 * tt) // 20) % 2 == 0, 230, 20)
    b = 40 + 160 * (((yy + 5 * tt) // 15) % 2)
    clip = np.stack([r, g, b], axis=-1).astype(np.uint8)
    for i in range(t):
        y0, x0 = 10 + 6 * i, 30 + 11 * i
        clip[i, y0:y0 + 40, x0:x0 + 24] = (250, 250, 250)
    return clip
