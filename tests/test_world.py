"""Tests for the bundled synthetic concept world (esd_lora/bundled/world.py)."""

from __future__ import annotations

import colorsys
import re

import numpy as np
import pytest
from PIL import Image

from esd_lora.bundled import world


def test_concepts_are_the_thirteen_expected() -> None:
    assert world.CONCEPTS["shape"] == ["circle", "square", "triangle", "star", "cross"]
    assert world.CONCEPTS["colour"] == ["red", "green", "blue", "yellow"]
    assert world.CONCEPTS["pattern"] == ["solid", "striped", "dotted", "checkered"]
    assert len(world.all_concepts()) == 13
    assert world.concept_dimension("striped") == "pattern"


def test_render_is_deterministic_and_seed_dependent() -> None:
    a = world.render_array("star", "red", "striped", np.random.default_rng(7))
    b = world.render_array("star", "red", "striped", np.random.default_rng(7))
    c = world.render_array("star", "red", "striped", np.random.default_rng(8))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    img = world.render("cross", "blue", "dotted", np.random.default_rng(0))
    assert isinstance(img, Image.Image) and img.size == (32, 32) and img.mode == "RGB"


def test_render_dataset_is_deterministic() -> None:
    x1, a1 = world.render_dataset(20, seed=3)
    x2, a2 = world.render_dataset(20, seed=3)
    assert np.array_equal(x1, x2) and a1 == a2


