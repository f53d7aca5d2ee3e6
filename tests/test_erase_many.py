"""erase-many: one adapter per line, spread over accelerate processes, written once, resumable; bad input refused."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import esd_lora.erase_many as erase_many_module
from esd_lora.adapter import load_adapter
from esd_lora.cli import main
from esd_lora.erase_many import erase_many
from esd_lora.errors import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--iterations", "2", "--ddim-steps", "3", "--bank-size", "2", "--device", "cpu", "--quiet"]
CONCEPTS = "red\n\n# colours erased together:\nblue, green\n  star  \n"


def _run(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def _adapters(folder: Path) -> dict[str, object]:
    return {p.name: load_adapter(p) for p in sorted(folder.iterdir())}


def test_two_processes_write_each_adapter_once_then_a_rerun_resumes(tiny_dirs, tmp_path):
    concepts, out = tmp_path / "concepts.txt", tmp_path / "adapters"
    concepts.write_text(CONCEPTS)
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = _run(*launch, "-m", "esd_lora", "erase-many", concepts, "--out-dir", out, "--base", tiny_dirs["sd1"],
                  *TRAIN)
    assert result.returncode == 0, result.stderr
    assert "3 adapter(s), 2 process(es) with work: 3 written, 0 skipped, 0 failed" in result.stdout
    assert result.stdout.count("3 adapter(s)") == 1  # the summary comes from the main process only
    adapters = _adapters(out)  # nothing else in the folder: no temporary or duplicate files
    assert list(adapters) == ["esd-blue-green.safetensors", "esd-red.safetensors", "esd-star.safetensors"]
    written_by = {name: a.metadata.extra["erase_many"] for name, a in adapters.items()}
    # split_between_processes deals the 3 lines in order: lines 1 and 4 to process 0, line 5 to process 1.
    assert {name: (w["process"], w["processes"], w["source"].rsplit(" ", 1)[-1]) for name, w in written_by.items()} \
        == {"esd-red.safetensors": (0, 2, "1"), "esd-blue-green.safetensors": (0, 2, "4"),
            "esd-star.safetensors": (1, 2, "5")}
    assert adapters["esd-blue-green.safetensors"].metadata.config.concepts == ["blue", "green"]

    # A crashed run left one adapter missing: a plain single-process rerun writes only that one.
    kept = {name: (out / name).read_bytes() for name in ("esd-red.safetensors", "esd-blue-green.safetensors")}
    (out / "esd-star.safetensors").unlink()
    result = _run("-m", "esd_lora", "erase-many", concepts, "--out-dir", out, "--base", tiny_dirs["sd1"], *TRAIN)
    assert result.returncode == 0, result.stderr
    assert "1 written, 2 skipped, 0 failed" in result.stdout
    assert all((out / name).read_bytes() == data for name, data in kept.items())
    assert load_adapter(out / "esd-star.safetensors").metadata.extra["erase_many"]["processes"] == 1


def test_overwrite_retrains_and_a_failed_training_fails_only_its_adapter(tiny_dirs, tmp_path, monkeypatch):
    real_erase = erase_many_module.erase

    def erase(pipe, concepts, **kwargs):
        if concepts == ["blue"]:
            raise NonFiniteLossError("loss became nan at iteration 1; nothing was written")
        return real_erase(pipe, concepts, **kwargs)

    monkeypatch.setattr(erase_many_module, "erase", erase)
    options = dict(iterations=1, ddim_steps=2, bank_size=1, progress=False, device="cpu")
    first = erase_many(tiny_dirs["sd1"], ["red", "blue"], tmp_path, **options)
    assert [(Path(o.file).name, o.status) for o in first] == [("esd-red.safetensors", "written"),
                                                              ("esd-blue.safetensors", "failed")]
    assert "nan" in first[1].message and [p.name for p in tmp_path.iterdir()] == ["esd-red.safetensors"]
    assert [o.status for o in erase_many(tiny_dirs["sd1"], ["red"], tmp_path, **options)] == ["skipped"]
    before = (tmp_path / "esd-red.safetensors").stat().st_mtime_ns
    again = erase_many(tiny_dirs["sd1"], [["red"]], tmp_path, overwrite=True, seed=1, **options)
    assert [o.status for o in again] == ["written"]
    assert (tmp_path / "esd-red.safetensors").stat().st_mtime_ns != before
    assert load_adapter(tmp_path / "esd-red.safetensors").metadata.config.seed == 1


@pytest.mark.parametrize("content, match", [
    (None, "concepts file .* does not exist"),
    ("", "names no concept"),
    ("# only a comment\n\n   \n", "names no concept"),
    ("red\nblue\nred\n", r"line 3 \(red\) repeats .*line 1: both would write esd-red.safetensors"),
    ("van gogh\nVan-Gogh\n", r"line 2 \(Van-Gogh\) repeats .*line 1"),
    ("red,,blue\n", r"line 1: empty concept in 'red,,blue'"),
])
def test_bad_concepts_files_are_refused_before_any_work(tiny_dirs, tmp_path, capsys, content, match):
    concepts, out = tmp_path / "concepts.txt", tmp_path / "adapters"
    if content is not None:
        concepts.write_text(content)
    assert main(["erase-many", str(concepts), "--out-dir", str(out), "--base", str(tiny_dirs["sd1"])]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert re.search(match, error), error
    assert not out.exists()


@pytest.mark.parametrize("problem", ["out dir is a file", "bad option", "folder in the way"])
def test_bad_outputs_and_options_are_refused_before_training(tiny_dirs, tmp_path, capsys, problem):
    concepts, out = tmp_path / "concepts.txt", tmp_path / "adapters"
    concepts.write_text("red\nblue\n")
    args = ["erase-many", str(concepts), "--out-dir", str(out), "--base", str(tiny_dirs["sd1"])]
    if problem == "out dir is a file":
        out.write_text("not a folder")
        match = "is a file: give a folder"
    elif problem == "bad option":
        args += ["--lr", "-1"]
        match = "lr and alpha must be greater than 0"
    else:
        (out / "esd-blue.safetensors").mkdir(parents=True)
        match = "esd-blue.safetensors is a folder"
    assert main(args) == 1
    error = capsys.readouterr().err
    assert match in error and error.count("\n") == 1
    assert not (out.is_dir() and any(p.is_file() for p in out.iterdir()))  # no adapter was written
