import pytest

# Not "tests.cluster": torch-fidelity installs a top-level `tests` package that shadows ours.
pytest_plugins = ["cluster"]


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run tests marked slow (integration); CI does")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow integration test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def i3d_weights():
    """The FVD I3D weights (`par setup-i3d`): a test needing them skips without them, unless PAR_REQUIRE_I3D=1
    (CI, after its set-up) makes that a failure."""
    import os

    from par.eval.i3d import default_weights_path

    path = default_weights_path()
    if not path.is_file():
        why = f"I3D weights not at {path}: run `par setup-i3d` once"
        if os.environ.get("PAR_REQUIRE_I3D") == "1":
            pytest.fail(why + " — PAR_REQUIRE_I3D=1 requires them")
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def fashion_mnist():
    """Debian's dataset-fashion-mnist (Moving Fashion-MNIST's images); skip without it."""
    from pathlib import Path

    root = Path("/usr/share/datasets/fashion-mnist")
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    return root
