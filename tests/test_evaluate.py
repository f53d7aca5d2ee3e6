import csv
import json
from pathlib import Path

import pytest

from esd_lora.base_rates import judge_digest
from esd_lora.bundled.judge import WEIGHTS_PATH
from esd_lora.cli import main
from esd_lora.errors import ConfigError, OutputExistsError
from esd_lora.evaluate import (ConceptScore, Report, UnknownConceptError, evaluate, generate_for_judges,
                               read_prompts_csv)
from esd_lora.families import load_pipeline


# The bundled world's prompts and judge, run on a tiny random pipeline (its letter tokenizer reads any prompt):
# this checks the plumbing of evaluate; the rates themselves only mean something on the bundled base.

def test_same_prompts_and_seeds_with_and_without_adapters(tiny_dirs, sd1_adapter, tmp_path):
    pipe = load_pipeline(tiny_dirs["sd1"])
    plain = evaluate(pipe, concepts=["red", "star"], n=4, steps=2)
    assert [(r.concept, r.split) for r in plain.rows] == [("red", "train"), ("red", "held-out"),
                                                          ("star", "train"), ("star", "held-out")]
    assert all(r.base == r.adapted and r.images == 4 and 0 <= r.base <= 1 for r in plain.rows)
    report = evaluate(pipe, adapters=[str(sd1_adapter)], concepts=["red", "star"], n=4, steps=2)
    assert [r.base for r in report.rows] == [r.base for r in plain.rows]  # the base half is reproduced
    before, after = report.samples["red"]["base"], report.samples["red"]["adapted"]
    assert any(a.tobytes() != b.tobytes() for a, b in zip(before, after))
    assert report.adapters[0]["concepts"] == ["red"]
    assert not getattr(pipe.unet, "peft_config", None)
    out = report.save(tmp_path / "report")
    saved = json.loads((out / "report.json").read_text())
    assert [row["base"] for row in saved["rows"]] == [r.base for r in report.rows]
    assert saved["settings"]["judge"] == judge_digest(WEIGHTS_PATH)  # which judge labelled the images
    assert (out / "report.txt").read_text().strip() == report.table()
    assert (out / "grid.png").stat().st_size > 0
    with pytest.raises(OutputExistsError):
        report.save(tmp_path / "report")


def test_unknown_concept_names_the_known_ones(tiny_dirs):
    with pytest.raises(UnknownConceptError, match="van gogh.*it knows.*star.*red.*striped"):
        evaluate(tiny_dirs["sd1"], concepts=["van gogh"])


@pytest.mark.parametrize("content, match", [
    ("prompt,case_number\na cat,1\n", "lacks column.*evaluation_seed"),
    ("prompt,evaluation_seed,case_number\na cat,many,1\n", "not an integer"),
])
def test_bad_prompts_csv(tmp_path, content, match):
    path = tmp_path / "prompts.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        read_prompts_csv(path)


def test_prompts_csv_writes_images_and_manifest(tiny_dirs, sd1_adapter, tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,evaluation_seed,case_number\nred,1,10\nblue,2,11\n")
    out = generate_for_judges(tiny_dirs["sd1"], prompts, tmp_path / "images", adapters=[str(sd1_adapter)],
                              steps=2, force=False)
    progress = capsys.readouterr().err  # a bar over the images: 2 rows, base then adapted
    assert "generating: 100%" in progress and " 4/4 " in progress
    with (out / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["case_number"]) for r in rows] == [("base", "10"), ("base", "11"), ("adapted", "10"),
                                                              ("adapted", "11")]
    assert all((out / r["path"]).is_file() for r in rows)
    assert (out / "base" / "10.png").read_bytes() != (out / "adapted" / "10.png").read_bytes()


def test_cli_evaluate_prints_the_saved_table(tiny_dirs, tmp_path, capsys):
    base = str(tiny_dirs["sd1"])
    argv = ["evaluate", "--base", base, "--concept", "blue", "--n", "2", "--steps", "2", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "r" / "report.txt").read_text().strip() in printed
    assert main(argv) == 1 and "already exists" in capsys.readouterr().err
    assert main(["evaluate", "--base", base, "--concept", "purple", "--n", "4"]) == 1
    assert "it knows" in capsys.readouterr().err


def test_cli_evaluate_shows_a_progress_bar_unless_quiet(tiny_dirs, sd1_adapter, capsys):
    argv = ["evaluate", "--base", str(tiny_dirs["sd1"]), "--adapter", str(sd1_adapter), "--concept", "blue",
            "--n", "3", "--steps", "2"]
    assert main(argv) == 0
    progress = capsys.readouterr().err  # 1 concept x 2 phrasing splits x 3 images, base then adapted
    assert "evaluating: 100%" in progress and " 12/12 " in progress
    assert main([*argv, "--quiet"]) == 0
    assert "evaluating" not in capsys.readouterr().err
    misfit = Path(__file__).resolve().parent.parent / "adapters" / "esd-red.safetensors"  # trained on the bundled base
    argv[argv.index(str(sd1_adapter))] = str(misfit)
    assert main(argv) == 1
    err = capsys.readouterr().err  # checked before the bar is drawn: the error alone
    assert err.startswith("error: ") and "does not fit this base" in err and err.count("\n") == 1, err


def test_kept_is_each_other_concepts_rate_relative_to_its_base():
    rows = [ConceptScore("red", "color", split, 1.0, 0.0, 4) for split in ("train", "held-out")]
    rows += [ConceptScore("blue", "color", "train", 1.0, 0.5, 4),
             ConceptScore("blue", "color", "held-out", 0.5, 0.5, 4),
             ConceptScore("star", "shape", "train", 0.0, 0.0, 4),
             ConceptScore("star", "shape", "held-out", 0.0, 0.0, 4)]
    kept = Report(rows=rows, settings={}).kept(["red"])
    assert list(kept) == ["blue", "star"]  # the erased concept is left out, the order is the report's
    assert kept["blue"] == pytest.approx(0.5 / 0.75) and kept["star"] == 0.0  # a base rate of 0 does not divide by 0
