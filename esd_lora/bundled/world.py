"""A tiny synthetic "concept world" for offline concept-erasure experiments.

Every image is a 32x32 RGB picture of one foreground object described by three
independent concept dimensions:

* ``shape``   - circle, square, triangle, star, cross (the "objects"),
* ``colour``  - red, green, blue, yellow,
* ``pattern`` - solid, striped, dotted, checkered (the "artistic styles").

Size, position, rotation, exact hue and the grey-scale background (dark, mid
grey or light, with a little noise) vary from image to image.  Backgrounds are
always achromatic so they cannot be confused with the four colours.  Patterns
alternate the object's colour with a darker shade (on light/mid backgrounds)
or a lighter tint (on dark backgrounds) of the same hue, so the silhouette of
the object stays visible whatever the pattern.

Captions
--------
Captions are built from a *noun phrase* (e.g. ``"striped crimson star"``)
wrapped in a *template* (e.g. ``"a picture of a {np}"``).  Captions may omit
dimensions (``"a red shape"``, ``"a star"``, ``"striped"``) so that
single-concept prompts are meaningful, and an empty caption is produced
~10 % of the time for classifier-free guidance.

Phrasings are split in two disjoint sets:

* ``"train"``    - :data:`TEMPLATES_TRAIN` x :data:`SYNONYMS_TRAIN`: what an
  erasure method is allowed to see;
* ``"held-out"`` - any phrasing using a template of :data:`TEMPLATES_HELD_OUT`
  or a synonym of :data:`SYNONYMS_HELD_OUT`: kept for measuring how an
  erasure generalises to unseen phrasings.

The bundled base model is trained on the train templates with *all* synonyms
(a text encoder trained from scratch cannot guess the meaning of a word it has
never seen), so held-out synonyms are known to the base model but unseen by an
erasure method, while held-out templates are unseen by both.

Everything uses numpy and PIL only and is deterministic given a
``numpy.random.Generator``.
"""

from __future__ import annotations

import colorsys
import itertools
import math
import re
from typing import Iterable, Literal, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
_SUPERSAMPLE = 4

DIMENSIONS: tuple[str, ...] = ("shape", "colour", "pattern")

CONCEPTS: dict[str, list[str]] = {
    "shape": ["circle", "square", "triangle", "star", "cross"],
    "colour": ["red", "green", "blue", "yellow"],
    "pattern": ["solid", "striped", "dotted", "checkered"],
}

SYNONYMS_TRAIN: dict[str, list[str]] = {
    "circle": ["circle", "disc"],
    "square": ["square", "box"],
    "triangle": ["triangle", "wedge"],
    "star": ["star", "pentagram"],
    "cross": ["cross", "plus"],
    "red": ["red", "crimson", "scarlet"],
    "green": ["green", "emerald", "lime"],
    "blue": ["blue", "azure", "cobalt"],
    "yellow": ["yellow", "golden", "lemon"],
    "solid": ["solid", "flat"],
    "striped": ["striped", "stripy", "lined"],
    "dotted": ["dotted", "spotted"],
    "checkered": ["checkered", "chequered", "checked"],
}

SYNONYMS_HELD_OUT: dict[str, list[str]] = {
    "circle": ["orb"],
    "square": ["tile"],
    "triangle": ["pyramid"],
    "star": ["starburst"],
    "cross": ["crucifix"],
    "red": ["ruby"],
    "green": ["jade"],
    "blue": ["sapphire"],
    "yellow": ["canary"],
    "solid": ["uniform"],
    "striped": ["banded"],
    "dotted": ["polkadot"],
    "checkered": ["chessboard"],
}

GENERIC_NOUNS: list[str] = ["shape", "object"]
"""Nouns standing in for the shape when a caption does not name it."""

TEMPLATES_TRAIN: list[str] = [
    "{np}",
    "a {np}",
    "a picture of a {np}",
    "an image of a {np}",
    "a drawing of a {np}",
    "a {np} on a plain background",
    "a simple {np} icon",
]

