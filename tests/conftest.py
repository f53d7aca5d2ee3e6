import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

# Two torch threads, as on the 2-core CI machine, or the cores shared among pytest-xdist's workers (the README's
# `-n 2` on 2 cores: one thread each, and the same for the command-line runs the tests start).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 2) // _workers))
torch.set_num_threads(THREADS)
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


@pytest.fixture
def two_threads():
    """Two torch threads for this test, whatever the worker count: a seeded erasure's weights depend on the thread
    count (float sums in another order; the adapter trains on its own samples, so the difference grows). Beside
    another busy worker on 2 cores it runs 3-4x slower: the README runs such tests in a second, serial command."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Folders of tiny random sd1 / sd2 (v-prediction) / sdxl pipelines, built once per session."""
    root = tmp_path_factory.mktemp("tiny")
    dirs = {}
    for family in tiny_models.FAMILIES:
        tiny_models.build(family, root / family)
        dirs[family] = root / family
    return dirs


@pytest.fixture
def sd1_pipe(tiny_dirs):
    from esd_lora.families import load_pipeline

    return load_pipeline(tiny_dirs["sd1"], device="cpu")


@pytest.fixture(scope="session")
def sd1_adapter(tiny_dirs, tmp_path_factory):
    """A saved sd1 adapter trained hard enough (high lr) that its images clearly differ from the base."""
    import esd_lora

    out = tmp_path_factory.mktemp("adapters") / "red.safetensors"
    esd_lora.erase(tiny_dirs["sd1"], "red", iterations=4, ddim_steps=4, lr=5e-2, rank=4, alpha=2.0,
                   progress=False, out=out, device="cpu")
    return out


@pytest.fixture(scope="session")
def load_script():
    """Load a script of the repository (benchmarks/ and scripts/ are not packages) as a fresh module:
    load_script("benchmarks/speed.py")."""
    import importlib.util

    def load(relative_path: str):
        path = Path(__file__).resolve().parents[1] / relative_path
        spec = importlib.util.spec_from_file_location(f"{path.stem}_script", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def recommending_base(tiny_dirs, tmp_path):
    """The tiny sd1 base with a settings file that recommends a learning rate, an iteration count, a context and
    anchor prompts."""
    folder = tmp_path / "sd1-recommending"
    shutil.copytree(tiny_dirs["sd1"], folder)
    (folder / "esd_lora.json").write_text(json.dumps({"erase": {"lr": 0.01, "iterations": 2, "contexts": ["a {} toy"]},
                                                      "anchors": ["red", "blue", "a red star", "dotted"]}))
    return folder
