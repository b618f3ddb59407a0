"""Shared test setup: no hub calls (fail fast instead of a ~26 s hang), the repository root and tools/ importable."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny nets gain nothing from threads, and on busy cores spinning OpenMP threads made training tests 10x
# slower (65 s instead of 7): one thread, set before torch is imported (DataLoader workers inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]  # the stage files, and the support scripts in tools/

import shutil
import tempfile

import pytest

# Every temporary file of the session, the subprocesses' included (multiprocessing's pymp-* socket folders, torchrun's
# torchelastic_* logs, those of runs the tests kill on purpose), goes into one folder that is removed at the end.
SESSION_TMP = tempfile.mkdtemp(prefix="ssd-tests-")
os.environ["TMPDIR"] = tempfile.tempdir = SESSION_TMP


def pytest_unconfigure(config):
    shutil.rmtree(SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A small synthetic nuScenes-format world, rendered once per test session."""
    import synthetic
    root = tmp_path_factory.mktemp("world")
    return str(synthetic.render_world(str(root / "world"), train_day=2, train_night=1, train_rain=1, val_day=1,
                                      val_night=1, val_rain=1, keyframes=4, sweeps=1, size=(72, 128), seed=0))


@pytest.fixture(scope="session")
def tiny_gdt_models(tmp_path_factory):
    """Every model gdt.py loads, tiny and random, written once per test session in the folders --models-dir reads."""
    import tiny_models
    root = tmp_path_factory.mktemp("tiny_models")
    tiny_models.write_models(str(root))
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on shared cores spinning OpenMP threads cost 10x."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