TEMPLATES_HELD_OUT: list[str] = [
    "an icon of a {np}",
    "{np}, simple drawing",
    "a plain picture of a {np}",
    "the image shows a {np}",
]

Split = Literal["train", "held-out", "all"]

_HUES: dict[str, float] = {"red": 0.0, "yellow": 55.0, "green": 125.0, "blue": 225.0}
_LATENT_CELL = 4.0
"""Pixels per latent pixel along each axis: the bundled autoencoder maps 32x32 images to 8x8 latents."""

WORLD_VERSION = 1
"""The world the judge was trained on (and the bundled base, with version 7; see below). Versions differ only in how
patterns are drawn (:data:`PATTERN_GEOMETRY`); every version draws the same scene from the same random numbers, so a
build stage of any version can be re-run as it was (its ``build_info.json`` records the version):

* 1: a 7-pixel period at a random phase, dots of radius 1.8 pixels (a fifth of the shape);
* 2: as 1 with dots of radius 2.3 (a third of the shape); tried for a rebuild, not adopted;
* 3: an 8-pixel period whose phase is one of two locked to the 4-pixel grid of the autoencoder's 8x8 latents: stripes
  and checks 4 pixels wide, dots of radius 2 each filling one grid cell; each latent pixel of a pattern is then wholly
  one tone (or one whole dot), and a pattern is a layout of latent pixels, as a shape is;
* 4: as 1, with dots of higher contrast: near-black (on light and mid-grey backgrounds) or near-white (on dark ones)
  tones of the object's hue, where the other patterns keep version 1's shade and tint;
* 5: as 4, with dots of radius 2.2 on a 9-pixel period (2.25 latent pixels, where version 1's 7 pixels are 1.75:
  below the two latent pixels a period needs to be drawn on the latent grid at all);
* 6: as 2 (dots of radius 2.3), with every stripe horizontal: in versions 1 to 5 a striped scene is horizontal or
  vertical at random, a two-way choice the small UNet blends into a plaid of both, which the judge may call dotted;
  tried (two resume stages from the shipped base), not adopted;
* 7: as 1, with the pattern's phase anchored to the shape's centre (a dot, a stripe's edge and a check's corner at the
  centre) instead of drawn at random. The centre is uniform over 5 to 14 pixels (by the shape's size) against a
  7-pixel period, so the phases spread nearly as in version 1 and a version-7 scene is one version 1 could draw (the
  shipped judge reads it); but once a model has placed the shape, the pattern is determined, where a random phase is a
  free choice that a denoiser averages to a flat tone until late in sampling. Adopted on 2026-12-08: the shipped
  base's last two build stages rendered it (its first three rendered version 1).

The default stays 1, the version the shipped judge was trained on and every version-7 scene is also drawn from.
docs/bundled-base-builds.md has what each was measured to do."""


class PatternGeometry(NamedTuple):
    """How a world version draws patterns: ``period`` in pixels, the dots' radius, whether the phase is locked
    to the 4-pixel latent grid (else drawn at random), and ``dot_keep``: the share of the object's colour kept in the
    dots' tone, the rest being black (light and mid-grey backgrounds) or white (dark ones), where every other pattern
    keeps :data:`SHADE_KEEP` (with black) or :data:`TINT_KEEP` (with white); ``None``: the dots do the same.
    ``dot_period``: the dots' own period (``None``: ``period``). ``horizontal_stripes``: every stripe horizontal
    (else horizontal or vertical at random; the random draw is made either way). ``anchored``: the phase is set by
    the shape's centre (else drawn at random; the random draw is made either way). ``images_of``: a version whose
    images these all are (so a judge of that version reads them), ``None``: its own."""

    period: float
    dot_radius: float
    grid_locked: bool
    dot_keep: float | None = None
    dot_period: float | None = None
    horizontal_stripes: bool = False
    anchored: bool = False
    images_of: int | None = None


