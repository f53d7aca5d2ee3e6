"""End-to-end: the real ``esd-lora`` command, and one clear line with exit code 1 for each bad input."""

import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import save_file

from esd_lora.cli import main


def esd_lora(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "esd_lora", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_erase_info_generate_end_to_end(tiny_dirs, tmp_path, family):
    adapter = tmp_path / f"{family}.safetensors"
    result = esd_lora("erase", "red", "blue", "--base", tiny_dirs[family], "--iterations", 2, "--ddim-steps", 3,
                      "--lr", "0.05", "--context", "a {} shape", "--preserve", "green", "--preserve-at", "own",
                      "--preserve-text-weight", 2, "--out", adapter)
    assert result.returncode == 0, result.stderr
    assert f"wrote {adapter}" in result.stdout and adapter.is_file()
    assert "erasing" in result.stderr  # the tqdm progress bar

    result = esd_lora("info", adapter, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["config"]["concepts"] == ["red", "blue"] and info["config"]["iterations"] == 2
    assert info["config"]["contexts"] == ["a {} shape"]
    assert info["config"]["preserve"] == ["green"] and info["config"]["preserve_at"] == "own"
    assert info["config"]["preserve_text_weight"] == 2.0
    assert info["family"] == ("sdxl" if family == "sdxl" else "sd1")

    grid = tmp_path / "grid.png"
    result = esd_lora("generate", "red", "--base", tiny_dirs[family], "--adapter", f"{adapter}:0.8",
                      "--num-images", 2, "--steps", 2, "--out", grid)
    assert result.returncode == 0, result.stderr
    image = Image.open(grid)
    assert image.width == 2 * 128 and image.height > 2 * 128  # two rows of two tiles, with labels
    top, bottom = image.crop((0, 36, 128, 164)), image.crop((0, 36 + 146, 128, 164 + 146))
    assert top.tobytes() != bottom.tobytes()
    assert "requires torchvision" not in result.stderr  # transformers' note on its image processors is filtered


def test_only_the_torchvision_fallback_note_of_transformers_is_filtered():
    logger = logging.getLogger("transformers.utils.import_utils")

    def record(message):
        return logging.LogRecord(logger.name, logging.WARNING, __file__, 1, message, None, None)

    assert not logger.filter(record("`CLIPImageProcessor` requires torchvision (not installed); falling back to "
                                    "`CLIPImageProcessorPil` for backward compatibility."))
    assert logger.filter(record("`torch.compile` is not available"))


def test_info_prints_table(sd1_adapter, capsys):
    assert main(["info", str(sd1_adapter)]) == 0
    out = capsys.readouterr().out
    for expected in ("concepts", "red", "method", "esd-x", "rank / alpha", "4 / 2", "base fingerprint", "sha256:"):
        assert expected in out


def test_default_output_name(tiny_dirs, tmp_path):
    result = esd_lora("erase", "Van Gogh!", "--base", tiny_dirs["sd1"], "--iterations", 1, "--ddim-steps", 2,
                      "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "esd-van-gogh-esd-x.safetensors").is_file()
    assert "erasing" not in result.stderr


def readme_main_job() -> list[list[str]]:
    """The esd-lora commands of the README's main job: the set-up line that starts ``pip install -e . &&``."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith("pip install -e . && "))
    return [shlex.split(part) for part in line.split(" && ")[1:]]


def test_the_readme_main_job_runs_as_written(tmp_path):
    """The README's first command, run as written but shorter (one erasure step, one image per split of the erased
    concept): each command finds what the one before it wrote. The default file name follows the method the base
    recommends, so a new recommendation must change the README with it."""
    commands = readme_main_job()
    assert [c[:2] for c in commands] == [["esd-lora", "erase"], ["esd-lora", "evaluate"]], commands
    erase, evaluate = commands
    result = esd_lora(*erase[1:], "--iterations", 1, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = esd_lora(*evaluate[1:], "--n", 1, "--concept", "red", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = Path(tmp_path, evaluate[evaluate.index("--out") + 1])
    assert json.loads((out / "report.json").read_text())["adapters"], "the report names the adapter"


def test_bad_input_is_one_line_without_traceback(tmp_path):
    result = esd_lora("erase", "red", "--base", tmp_path / "missing", "--out", tmp_path / "x.safetensors")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr and not (tmp_path / "x.safetensors").exists()


HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")


def test_help_and_argument_errors_do_not_import_the_libraries():
    """``esd-lora --help`` and argument errors answer at once: no sub-command imports torch and co. to build
    its parser (they take seconds to import)."""
    code = ("import sys\nfrom esd_lora.cli import build_parser\nparser = build_parser()\n"
            "for argv in (['erase', '--help'], ['attack', '--help'], ['push', '--help'], ['erase']):\n"
            "    try:\n        parser.parse_args(argv)\n    except SystemExit:\n        pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_commands_that_load_no_model_import_neither_diffusers_nor_transformers(tmp_path):
    """``info``, ``search``, ``pull`` and ``push`` read files and talk to the Hub: quieting the model libraries'
    logging must not import them (seconds on a small machine); a model command still gets them quieted."""
    from esd_lora.cli import build_parser

    adapter = Path(__file__).resolve().parent.parent / "adapters" / "esd-red.safetensors"
    dead = "http://127.0.0.1:9"  # nothing listens: pull and push end with our one-line error
    runs = {"info": [str(adapter)], "search": ["--endpoint", dead], "pull": ["user/repo", "--endpoint", dead],
            "push": [str(adapter), "user/repo", "--endpoint", dead]}
    parser = build_parser()
    assert not any(parser.parse_args([command, *argv]).models for command, argv in runs.items())
    assert parser.parse_args(["erase", "red"]).models and parser.parse_args(["evaluate"]).models
    for command in ("info", "pull", "push"):  # search: the Hub client retries a dead endpoint for half a minute
        code = ("import sys\nfrom esd_lora.cli import main\n"
                f"rc = main({[command, *runs[command]]!r})\n"
                "print(rc, sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                                cwd=tmp_path, env={**os.environ, "HF_TOKEN": "hf_x", "HF_HUB_CACHE": str(tmp_path)})
        assert result.returncode == 0, result.stderr
        rc, imported = result.stdout.strip().splitlines()[-1].split(" ", 1)
        assert imported == "[]", (command, result.stdout)
        assert rc == ("0" if command == "info" else "1"), (command, result.stdout, result.stderr)
    code = ("import sys\nfrom esd_lora.cli import _quiet_libraries\n_quiet_libraries()\n"
            "from diffusers.utils import logging\nprint(logging.get_verbosity() == logging.ERROR)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "True", result.stderr


def test_the_package_imports_its_verbs_on_first_use():
    code = ("import sys, esd_lora\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
            "import esd_lora.erase, esd_lora.attack, esd_lora.evaluate, esd_lora.generate\n"
            "from esd_lora.erase import make_config\n"
            "print(all(callable(getattr(esd_lora, n)) and not isinstance(getattr(esd_lora, n), type(sys))\n"
            "          for n in ('erase', 'attack', 'evaluate', 'generate')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["[]", "True"]  # the verbs stay functions after their modules load
    import esd_lora

    for name in esd_lora.__all__:  # every public name resolves
        assert getattr(esd_lora, name) is not None
    assert sorted(esd_lora._EXPORTS) == sorted(set(esd_lora.__all__) - {"__version__"})
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        esd_lora.nope


def test_merge_and_export_end_to_end(tiny_dirs, sd1_adapter, tmp_path):
    result = esd_lora("merge", "--base", tiny_dirs["sd1"], "--adapter", f"{sd1_adapter}:0.5", "--out",
                      tmp_path / "merged", "--dtype", "fp16")
    assert result.returncode == 0, result.stderr
    assert "1 erasure(s) fused in (fp16)" in result.stdout
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "| red | esd-x | 0.5 |" in card
    result = esd_lora("export", sd1_adapter, "--out", tmp_path / "k.safetensors")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k.safetensors").is_file()


def test_bundled_base_is_the_default(tmp_path):
    result = esd_lora("generate", "a red star", "--num-images", 1, "--steps", 2, "--out", tmp_path / "g.png")
    assert result.returncode == 0, result.stderr
    width, height = Image.open(tmp_path / "g.png").size
    assert width == 128 and height >= 128  # one 32x32 image of the bundled base, shown at 128 px
    assert "bundled" not in result.stderr


@pytest.fixture
def not_esd(tmp_path):
    path = tmp_path / "not-esd.safetensors"
    import torch
    save_file({"w": torch.zeros(1)}, str(path))
    return path


@pytest.mark.parametrize("argv, message", [
    (["erase", "  ", "--base", "{sd1}"], "empty concept"),
    (["erase", "red", "--base", "{sd1}", "--method", "esd-q"], None),  # argparse's choices: exit 2
    (["erase", "red", "--base", "{tmp}/missing"], "does not exist"),
    (["erase", "red", "--base", "{tmp}"], "not a diffusers pipeline"),
    (["erase", "red", "--base", "{unsupported}"], "KandinskyPipeline"),
    (["erase", "red", "--base", "{sd1}", "--out", "{existing}"], "already exists"),
    (["erase", "red", "--base", "{sd1}", "--out", "{tmp}/no/dir/a.safetensors"], "does not exist; create it"),
    (["erase", "red", "--base", "{sd1}", "--iterations", "0"], "iterations must be a positive integer"),
    (["erase", "red", "--base", "{sd1}", "--context", "a car"], "must hold {} once, where the concept goes"),
    (["erase", "red", "--base", "{sd1}", "--preserve-at", "own"], "needs preserve prompts to keep"),
    (["erase", "red", "--base", "{sd1}", "--preserve", "blue", "--no-preserve"], "contradict each other"),
    (["erase", "red", "--base", "{sd1}", "--context", "a {{}} toy", "--no-contexts"], "contradict each other"),
    (["erase-many", "{tmp}/missing.txt", "--base", "{sd1}", "--preserve", "blue", "--no-preserve"],
     "contradict each other"),
    (["erase", "red", "--base", "{sd1}", "--eta", "1e38", "--start-guidance", "1e38", "--iterations", "2",
      "--ddim-steps", "2", "--out", "{tmp}/nan.safetensors"], "loss became"),
    (["info", "{tmp}/missing.safetensors"], "does not exist"),
    (["info", "{existing}"], "truncated"),
    (["info", "{not_esd}"], "not an esd-lora adapter"),
    (["generate", "red", "--base", "{sd1}", "--adapter", "{tmp}/missing.safetensors", "--out", "{tmp}/g.png"],
     "does not exist"),
    (["generate", "red", "--base", "{sd1}", "--adapter", "{not_esd}:abc", "--out", "{tmp}/g.png"],
     "not a number"),
    (["generate", "red", "--base", "{sd1}", "--num-images", "0", "--out", "{tmp}/g.png"], "positive integer"),
    (["generate", "red", "--base", "{sd1}", "--out", "{existing}"], "already exists"),
    (["merge", "--base", "{sd1}", "--out", "{tmp}/m"], "at least one --adapter"),
    (["merge", "--base", "{sd1}", "--adapter", "{tmp}/missing.safetensors", "--out", "{tmp}/m"], "does not exist"),
    (["merge", "--base", "{sd1}", "--adapter", "{not_esd}:x", "--out", "{tmp}/m"], "not a number"),
    (["merge", "--base", "{sd1}", "--adapter", "{not_esd}", "--adapter", "{not_esd}", "--out", "{tmp}/m"],
     "listed twice"),
    (["merge", "--base", "{sd1}", "--adapter", "{not_esd}", "--out", "{tmp}"], "already exists"),
    (["merge", "--base", "{sd1}", "--adapter", "{not_esd}", "--out", "{tmp}/m", "--single-file", "{tmp}/m.ckpt"],
     "must end in .safetensors"),
    (["export", "{not_esd}", "--out", "{tmp}/k.safetensors"], "not an esd-lora adapter"),
    (["export", "{tmp}/missing.safetensors"], "does not exist"),
])
def test_bad_inputs(argv, message, tiny_dirs, tmp_path, not_esd, capsys):
    unsupported = tmp_path / "kandinsky"
    unsupported.mkdir()
    (unsupported / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"not a safetensors file")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    fill = dict(sd1=tiny_dirs["sd1"], tmp=tmp_path, unsupported=unsupported, existing=existing, not_esd=not_esd)
    argv = [a.format(**fill) for a in argv]
    if message is None:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        return
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # a progress bar may stand before it
    assert err.startswith("error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing half-written
