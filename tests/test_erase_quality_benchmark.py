"""What benchmarks/erase_quality.py makes of an evaluation, on canned reports (the benchmark is not in the suite)."""

from types import SimpleNamespace

import pytest

from esd_lora.evaluate import ConceptScore, Report


@pytest.fixture
def quality(load_script):
    return load_script("benchmarks/erase_quality.py")


def report(adapted: dict[str, float], base: dict[str, float]) -> Report:
    rows = [ConceptScore(c, "any", split, base[c], adapted[c], 32) for c in base for split in ("train", "held-out")]
    return Report(rows=rows, settings={})


BASE = {"red": 1.0, "blue": 1.0, "star": 0.8, "dotted": 0.8}


def canned_run(monkeypatch, quality, adapted: dict[str, float], seconds: float = 60.0):
    """Run one benchmark entry with erase() and evaluate() answering at once; return its result and the options
    erase() was given."""
    given = {}
    clock = iter([0.0, seconds])
    monkeypatch.setattr(quality, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(quality.esd_lora, "erase", lambda pipe, concept, **options: given.update(options))
    monkeypatch.setattr(quality.esd_lora, "evaluate", lambda pipe, **kwargs: report(adapted, BASE))
    return given


def test_a_run_reports_dotted_apart_and_passes_only_at_the_bar(monkeypatch, quality):
    canned_run(monkeypatch, quality, {"red": 0.05, "blue": 0.95, "star": 0.76, "dotted": 0.4})
    result = quality.run(None, "red", "default", 32, seed=1)
    assert result["worst_other"] == "dotted" and result["dotted_ratio"] == pytest.approx(0.5)
    assert result["worst_but_dotted_ratio"] == pytest.approx(0.95)  # star: 0.76 of 0.8
    assert not result["passes"]  # dotted at half its base rate

    canned_run(monkeypatch, quality, {"red": 0.05, "blue": 0.95, "star": 0.76, "dotted": 0.8})
    assert quality.run(None, "red", "default", 32, seed=1)["passes"]

    canned_run(monkeypatch, quality, {"red": 0.05, "blue": 0.95, "star": 0.76, "dotted": 0.8}, seconds=181.0)
    assert not quality.run(None, "red", "default", 32, seed=1)["passes"]  # over 3 minutes


def test_the_preserve16_setting_raises_only_the_preservation_weight(monkeypatch, quality):
    given = canned_run(monkeypatch, quality, {"red": 0.0, "blue": 1.0, "star": 0.8, "dotted": 0.8})
    quality.run(None, "red", "preserve16", 32, seed=2)
    assert given == {"out": given["out"], "progress": False, "seed": 2, **quality.PREVIOUS_DEFAULT,
                     "preserve_weight": 16.0}


def test_the_preserve_own_setting_changes_only_where_the_preserved_prompts_are_held(monkeypatch, quality):
    given = canned_run(monkeypatch, quality, {"red": 0.0, "blue": 1.0, "star": 0.8, "dotted": 0.8})
    quality.run(None, "red", "preserve-own", 32, seed=3)
    assert given == {"out": given["out"], "progress": False, "seed": 3, **quality.PREVIOUS_DEFAULT,
                     "preserve_at": "own"}


def test_the_contexts_settings_put_the_concept_in_every_scene_and_keep_the_scenes_without_it(monkeypatch, quality):
    given = canned_run(monkeypatch, quality, {"red": 0.0, "blue": 1.0, "star": 0.8, "dotted": 0.8})
    quality.run(None, "star", "contexts+scenes", 32, seed=1)
    contexts, preserve = given["contexts"], given["preserve"]
    assert len(contexts) == 4 * 4 and "checkered green {}" in contexts  # every colour x pattern, {} for the shape
    assert all(c.count("{}") == 1 and "star" not in c for c in contexts)
    assert len(preserve) == 4 * 4 * 4 and "checkered green circle" in preserve  # the other 4 shapes
    assert not any("star" in p for p in preserve)

    given = canned_run(monkeypatch, quality, {"red": 0.0, "blue": 1.0, "star": 0.8, "dotted": 0.8})
    quality.run(None, "dotted", "contexts", 32, seed=1)
    assert len(given["contexts"]) == 5 * 4 and "{} red star" in given["contexts"] and "preserve" not in given


def test_the_default_is_the_bundled_bases_recommendation_and_the_others_are_on_top_of_the_previous_one(
        monkeypatch, quality):
    """"default" passes no options (the base's esd_lora.json decides: the kv-anchor10-contexts-eta0.5 erasure, and
    for a shape its by_concept entry on top);
    the other settings keep the meaning they had when their tables (docs/erasure-settings.md) were measured."""
    given = canned_run(monkeypatch, quality, {"red": 0.0, "blue": 1.0, "star": 0.8, "dotted": 0.8})
    quality.run(None, "red", "default", 32, seed=1)
    assert set(given) == {"out", "progress", "seed"}
    from esd_lora.erase import make_config

    for concept in ("red", "star", "dotted"):
        kv = make_config("bundled", concept, **quality.options_for("kv-anchor10-contexts-eta0.5", concept))
        shape = {"eta": 1.0, "iterations": 600} if concept == "star" else {}  # the shapes' by_concept entry
        options = {**quality.options_for("kv-anchor10-contexts-eta0.5", concept), **shape}
        assert make_config("bundled", concept) == make_config("bundled", concept, **options)
        previous = make_config("bundled", concept, **quality.options_for("previous-default", concept))
        assert (previous.method, previous.eta, previous.contexts, previous.preserve_text_weight) == \
            ("esd-x", 1.0, [], 0.0)
        assert previous.preserve == kv.preserve and (previous.lr, previous.preserve_weight) == (0.005, 4.0)


def test_the_summary_is_the_mean_over_seeds_and_leaves_out_what_does_not_apply(quality):
    runs = [{"concept": "red", "setting": "default", "erased_train": et, "erased_held_out": eh,
             "worst_other_ratio": w, "dotted_ratio": d, "worst_but_dotted_ratio": b, "seconds": s, "passes": p}
            for et, eh, w, d, b, s, p in [(0.0, 0.1, 0.5, 0.5, 0.9, 60, False), (0.1, 0.2, 0.7, 0.7, 1.0, 80, True)]]
    dotted = {**runs[0], "concept": "dotted", "dotted_ratio": None}  # erasing dotted: no "dotted kept"
    assert quality.summary(runs + [dotted]) == [
        "red       default         erased 5% / 15%, worst other 60%, dotted 60%, worst but dotted 95%, 70 s, "
        "1 of 2 pass",
        "dotted    default         erased 0% / 10%, worst other 50%, dotted -, worst but dotted 90%, 60 s, "
        "0 of 1 pass",
    ]


def test_the_half_eta_setting_is_the_contexts_setting_with_eta_halved(monkeypatch, quality):
    contexts = canned_run(monkeypatch, quality, {"red": 0.0, "blue": 1.0, "star": 0.8, "dotted": 0.8})
    quality.run(None, "red", "contexts", 32, seed=1)
    halved = canned_run(monkeypatch, quality, {"red": 0.0, "blue": 1.0, "star": 0.8, "dotted": 0.8})
    quality.run(None, "red", "contexts-eta0.5", 32, seed=1)
    assert halved.pop("eta") == 0.5 and contexts.pop("eta") == 1.0
    assert {k: v for k, v in halved.items() if k != "out"} == {k: v for k, v in contexts.items() if k != "out"}
    assert len(halved["contexts"]) == 5 * 4  # red in every shape x pattern


def test_set_puts_options_on_top_of_the_setting_and_names_the_worlds_prompt_lists(monkeypatch, quality):
    given = canned_run(monkeypatch, quality, {"red": 0.0, "blue": 1.0, "star": 0.8, "dotted": 0.8})
    result = quality.run(None, "star", "preserve16", 32, 1, {"eta": 0.5, "preserve": "others+scenes"})
    assert given["eta"] == 0.5 and given["preserve_weight"] == 16.0 and result["set"]["eta"] == 0.5
    others = [c for c in quality.world.all_concepts() if c != "star"]
    assert given["preserve"][:12] == others and len(given["preserve"]) == 12 + 4 * 4 * 4  # the other 4 shapes' scenes
    assert not any("star" in p for p in given["preserve"])


@pytest.mark.parametrize("bad, says", [("learning_rate=1", "expected OPTION=VALUE"), ("eta", "expected OPTION=VALUE"),
                                       ("method=nope", "nope"), ("preserve_at=own", None)])
def test_a_bad_set_is_refused_before_the_base_loads(monkeypatch, capsys, quality, bad, says):
    monkeypatch.setattr(quality, "load_pipeline", lambda *a, **k: pytest.fail("the base was loaded"))
    monkeypatch.setattr("sys.argv", ["erase_quality.py", "--concepts", "red", "--settings", "plain", "--set", bad])
    with pytest.raises(SystemExit) as exit_info:
        quality.main()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and err.startswith("erase_quality.py: error: --set")
    assert says is None or says in err  # plain preserves nothing: there is nothing to hold at its own images


def canned_main(monkeypatch, quality, argv: list[str], base_dir) -> list:
    """Run the benchmark's main() on a stand-in pipeline loaded from ``base_dir``; return, per run, the judge
    weights in use while it ran."""
    from esd_lora.bundled.judge import weights_in_use

    judges = []

    def run(pipe, concept, setting, n, seed, extra):
        judges.append(weights_in_use())
        return {"concept": concept, "setting": setting, "seed": seed, "base": 1.0, "erased_train": 0.0,
                "erased_held_out": 0.0, "worst_other": "blue", "worst_other_ratio": 1.0, "dotted_ratio": 1.0,
                "worst_but_dotted_ratio": 1.0, "seconds": 60.0, "passes": True}

    monkeypatch.setattr(quality, "load_pipeline", lambda base, **_: SimpleNamespace(unet=None, name_or_path=base))
    monkeypatch.setattr(quality, "run", run)
    monkeypatch.setattr("sys.argv", ["erase_quality.py", "--base", str(base_dir), "--concepts", "red", *argv])
    quality.main()
    return judges


def test_judge_option_judges_every_run_with_that_judge(monkeypatch, capsys, quality, tmp_path):
    import shutil

    from esd_lora import BUNDLED_BASE
    from esd_lora.bundled.judge import WEIGHTS_PATH, weights_in_use

    other = tmp_path / "judge-v6.safetensors"
    shutil.copyfile(WEIGHTS_PATH, other)
    assert canned_main(monkeypatch, quality, ["--judge", str(other), "--seeds", "0", "1"], BUNDLED_BASE) == [other] * 2
    assert weights_in_use() == WEIGHTS_PATH  # the bundled judge again after the block
    assert canned_main(monkeypatch, quality, [], BUNDLED_BASE) == [WEIGHTS_PATH]
    assert "note:" not in capsys.readouterr().out  # the bundled base carries its erasure settings


def test_a_base_without_the_bundled_settings_file_gets_a_note(monkeypatch, capsys, quality, tmp_path):
    canned_main(monkeypatch, quality, [], tmp_path)
    assert f"note: {tmp_path} has no esd_lora.json: 'default' is the library's erasure" in capsys.readouterr().out


def test_a_judge_file_that_is_not_there_is_refused_before_loading_the_base(monkeypatch, capsys, quality, tmp_path):
    monkeypatch.setattr(quality, "load_pipeline", lambda *a, **k: pytest.fail("loaded the base before refusing"))
    monkeypatch.setattr("sys.argv", ["erase_quality.py", "--judge", str(tmp_path / "judge-v6.safetensors")])
    with pytest.raises(SystemExit) as exit_info:
        quality.main()
    assert exit_info.value.code == 2
    assert "judge-v6.safetensors: no such file; train one with python -m esd_lora.bundled.judge" in \
        capsys.readouterr().err