SHADE_KEEP, TINT_KEEP = 0.38, 0.45
PATTERN_GEOMETRY: dict[int, PatternGeometry] = {
    1: PatternGeometry(7.0, 1.8, False),
    2: PatternGeometry(7.0, 2.3, False),
    3: PatternGeometry(8.0, 2.0, True),
    4: PatternGeometry(7.0, 1.8, False, dot_keep=0.15),
    5: PatternGeometry(7.0, 2.2, False, dot_keep=0.15, dot_period=9.0),
    6: PatternGeometry(7.0, 2.3, False, horizontal_stripes=True),
    7: PatternGeometry(7.0, 1.8, False, anchored=True, images_of=1),
}
VERSIONS: tuple[int, ...] = tuple(sorted(PATTERN_GEOMETRY))


def concept_dimension(concept: str) -> str:
    """Return the dimension (``"shape"``, ``"colour"`` or ``"pattern"``) of ``concept``."""
    for dim, names in CONCEPTS.items():
        if concept in names:
            return dim
    raise KeyError(f"unknown concept {concept!r}")


def all_concepts() -> list[str]:
    """Return the 13 concepts, in dimension order."""
    return [c for dim in DIMENSIONS for c in CONCEPTS[dim]]


def synonyms(concept: str, split: Split = "all") -> list[str]:
    """Return the words naming ``concept`` in the given split."""
    train = SYNONYMS_TRAIN[concept]
    held = SYNONYMS_HELD_OUT[concept]
    return {"train": train, "held-out": held, "all": train + held}[split]


def templates(split: Split = "all") -> list[str]:
    """Return the caption templates of the given split."""
    return {
        "train": TEMPLATES_TRAIN,
        "held-out": TEMPLATES_HELD_OUT,
        "all": TEMPLATES_TRAIN + TEMPLATES_HELD_OUT,
    }[split]


# --------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------- #


def sample_attributes(rng: np.random.Generator) -> tuple[str, str, str]:
    """Draw a uniformly random ``(shape, colour, pattern)`` triple."""
    return tuple(CONCEPTS[d][int(rng.integers(len(CONCEPTS[d])))] for d in DIMENSIONS)  # type: ignore[return-value]


def _colour_rgb(colour: str, rng: np.random.Generator) -> np.ndarray:
    """Return a jittered RGB triple in [0, 1] for a colour concept."""
    hue = (_HUES[colour] + rng.uniform(-7.0, 7.0)) % 360.0
    sat = rng.uniform(0.75, 1.0)
    val = rng.uniform(0.8, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue / 360.0, sat, val), dtype=np.float32)


