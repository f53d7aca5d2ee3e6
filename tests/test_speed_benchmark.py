"""The erasure bar of benchmarks/speed.py, on canned rates (the benchmark itself is not part of the suite)."""

import pytest


@pytest.fixture
def speed(load_script):
    return load_script("benchmarks/speed.py")


def canned(monkeypatch, speed, now: dict[str, float]) -> list[list[str]]:
    """Make ``rates`` answer ``now`` (the same rate on both splits); return the concept lists it was asked for."""
    asked = []

    def rates(pipe, concepts, n, seed, steps):
        asked.append(list(concepts))
        return {c: {"train": now[c], "held-out": now[c]} for c in concepts}

    monkeypatch.setattr(speed, "rates", rates)
    return asked


BASE = {c: {"train": r, "held-out": r} for c, r in {"red": 1.0, "blue": 1.0, "star": 1.0, "dotted": 0.7}.items()}
TASK = {"concept": "red", "others": ["blue", "star", "dotted"], "bar_others": ["blue", "star"], "seed": 0,
        "eval_steps": 25, "n": 8, "confirm_n": 32}


def test_the_bar_counts_the_reliable_concepts_and_reports_the_worst_of_all(monkeypatch, speed):
    canned(monkeypatch, speed, {"red": 0.0, "blue": 0.95, "star": 0.9, "dotted": 0.35})
    result = speed.bar(None, TASK, 8, BASE)
    assert result["passed"] and result["worst_other"] == "star" and result["worst_ratio"] == pytest.approx(0.9)
    assert result["worst_any"] == "dotted" and result["worst_any_ratio"] == pytest.approx(0.5)
    everything = dict(TASK, bar_others=TASK["others"])  # --others all
    assert not speed.bar(None, everything, 8, BASE)["passed"]


def test_a_damaged_concept_of_the_bar_fails_it(monkeypatch, speed):
    canned(monkeypatch, speed, {"red": 0.1, "blue": 0.85, "star": 1.0, "dotted": 0.7})
    result = speed.bar(None, TASK, 8, BASE)
    assert not result["passed"] and result["worst_other"] == "blue"


def test_others_are_not_generated_before_the_concept_is_erased(monkeypatch, speed):
    asked = canned(monkeypatch, speed, {"red": 0.125, "blue": 1.0, "star": 1.0, "dotted": 0.7})
    result = speed.bar(None, TASK, 8, BASE)
    assert asked == [["red"]] and not result["passed"] and result["worst_other"] is None


@pytest.mark.parametrize("at_32, confirmed", [(0.2, False), (0.1, True)])
def test_erasure_is_confirmed_at_the_larger_n(monkeypatch, speed, at_32, confirmed):
    asked = []

    def rates(pipe, concepts, n, seed, steps):
        asked.append(n)
        return {"red": {"train": at_32, "held-out": 0.0}}

    monkeypatch.setattr(speed, "rates", rates)
    assert speed.erasure_confirmed(None, TASK) == confirmed
    assert asked == [32]
    assert speed.erasure_confirmed(None, dict(TASK, confirm_n=8)) and asked == [32]  # nothing larger to ask


def test_the_machine_line_says_which_allocator_setting_the_workers_inherit(monkeypatch, speed):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert speed.machine("cpu").endswith(", default malloc settings")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert speed.machine("cpu").endswith(", MALLOC_MMAP_THRESHOLD_=131072")


def test_set_parses_erase_options_and_refuses_unknown_ones(monkeypatch, speed, capsys):
    monkeypatch.setattr("sys.argv", ["speed.py", "--parts", "bundled", "--set", "lr=0.01", "--set", "method=esd-u",
                                     "--set", "preserve-at=own", "--set", "contexts=[]"])
    assert speed.parse_args().erase_options == {"lr": 0.01, "method": "esd-u", "preserve_at": "own", "contexts": []}
    for bad in ("learning_rate=0.01", "lr", "concepts=red", "lr=abc", "method=nope"):
        monkeypatch.setattr("sys.argv", ["speed.py", "--set", bad])
        with pytest.raises(SystemExit) as exit_info:
            speed.parse_args()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and (f"--set {bad}: expected OPTION=VALUE" in err or
                                              err.strip().splitlines()[-1].endswith(("got 'abc'", "esd-all")))


def test_a_check_one_image_short_is_decided_by_the_confirmation(monkeypatch, speed):
    """At 8 images, red at 1 of 8 and blue one image short of its base rate go on to the 32-image check."""
    asked, answers = [], {8: {"red": 0.125, "blue": 0.875, "star": 1.0, "dotted": 0.7},
                          32: {"red": 0.0, "blue": 0.94, "star": 1.0, "dotted": 0.7}}

    def rates(pipe, concepts, n, seed, steps):
        asked.append((n, list(concepts)))
        return {c: {"train": answers[n][c], "held-out": answers[n][c]} for c in concepts}

    monkeypatch.setattr(speed, "rates", rates)
    task = dict(TASK, base_rates={"n": BASE, "confirm_n": BASE})
    result = speed.check(None, task)
    assert result["passed"] and result["confirm_worst_ratio"] == pytest.approx(0.94)
    assert [n for n, _ in asked] == [8, 8, 32, 32]
    answers[32]["blue"] = 0.875  # the confirmation is strict
    assert not speed.check(None, task)["passed"]
    answers[8]["blue"] = 0.75  # two images short at 8: not asked at 32
    asked.clear()
    assert not speed.check(None, task)["passed"] and [n for n, _ in asked] == [8, 8]
    assert not speed.bar(None, TASK, 8, BASE)["passed"]  # without slack, 12% is not erased
