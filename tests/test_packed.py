"""Training reads its codes memory-mapped: every rank of a node shares one page-cache copy."""

import json
import subprocess
import sys

import numpy as np
import pytest

from par.data.packed import packed
from par.data.shards import TokenShards
from test_train import make_token_dir

READER = """
import sys, numpy as np
def anon():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) * 1024
from par.train.train import TokenArrays  # imports (torch) before the measurement
from par.data.shards import TokenShards
before = anon()
if sys.argv[2] == "packed":
    codes = TokenArrays.load(sys.argv[1]).codes
else:
    codes = TokenShards(sys.argv[1]).load()[0]
total = int(np.sum(codes, dtype=np.int64))  # touch every page
print(anon() - before, total, codes.nbytes)
"""


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    # 2000 images × 10 crops × 32×32 int16 codes: 41 MB
    return make_token_dir(tmp_path_factory.mktemp("t") / "tokens", num_images=2000, grid=(32, 32), vocab=512,
                          classes=10)


def test_packed_codes_equal_the_shards_and_are_made_once(tokens):
    codes, labels, _ = packed(tokens)
    ref_codes, ref_labels = TokenShards(tokens).load()
    assert isinstance(codes, np.memmap) and not codes.flags.writeable
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(labels, ref_labels)
    stamp = (tokens / "packed" / "codes.npy").stat().st_mtime_ns
    packed(tokens)
    assert (tokens / "packed" / "codes.npy").stat().st_mtime_ns == stamp  # current: not packed again


def test_a_changed_manifest_is_packed_again(tmp_path):
    d = make_token_dir(tmp_path / "d", num_images=16)
    first, _, _ = packed(d)
    m = json.loads((d / "manifest.json").read_text())
    z = dict(np.load(d / "shard-00000.npz"))
    z["codes"] = (z["codes"] + 1) % m["codebook_size"]
    np.savez(d / "shard-00000.npz", **z)
    (d / "manifest.json").write_text(json.dumps({**m, "note": "re-tokenized"}))
    again, _, _ = packed(d)
    assert not np.array_equal(np.asarray(first), np.asarray(again))


def test_resident_memory_does_not_grow_with_the_ranks_reading_the_codes(tokens):
    packed(tokens)

    def readers(mode, k):
        procs = [subprocess.Popen([sys.executable, "-c", READER, str(tokens), mode], stdout=subprocess.PIPE,
                                  text=True) for _ in range(k)]
        return [tuple(int(x) for x in p.communicate(timeout=300)[0].split()) for p in procs]

    mapped = readers("packed", 3)
    size = mapped[0][2]
    assert size > 40_000_000 and len({t for _, t, _ in mapped}) == 1  # all read the same codes
    assert all(grown < size / 10 for grown, _, _ in mapped), mapped  # each rank: its own memory stays small
    copied = readers("memory", 1)  # the old way: every rank a private copy (shows the measurement works)
    assert copied[0][0] > size * 0.9