def _background(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Return an achromatic background colour and its luminance."""
    band = int(rng.integers(3))
    lum = float(rng.uniform(*[(0.02, 0.22), (0.38, 0.58), (0.75, 0.98)][band]))
    tint = rng.uniform(-0.015, 0.015, size=3)
    return np.clip(lum + tint, 0.0, 1.0).astype(np.float32), lum


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Return the vertices of a polygonal shape (square, triangle, star, cross)."""
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(0.78 * x, 0.78 * y) for x, y in pts]
    elif shape == "triangle":
        pts = [(math.cos(math.radians(-90 + 120 * k)), math.sin(math.radians(-90 + 120 * k))) for k in range(3)]
        pts = [(x * 1.1, y * 1.1 + 0.2) for x, y in pts]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.45
            a = math.radians(-90 + 36 * k)
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        w = 0.34
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    else:
        raise KeyError(f"unknown polygonal shape {shape!r}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _shape_mask(shape: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Rasterise a randomly placed shape into a float mask of ``size`` x ``size``; also return its centre ``(cx,
    cy)`` in pixels of the 32x32 image."""
    unit = size / IMAGE_SIZE
    r = rng.uniform(8.0, 12.5)
    cx = rng.uniform(r + 1.0, IMAGE_SIZE - r - 1.0)
    cy = rng.uniform(r + 1.0, IMAGE_SIZE - r - 1.0)
    angle = math.radians(rng.uniform(-15.0, 15.0))
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        rc = 0.9 * r * unit
        draw.ellipse([cx * unit - rc, cy * unit - rc, cx * unit + rc, cy * unit + rc], fill=255)
    else:
        draw.polygon([(x * unit, y * unit) for x, y in _polygon(shape, cx, cy, r, angle)], fill=255)
    return np.asarray(canvas, dtype=np.float32) / 255.0, (cx, cy)


def _pattern_mask(pattern: str, rng: np.random.Generator, size: int, version: int,
                  centre: tuple[float, float]) -> np.ndarray:
    """Return a {0, 1} mask where the pattern's secondary tone is painted; ``centre`` is the shape's, in pixels."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (IMAGE_SIZE / size)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    geometry = PATTERN_GEOMETRY[version]
    p = geometry.dot_period if pattern == "dotted" and geometry.dot_period else geometry.period
    ox, oy = rng.uniform(0.0, p, size=2)  # drawn in every version, so that the rest of the scene is the same
    if geometry.anchored:  # a dot centred, a stripe edge and a check corner, on the shape's centre
        ox, oy = -centre[0] % p, -centre[1] % p
        if pattern == "dotted":
            ox, oy = (ox + p / 2) % p, (oy + p / 2) % p
    if geometry.grid_locked:  # edges on the grid (offset 0 or 4 pixels); dots centred in a cell
        cell = _LATENT_CELL
        ox, oy = cell * np.floor(ox / cell), cell * np.floor(oy / cell)
        if pattern == "dotted":
            ox, oy = ox + cell / 2, oy + cell / 2
    if pattern == "solid":
        return np.zeros((size, size), dtype=np.float32)
    if pattern == "striped":
        horizontal = rng.random() < 0.5  # drawn in every version (see above)
        along = yy if horizontal or geometry.horizontal_stripes else xx
        return (((along + oy) % p) < p / 2).astype(np.float32)
    if pattern == "dotted":
        dx = (xx + ox) % p - p / 2
        dy = (yy + oy) % p - p / 2
        return (dx * dx + dy * dy < geometry.dot_radius ** 2).astype(np.float32)
    if pattern == "checkered":
        return ((((xx + ox) // (p / 2)) + ((yy + oy) // (p / 2))) % 2).astype(np.float32)
    raise KeyError(f"unknown pattern {pattern!r}")


def _check_version(version: int) -> None:
    if version not in VERSIONS:
        raise ValueError(f"unknown world version {version!r}; this world knows versions {list(VERSIONS)}")


def render_array(shape: str, colour: str, pattern: str, rng: np.random.Generator,
                 version: int = WORLD_VERSION) -> np.ndarray:
    """Render one scene as a ``(32, 32, 3)`` uint8 array.

    Args:
        shape: one of ``CONCEPTS["shape"]``.
        colour: one of ``CONCEPTS["colour"]``.
        pattern: one of ``CONCEPTS["pattern"]``.
        rng: source of all randomness (size, position, hue, background, noise).
        version: the world version (see :data:`WORLD_VERSION`); the random draws are the same for every version.
    """
    _check_version(version)
    size = IMAGE_SIZE * _SUPERSAMPLE
    bg, lum = _background(rng)
    primary = _colour_rgb(colour, rng)
    dot_keep = PATTERN_GEOMETRY[version].dot_keep if pattern == "dotted" else None
    shade, tint = (SHADE_KEEP, TINT_KEEP) if dot_keep is None else (dot_keep, dot_keep)
    secondary = primary * shade if lum > 0.33 else tint * primary + (1.0 - tint)
    mask, centre = _shape_mask(shape, rng, size)
    mask = mask[..., None]
    pmask = _pattern_mask(pattern, rng, size, version, centre)[..., None]
    fg = primary * (1.0 - pmask) + secondary * pmask
    hi = bg * (1.0 - mask) + fg * mask
    lo = hi.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    lo = lo + rng.normal(0.0, rng.uniform(0.0, 0.02), size=lo.shape)
    return np.clip(np.round(lo * 255.0), 0, 255).astype(np.uint8)


def render(shape: str, colour: str, pattern: str, rng: np.random.Generator,
           version: int = WORLD_VERSION) -> Image.Image:
    """Render one scene as a 32x32 RGB :class:`PIL.Image.Image` (see :func:`render_array`)."""
    return Image.fromarray(render_array(shape, colour, pattern, rng, version), mode="RGB")


def render_dataset(n: int, seed: int, version: int = WORLD_VERSION) -> tuple[np.ndarray, list[tuple[str, str, str]]]:
    """Render ``n`` random scenes of world ``version``.

    Returns:
        ``(images, attributes)``: an ``(n, 32, 32, 3)`` uint8 array and the list
        of ``(shape, colour, pattern)`` triples.
    """
    _check_version(version)
    rng = np.random.default_rng(seed)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    attrs: list[tuple[str, str, str]] = []
    for i in range(n):
        a = sample_attributes(rng)
        images[i] = render_array(*a, rng, version)
        attrs.append(a)
    return images, attrs


# --------------------------------------------------------------------------- #
# Captions
# --------------------------------------------------------------------------- #


def _article(text: str) -> str:
    """Fix ``a`` / ``an`` in front of vowel-initial words."""
    return re.sub(r"\b([Aa])n? (?=[A-Za-z])([A-Za-z])", lambda m: m.group(1) + ("n " if m.group(2).lower() in "aeiou" else " ") + m.group(2), text)


def noun_phrase(
    shape: str | None,
    colour: str | None,
    pattern: str | None,
    *,
    pattern_first: bool = True,
    bare: bool = False,
) -> str:
    """Build a noun phrase from already chosen *words* (synonyms), any may be ``None``.

    Args:
        shape: word for the shape, or ``None`` to use a generic noun.
        colour: word for the colour, or ``None`` to omit it.
        pattern: word for the pattern, or ``None`` to omit it.
        pattern_first: put the pattern before the colour (else after it).
        bare: when exactly one word is given and it is an adjective, return it
            alone (``"red"``) instead of ``"red shape"``.  When ``shape`` is
            ``None`` and ``bare`` is False, ``GENERIC_NOUNS[0]`` is used unless
            ``shape`` was given as a generic noun by the caller.
    """
    adjectives = [w for w in ((pattern, colour) if pattern_first else (colour, pattern)) if w]
    if bare and shape is None and len(adjectives) == 1:
        return adjectives[0]
    noun = shape if shape is not None else GENERIC_NOUNS[0]
    return " ".join(adjectives + [noun])


def fill_template(template: str, np_text: str) -> str:
    """Insert a noun phrase into a template and fix the articles."""
    return _article(template.format(np=np_text))


def _choose(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def sample_caption(
    shape: str,
    colour: str,
    pattern: str,
    rng: np.random.Generator,
    *,
    template_split: Split = "train",
    synonym_split: Split = "all",
    p_empty: float = 0.1,
) -> str:
    """Sample a caption describing the scene ``(shape, colour, pattern)``.

    With probability ``p_empty`` the caption is ``""``.  Otherwise a random
    non-empty subset of the dimensions is named (all three 40 %, two 30 %,
    one 30 %), each by a random synonym of ``synonym_split``, inside a random
    template of ``template_split``.  Single-dimension captions are sometimes a
    bare word (``"red"``, ``"star"``, ``"striped"``).
    """
    if rng.random() < p_empty:
        return ""
    u = rng.random()
    k = 3 if u < 0.4 else (2 if u < 0.7 else 1)
    named = set(rng.permutation(len(DIMENSIONS))[:k].tolist())
    values = {"shape": shape, "colour": colour, "pattern": pattern}
    words = {
        dim: (_choose(rng, synonyms(values[dim], synonym_split)) if i in named else None)
        for i, dim in enumerate(DIMENSIONS)
    }
    if words["shape"] is None and rng.random() < 0.3:
        words["shape"] = _choose(rng, GENERIC_NOUNS)
    bare = k == 1 and rng.random() < 0.35
    np_text = noun_phrase(words["shape"], words["colour"], words["pattern"], pattern_first=rng.random() < 0.6, bare=bare)
    template = "{np}" if bare else _choose(rng, templates(template_split))
    return fill_template(template, np_text)


def _single_concept_phrases(concept: str, words: Iterable[str]) -> list[str]:
    """Noun phrases naming only ``concept`` (bare word and with generic noun)."""
    dim = concept_dimension(concept)
    out = []
    for w in words:
        if dim == "shape":
            out.append(w)
        else:
            out.append(w)
            out.append(f"{w} {GENERIC_NOUNS[0]}")
    return out


def _full_phrases(concept: str, words: Iterable[str]) -> list[str]:
    """Noun phrases naming all three dimensions, cycling the other concepts."""
    dim = concept_dimension(concept)
    others = [d for d in DIMENSIONS if d != dim]
    combos = list(itertools.product(*[CONCEPTS[d] for d in others]))
    out = []
    for i, w in enumerate(words):
        for j in range(3):
            combo = dict(zip(others, combos[(7 * i + 5 * j) % len(combos)]))
            combo[dim] = None
            shape = w if dim == "shape" else combo["shape"]
            colour = w if dim == "colour" else combo["colour"]
            pattern = w if dim == "pattern" else combo["pattern"]
            out.append(noun_phrase(shape, colour, pattern, pattern_first=j % 2 == 0))
    return out


def _phrasings(concept: str, words: list[str], tmpls: list[str]) -> list[str]:
    """All prompts from single-concept and full noun phrases in the given templates."""
    prompts: list[str] = []
    for np_text in _single_concept_phrases(concept, words) + _full_phrases(concept, words):
        single_word = " " not in np_text
        for t in tmpls:
            if t == "{np}" or not (single_word and concept_dimension(concept) != "shape"):
                prompts.append(fill_template(t, np_text))
    return list(dict.fromkeys(prompts))


def prompts_for(concept: str, split: Literal["train", "held-out"] = "train") -> list[str]:
    """Evaluation prompts for ``concept``, deterministic and de-duplicated.

    ``"train"`` phrasings use only train templates and train synonyms;
    ``"held-out"`` phrasings use a held-out template (with any synonym) or a
    held-out synonym (with any template), so the two lists are disjoint.
    Prompts contain single-concept phrasings (``"red"``, ``"a red shape"``,
    ``"a star"``) and full ones naming the other two dimensions as well.
    """
    if split == "train":
        return _phrasings(concept, synonyms(concept, "train"), TEMPLATES_TRAIN)
    if split == "held-out":
        unseen_words = _phrasings(concept, synonyms(concept, "held-out"), TEMPLATES_TRAIN + TEMPLATES_HELD_OUT)
        unseen_templates = _phrasings(concept, synonyms(concept, "train"), TEMPLATES_HELD_OUT)
        return list(dict.fromkeys(unseen_words + unseen_templates))
    raise ValueError(f"split must be 'train' or 'held-out', got {split!r}")


def vocabulary() -> list[str]:
    """Every word that can appear in a caption or an evaluation prompt."""
    texts = templates("all") + GENERIC_NOUNS + [w for c in all_concepts() for w in synonyms(c, "all")]
    words = set()
    for t in texts:
        words.update(re.findall(r"[a-z]+|[^\sa-z{}]", t.replace("{np}", " ").lower()))
    words.update({"a", "an"})
    return sorted(words)
