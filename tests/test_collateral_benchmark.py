"""How benchmarks/collateral.py splits the bundled world's prompts, and what it makes of judgments (the benchmark
itself is not in the suite)."""

import pytest

from esd_lora.bundled import world


@pytest.fixture
def collateral(load_script):
    return load_script("benchmarks/collateral.py")


def test_prompts_are_split_by_whether_they_name_the_erased_concept(collateral):
    rows = collateral.plan(["red"], n=24, seed=0)
    splits = {(concept, split): prompts for concept, split, prompts in rows}
    red_words = set(world.synonyms("red", "all"))
    assert set(splits) == {("red", "alone"), ("red", "combined")} | {
        (c, s) for c in world.all_concepts() if c != "red"
        for s in (("without",) if c in ("green", "blue", "yellow") else ("names erased", "without"))}
    for (concept, split), prompts in splits.items():
        assert len(prompts) == 24
        named = [bool(red_words & set(p.replace(",", " ").split())) for p in prompts]
        if concept == "red":
            assert all(named)
            shapes_or_patterns = {w for c in world.all_concepts() if c != "red" for w in world.synonyms(c, "all")}
            combined = [bool(shapes_or_patterns & set(p.replace(",", " ").split())) for p in prompts]
            assert all(combined) if split == "combined" else not any(combined)
        else:
            assert all(named) if split == "names erased" else not any(named)
            assert all(any(w in p for w in world.synonyms(concept, "all")) for p in prompts)  # its own prompts
    assert collateral.plan(["red"], n=24, seed=0) == rows  # deterministic


def test_judgments_become_ratios_and_the_worst_per_split(collateral):
    rows = [("red", "alone", ["red"] * 4), ("striped", "names erased", ["x"] * 4), ("striped", "without", ["x"] * 4),
            ("dotted", "names erased", ["x"] * 4), ("dotted", "without", ["x"] * 4), ("blue", "without", ["x"] * 4)]
    base = [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    adapted = [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]]
    result = collateral.summarise(["red"], rows, base, adapted)
    kept = {(r["concept"], r["split"]): r["kept"] for r in result["rows"]}
    assert kept[("red", "alone")] == 0 and kept[("striped", "names erased")] == 0.25
    assert kept[("dotted", "names erased")] == 1.5 and kept[("blue", "without")] is None  # no base rate to keep
    assert result["overall"]["names erased"] == {"worst": "striped", "worst_kept": 0.25, "mean_kept": 0.875}
    assert result["overall"]["without"] == {"worst": "dotted", "worst_kept": 0.75, "mean_kept": 0.875}
    lines = collateral.report_lines({"adapter": "a.safetensors", **result})
    assert "other concepts, prompts names erased: worst striped 25%, mean 88%" in lines
    assert any(line.startswith("blue") and line.endswith("-") for line in lines)


def test_the_base_images_are_made_once_for_adapters_erasing_the_same_concepts(collateral, monkeypatch):
    from types import SimpleNamespace

    made, pipe_calls = [], []
    pipe = SimpleNamespace(**{name: (lambda name=name: pipe_calls.append(name))
                              for name in ("disable_lora", "enable_lora", "unload_lora_weights")})
    concepts = {"a.safetensors": ["red"], "b.safetensors": ["red"], "c.safetensors": ["blue"]}
    monkeypatch.setattr(collateral, "load_adapter", lambda path: SimpleNamespace(
        metadata=SimpleNamespace(config=SimpleNamespace(concepts=concepts[path]))))
    monkeypatch.setattr(collateral, "apply_adapters", lambda pipe, specs: pipe_calls.append(("apply", *specs)))
    monkeypatch.setattr(collateral, "generate_images", lambda pipe, prompts, *args: made.append(prompts) or prompts)
    monkeypatch.setattr(collateral, "judged_as", lambda images, concept: [True] * len(images))
    cache = {}
    groups = len(collateral.plan(["red"], 2, 0))
    collateral.measure(pipe, "a.safetensors", 2, 0, cache)
    assert len(made) == 2 * groups  # base and adapted
    collateral.measure(pipe, "b.safetensors", 2, 0, cache)
    assert len(made) == 3 * groups  # adapted only: red's base images are kept
    collateral.measure(pipe, "c.safetensors", 2, 0, cache)
    assert len(made) == 3 * groups + 2 * len(collateral.plan(["blue"], 2, 0))  # another concept, another base
    assert pipe_calls.count("unload_lora_weights") == 3 and pipe_calls[0] == ("apply", "a.safetensors")
