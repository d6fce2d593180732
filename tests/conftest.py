import math

import pytest
import torch
from hypothesis import settings


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for the test (restored after): small models run fastest on one thread,
    above all on a shared, busy machine. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """Print the worst error ratio of the run (a dashboard figure, see CONTRIBUTING.md)."""
    worst, where = 0.0, None
    for key in ("passed", "failed"):
        for rep in terminalreporter.stats.get(key, []):
            for name, value in getattr(rep, "user_properties", []):
                if name == "error_ratio" and (value > worst or math.isnan(value)):
                    worst, where = value, rep.nodeid
    if where is not None:
        terminalreporter.write_line(f"qkv: worst error ratio over the run: {worst:.3f} ({where})")


# Reproducible property tests: the same examples on every run and machine.
settings.register_profile("qkv", derandomize=True, database=None, print_blob=True)
settings.load_profile("qkv")
