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


def fake_bundled_run(monkeypatch, speed, argv: list[str], esd_lora_s: float | None) -> list[dict]:
    """bundled_part with canned workers: esd-lora at the bar in ``esd_lora_s`` s (None: never), every reference run
    short of it after 1010 s; returns the tasks the workers were given."""
    from esd_lora.bundled import world

    tasks = []
    every = {c: {"train": 1.0, "held-out": 1.0} for c in world.all_concepts()}

    def run_worker(task):
        tasks.append(task)
        if task["kind"] == "base":
            return {"n": every, "confirm_n": every}
        reached = task["variant"] != "reference" and esd_lora_s is not None
        seconds = esd_lora_s if reached else 1010.0
        return {"checks": [], "iterations": 400 if reached else None, "train_s": seconds if reached else None,
                "erased_iterations": None, "erased_train_s": None, "last_iteration": 800, "last_train_s": seconds,
                "s_per_it": 1.0, "peak_mb": 500.0, "file_mb": 1.0, "stopped_at_budget": "max_train_s" in task}

    monkeypatch.setattr(speed, "run_worker", run_worker)
    monkeypatch.setattr("sys.argv", ["speed.py", "--parts", "bundled", *argv])
    speed.bundled_part(speed.parse_args(), "cpu")
    return [t for t in tasks if t["kind"] == "bar"]


def test_the_reference_trains_for_its_budget_of_esd_loras_time_to_the_bar(monkeypatch, speed, capsys):
    argv = ["--variants", "reference", "esd-lora", "--reference-lrs", "3e-3", "2e-3"]
    tasks = fake_bundled_run(monkeypatch, speed, argv, esd_lora_s=100.0)
    assert [(t["variant"], t["lr"]) for t in tasks] == [("esd-lora", None), ("reference", 3e-3), ("reference", 2e-3)]
    assert [t.get("max_train_s") for t in tasks] == [None, 1000.0, 1000.0] and tasks[0]["max_iterations"] == 600
    out = capsys.readouterr().out
    assert "stopped when its time was up at 800 iterations" in out and "esd-lora           at least 10.1x faster" in out

    tasks = fake_bundled_run(monkeypatch, speed, argv, esd_lora_s=None)  # no time to the bar: --max-iterations
    assert [t.get("max_train_s") for t in tasks] == [None, None, None]
    assert {t["max_iterations"] for t in tasks} == {600}

    for bad in ("-1", "inf", "nan"):
        with pytest.raises(SystemExit) as exit_info:
            fake_bundled_run(monkeypatch, speed, [*argv, "--reference-budget", bad], esd_lora_s=100.0)
        assert exit_info.value.code == 2 and "expected a finite ratio > 0" in capsys.readouterr().err

    tasks = fake_bundled_run(monkeypatch, speed, [*argv, "--reference-budget", "0"], esd_lora_s=100.0)
    assert [t["variant"] for t in tasks] == ["reference", "reference", "esd-lora"]  # the order given, no budget
    assert [t.get("max_train_s") for t in tasks] == [None, None, None]


def test_a_reference_run_stops_at_the_first_check_past_its_budget(monkeypatch, speed):
    import sys
    import types

    import esd_lora.families

    now = [0.0]

    class Clock:  # one second of training per step, checks free
        def train_s(self):
            return now[0]

        def pause(self):
            return speed.nullcontext()

    class Reference:
        def __init__(self, pipe, concepts, lr, seed, **options):
            self.trained = None

        def step(self):
            now[0] += 1.0

        def file_bytes(self):
            return 2**20

    pipe = types.SimpleNamespace(unet=types.SimpleNamespace(device=speed.torch.device("cpu")))
    monkeypatch.setattr(esd_lora.families, "load_pipeline", lambda *a, **k: pipe)
    monkeypatch.setitem(sys.modules, "reference_esd", types.SimpleNamespace(ReferenceESD=Reference))
    monkeypatch.setattr(speed, "Clock", Clock)
    monkeypatch.setattr(speed, "check", lambda pipe, task: {"erased": 0.5, "passed": False})
    task = dict(TASK, variant="reference", lr=3e-3, overrides={}, device="cpu", check_every=50,
                max_iterations=10**9, max_train_s=120.0)
    row = speed.bar_worker(task)
    assert (row["last_iteration"], row["stopped_at_budget"], row["iterations"]) == (150, True, None)
    assert [c["iteration"] for c in row["checks"]] == [50, 100, 150]
    now[0] = 0.0
    row = speed.bar_worker(dict(task, max_train_s=None, max_iterations=120))  # no budget: --max-iterations
    assert row["last_iteration"] == 120 and "stopped_at_budget" not in row