@pytest.mark.parametrize("pattern", world.CONCEPTS["pattern"])
def test_world_versions_differ_only_in_the_patterns(pattern: str) -> None:
    """Every version draws the same scene from the same seed: solid scenes are identical, and a patterned scene
    keeps its background, silhouette and colour (only the pattern inside the shape changes)."""
    rendered = {v: world.render_array("circle", "blue", pattern, np.random.default_rng(4), version=v).astype(int)
                for v in world.VERSIONS}
    first = rendered[world.VERSIONS[0]]
    solid = world.render_array("circle", "blue", "solid", np.random.default_rng(4)).astype(int)
    blueness = solid[..., 2] - solid[..., :2].max(axis=-1)  # the background is grey
    grey = np.pad(blueness < 8, 1, constant_values=True)
    outside = np.all([grey[1 + dy:33 + dy, 1 + dx:33 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    inside = blueness > 60  # ``outside`` leaves out the anti-aliased edge, where the pattern shows too
    assert 0.2 < outside.mean() < 0.9 and 0.2 < inside.mean() < 0.9
    for image in rendered.values():
        if pattern == "solid":
            assert np.array_equal(image, first)
        assert np.array_equal(image[outside], first[outside])
        assert (image.argmax(axis=-1)[inside] == 2).all()  # still blue
    if pattern == "dotted":  # version 2's dots are bigger than version 1's
        dark = [int((rendered[v][..., 2] < 0.6 * rendered[v][..., 2].max()).sum()) for v in (1, 2)]
        assert dark[0] < dark[1]
    assert world.WORLD_VERSION in world.VERSIONS


_CENTRE = (16.0, 16.0)
"""A shape's centre for :func:`world._pattern_mask`; only an anchored version (7) reads it."""


@pytest.mark.parametrize("pattern", ["striped", "dotted", "checkered"])
def test_grid_locked_patterns_fill_whole_latent_cells(pattern: str) -> None:
    """Version 3 locks its 8-pixel patterns to the 4-pixel grid of the 8x8 latents: every 4x4 cell (one latent
    pixel) is one tone, or holds one whole dot, and the random draws pick one of two phases per axis."""
    size = world.IMAGE_SIZE * 4  # the supersampled canvas: a cell is 16x16 samples
    masks = [world._pattern_mask(pattern, np.random.default_rng(seed), size, 3, _CENTRE) for seed in range(12)]
    for mask in masks:
        cells = mask.reshape(8, 16, 8, 16).transpose(0, 2, 1, 3).reshape(64, 16 * 16)
        kinds = {cell.tobytes() for cell in cells}
        assert len(kinds) == 2, "a cell is empty or holds the pattern's one kind of content"
        full = cells.mean(axis=1)
        share = {"striped": 0.5, "checkered": 0.5, "dotted": 0.25}[pattern]  # of the cells holding the pattern
        assert (full > 0).mean() == share
        if pattern == "dotted":  # a whole dot, centred in its cell: round, touching the cell's edges
            dot = cells[full.argmax()].reshape(16, 16)
            assert dot[8, 0] == dot[8, 15] == dot[0, 8] == 1 and dot[0, 0] == 0 and 0.7 < dot.mean() < 0.85
    phases = {m.tobytes() for m in masks}
    assert len(phases) == {"striped": 4, "dotted": 4, "checkered": 2}[pattern]  # striped: 2 axes x 2 phases
    old = [world._pattern_mask(pattern, np.random.default_rng(seed), size, 1, _CENTRE) for seed in range(6)]
    assert len({m.tobytes() for m in old}) == 6  # version 1 draws its phase at random


@pytest.mark.parametrize("version, patterns", [(4, {"dotted"}), (5, {"dotted"}), (6, {"dotted", "striped"})])
def test_versions_4_to_6_change_only_their_patterns(version: int, patterns: set[str]) -> None:
    """Versions 4 and 5 are version 1 but for the dots, version 6 but for the dots and the stripes: every other
    pattern and every solid scene is drawn exactly as in version 1."""
    old, attrs = world.render_dataset(300, seed=8, version=1)
    new, attrs_new = world.render_dataset(300, seed=8, version=version)
    assert attrs == attrs_new
    changed = {attrs[i][2] for i in range(len(attrs)) if not np.array_equal(old[i], new[i])}
    assert changed == patterns


def test_version_4_draws_the_dots_darker_or_lighter() -> None:
    """Version 4's dots: near-black on light and mid-grey backgrounds, near-white on dark ones."""
    old, attrs = world.render_dataset(300, seed=8, version=1)
    new, _ = world.render_dataset(300, seed=8, version=4)
    dark_bg = light_bg = 0
    for i, (shape, colour, pattern) in enumerate(attrs):
        if pattern != "dotted":
            continue
        differs = np.abs(old[i].astype(int) - new[i].astype(int)).max(axis=-1) > 20  # the dots, not the noise
        assert 0 < differs.mean() < 0.2
        brighter = new[i][differs].astype(int).sum() > old[i][differs].astype(int).sum()
        background = int(old[i][0, 0].mean())  # achromatic and unpatterned in the corner
        assert brighter == (background < 0.33 * 255), (shape, colour, background)
        dark_bg, light_bg = dark_bg + brighter, light_bg + (not brighter)
    assert dark_bg > 5 and light_bg > 5


def test_version_6_draws_version_2_dots_and_only_horizontal_stripes() -> None:
    """Version 6: the dots of version 2, every stripe horizontal (the rows of a striped mask are uniform); version 1
    draws vertical stripes too. (That nothing else changes: the test above.)"""
    size = world.IMAGE_SIZE * 4
    for seed in range(20):
        new = world._pattern_mask("striped", np.random.default_rng(seed), size, 6, _CENTRE)
        assert (new == new[:, :1]).all() and 0.3 < new.mean() < 0.7  # constant along each row: horizontal bands
        dots = [world._pattern_mask("dotted", np.random.default_rng(seed), size, v, _CENTRE) for v in (2, 6)]
        assert np.array_equal(*dots)
    old = [world._pattern_mask("striped", np.random.default_rng(seed), size, 1, _CENTRE) for seed in range(20)]
    assert any((m != m[:, :1]).any() for m in old)  # some vertical


@pytest.mark.parametrize("pattern", ["striped", "dotted", "checkered"])
def test_version_7_anchors_the_pattern_to_the_shape_centre(pattern: str) -> None:
    """Version 7 is version 1 with the phase set by the shape's centre: the same centre gives the same mask whatever
    the random draws (stripes: one of two, horizontal or vertical), a dot sits on the centre, a stripe edge and a check corner pass through it; moving the centre
    moves the pattern with it. Every other scene is version 1's to the pixel."""
    size, unit = world.IMAGE_SIZE * 4, 4
    centre = (13.3, 17.8)
    masks = [world._pattern_mask(pattern, np.random.default_rng(seed), size, 7, centre) for seed in range(8)]
    assert len({m.tobytes() for m in masks}) == (2 if pattern == "striped" else 1)
    x, y = round(centre[0] * unit), round(centre[1] * unit)  # the centre on the supersampled canvas
    mask = masks[0]
    if pattern == "dotted":
        assert mask[y, x] == 1 and mask[y, x + 2 * unit] == 0  # a dot of radius 1.8 px on the centre
    elif pattern == "striped":  # horizontal or vertical: an edge through the centre along y or along x
        assert mask[y + 1, x] != mask[y - 2, x] or mask[y, x + 1] != mask[y, x - 2]
    else:
        assert mask[y + 1, x + 1] == mask[y - 2, x - 2] != mask[y + 1, x - 2]
    shifted = world._pattern_mask(pattern, np.random.default_rng(0), size, 7, (centre[0] + 2, centre[1] + 2))
    assert np.array_equal(np.roll(mask, (2 * unit, 2 * unit), axis=(0, 1))[12:-12, 12:-12], shifted[12:-12, 12:-12])
    old, attrs = world.render_dataset(300, seed=8, version=1)
    new, _ = world.render_dataset(300, seed=8, version=7)
    changed = {attrs[i][2] for i in range(len(attrs)) if not np.array_equal(old[i], new[i])}
    assert changed == {"striped", "dotted", "checkered"}


def test_unknown_world_version_is_refused() -> None:
    for version in (0, max(world.VERSIONS) + 1, -1):
        with pytest.raises(ValueError, match="unknown world version"):
            world.render_dataset(1, seed=0, version=version)


def test_backgrounds_are_achromatic() -> None:
    images, _ = world.render_dataset(200, seed=11)
    corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1]].reshape(-1, 3).astype(int)
    assert (corners.max(axis=1) - corners.min(axis=1)).max() < 40


@pytest.mark.parametrize("colour", world.CONCEPTS["colour"])
def test_foreground_hue_matches_colour(colour: str) -> None:
    hues = {"red": 0, "yellow": 55, "green": 125, "blue": 225}
    rng = np.random.default_rng(5)
    for _ in range(10):
        img = world.render_array("square", colour, "solid", rng).reshape(-1, 3) / 255.0
        sat = img.max(axis=1) - img.min(axis=1)
        fg = img[sat > 0.4]
        h = np.array([colorsys.rgb_to_hsv(*p)[0] * 360 for p in fg])
        dist = np.minimum(abs(h - hues[colour]), 360 - abs(h - hues[colour]))
        assert np.median(dist) < 15


def test_synonym_splits_are_disjoint_and_unambiguous() -> None:
    seen: dict[str, str] = {}
    for concept in world.all_concepts():
        train, held = set(world.synonyms(concept, "train")), set(world.synonyms(concept, "held-out"))
        assert train and held and not train & held
        assert concept in train
        for word in train | held:
            assert word not in seen, f"{word!r} names both {seen[word]} and {concept}"
            seen[word] = concept
    template_words = {w for t in world.templates("all") for w in re.findall(r"[a-z]+", t.replace("{np}", ""))}
    assert not template_words & set(seen), "a template word is also a concept synonym"
    assert not set(world.GENERIC_NOUNS) & set(seen)


def test_template_splits_are_disjoint() -> None:
    assert set(world.TEMPLATES_TRAIN).isdisjoint(world.TEMPLATES_HELD_OUT)
    assert all("{np}" in t for t in world.templates("all"))


@pytest.mark.parametrize("concept", world.all_concepts())
def test_prompt_splits_are_disjoint_and_name_the_concept(concept: str) -> None:
    train = world.prompts_for(concept, "train")
    held = world.prompts_for(concept, "held-out")
    assert len(train) >= 20 and len(held) >= 20
    assert set(train).isdisjoint(held)
    train_words = world.synonyms(concept, "train")
    held_words = world.synonyms(concept, "held-out")
    for p in train:
        assert any(re.search(rf"\b{w}\b", p) for w in train_words)
        assert not any(re.search(rf"\b{w}\b", p) for w in held_words)
    for p in held:
        assert any(re.search(rf"\b{w}\b", p) for w in train_words + held_words)
    assert world.prompts_for(concept, "held-out") == held


def test_single_concept_prompts_are_present() -> None:
    assert {"red", "a red shape"} <= set(world.prompts_for("red", "train"))
    assert {"star", "a star"} <= set(world.prompts_for("star", "train"))
    assert {"striped", "a striped shape"} <= set(world.prompts_for("striped", "train"))
    assert "ruby" in world.prompts_for("red", "held-out")


def test_captions_cover_cfg_partial_and_full_descriptions() -> None:
    rng = np.random.default_rng(2024)
    caps = [world.sample_caption("star", "red", "striped", rng) for _ in range(3000)]
    empty = sum(c == "" for c in caps) / len(caps)
    assert 0.07 < empty < 0.13
    assert "red" in caps and "star" in caps and "striped" in caps
    assert any(c.endswith("red shape") for c in caps)
    vocab = set(world.vocabulary())
    for c in caps:
        assert set(re.findall(r"[a-z]+|,", c)) <= vocab


def test_caption_splits_are_respected() -> None:
    rng = np.random.default_rng(99)
    held_words = {w for c in world.all_concepts() for w in world.synonyms(c, "held-out")}
    held_template_markers = ["icon of", "simple drawing", "plain picture", "shows"]
    for _ in range(1000):
        attrs = world.sample_attributes(rng)
        cap = world.sample_caption(*attrs, rng, template_split="train", synonym_split="train")
        assert not set(cap.replace(",", " ").split()) & held_words
        assert not any(m in cap for m in held_template_markers)


def test_prompts_use_only_known_words() -> None:
    vocab = set(world.vocabulary())
    for concept in world.all_concepts():
        for split in ("train", "held-out"):
            for p in world.prompts_for(concept, split):
                assert set(re.findall(r"[a-z]+|,", p)) <= vocab, p
