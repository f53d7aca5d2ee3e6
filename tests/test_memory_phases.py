"""benchmarks/memory_phases.py: every phase of an erasure is seen and measured (on a tiny pipeline; Linux only)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_phases.py"
pytestmark = pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads /proc/self/statm (Linux)")


@pytest.fixture
def phases(load_script):
    return load_script("benchmarks/memory_phases.py")


@pytest.mark.parametrize("bank_size, drawn", [(4, "refresh"), (0, "sample")])
def test_an_erasure_is_traced_phase_by_phase(phases, tiny_dirs, bank_size, drawn):
    import torch

    trace = phases.PhaseTrace(every_s=0.0005)
    with trace.running():
        adapter = phases.traced_erase(str(tiny_dirs["sd1"]), {"iterations": 3, "ddim_steps": 3, "bank_size": bank_size,
                                                               "refresh_every": 2}, trace)
    assert adapter.metadata.config.iterations == 3
    order = [phase for phase, _, _ in trace.runs if phase != "between"]
    step = ["teacher", "student", "backward", "adam"]
    if bank_size:  # the bank is sampled before iterations 1 and 3
        assert order == ["load", "refresh", *step, *step, "refresh", *step]
    else:  # a fresh trajectory for every iteration
        assert order == ["load", *(["sample", *step] * 3)]
    summary = trace.summary()
    assert summary["adam"]["runs"] == 3
    assert all(0 < start <= peak for _, start, peak in trace.runs)
    assert all(row["rise_mb"] >= 0 for row in summary.values())
    # the wrappers are gone afterwards
    assert torch.Tensor.backward.__name__ == "backward"


@pytest.mark.parametrize("args, message", [
    ([], "pass a pipeline folder or --random"),
    (["some/folder", "--random", "sd15"], "pass a pipeline folder or --random"),
    (["--random", "sd15"], "--random needs --work-dir"),
    (["--random", "sd15", "--work-dir", "/no/such/folder"], "--random needs --work-dir"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    result = subprocess.run([sys.executable, str(PATH), *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]


def test_a_work_dir_holding_something_else_under_the_models_name_is_refused(tmp_path):
    (tmp_path / "sd15").mkdir()
    result = subprocess.run([sys.executable, str(PATH), "--random", "sd15", "--work-dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'sd15'} exists and is not a saved pipeline: "
                                                      "move it away or pass another --work-dir")
    assert not (tmp_path / ".sd15.partial").exists()


def test_a_bad_erase_option_or_folder_is_the_one_line_error_of_erase(tmp_path):
    for args, message in [([str(tmp_path), "--iterations", "0"], "iterations"),
                          ([str(tmp_path / "none")], "does not exist")]:
        result = subprocess.run([sys.executable, str(PATH), *args], capture_output=True, text=True)
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last


def test_the_summary_says_which_allocator_setting_the_run_had(tiny_dirs):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    result = subprocess.run([sys.executable, str(PATH), str(tiny_dirs["sd1"]), "--iterations", "1", "--ddim-steps", "2",
                             "--show", "0"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("MALLOC_MMAP_THRESHOLD_=131072, ")
    assert lines[1].split() == ["phase", "peak", "MB", "rise", "MB", "runs"]
