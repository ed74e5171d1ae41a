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
