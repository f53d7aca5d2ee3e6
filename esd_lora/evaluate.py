"""Measure an erasure: how often images of each concept are still judged as that concept.

On the bundled base, every concept of the bundled world is prompted with its training phrasings and with
held-out phrasings and synonyms; the bundled judge labels each image. The same prompts and seeds are used for
the base and for base + adapters, so the two rates differ only by the adapters.

On a real model there is no built-in judge: :func:`generate_for_judges` takes a prompts CSV in the authors'
format (``prompt, evaluation_seed, case_number``) and writes the images and a manifest for an external judge
(NudeNet, a ResNet-50 classifier, ...), as the paper's evaluation does.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .base_rates import judge_digest, stored_rates
from .config import positive_int
from .errors import ConfigError
from .families import as_pipeline
from .generate import compare_grid
from .outputs import check_folder, write_folder
from .stack import AdapterSpec, apply_adapters, parse_adapter_specs, with_and_without

SPLITS = ("train", "held-out")
CSV_COLUMNS = ("prompt", "evaluation_seed", "case_number")
GRID_SAMPLES = 4
"""Base images per concept in the grid of a report whose base rates were read from a stored measurement."""


class UnknownConceptError(ConfigError):
    """A concept the bundled judge does not know."""


@dataclass
class ConceptScore:
    """Share of images judged as ``concept``, from the base and from base + adapters."""

    concept: str
    dimension: str
    split: str
    base: float
    adapted: float
    images: int


@dataclass
class Report:
    """The result of :func:`evaluate`: one row per concept and phrasing split, plus the settings."""

    rows: list[ConceptScore]
    settings: dict
    adapters: list[dict] = field(default_factory=list)
    samples: dict[str, dict[str, list[Image.Image]]] = field(default_factory=dict, repr=False)

    def rate(self, concept: str, which: str = "adapted", split: str | None = None) -> float:
        """Mean rate of ``concept`` over the splits (or one split), ``which`` = 'base' or 'adapted'."""
        rows = [r for r in self.rows if r.concept == concept and (split is None or r.split == split)]
        return float(np.mean([getattr(r, which) for r in rows]))

    def base_rates(self) -> dict[str, dict[str, float]]:
        """``{concept: {split: base rate}}``, in the report's order."""
        rates: dict[str, dict[str, float]] = {}
        for r in self.rows:
            rates.setdefault(r.concept, {})[r.split] = r.base
        return rates

    def kept(self, erased: list[str]) -> dict[str, float]:
        """For every evaluated concept not in ``erased``: its rate with the adapters relative to its base rate."""
        concepts = dict.fromkeys(r.concept for r in self.rows)
        return {c: self.rate(c) / max(self.rate(c, "base"), 1e-9) for c in concepts if c not in erased}

    def table(self) -> str:
        lines = [f"{'concept':<10} {'dimension':<9} {'split':<8} {'base':>6} {'adapted':>8}  change"]
        for r in self.rows:
            lines.append(f"{r.concept:<10} {r.dimension:<9} {r.split:<8} {r.base:>6.0%} {r.adapted:>8.0%}  "
                         f"{(r.adapted - r.base) * 100:+.0f} pts")
        if "base_rates" in self.settings:
            lines.append(f"base rates: {self.settings['base_rates']}; --fresh-base measures them")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"settings": self.settings, "adapters": self.adapters, "rows": [asdict(r) for r in self.rows]}

    def grid(self, per_concept: int = 4) -> Image.Image:
        """Per concept, ``per_concept`` base images then the same prompts and seeds with the adapters."""
        if not self.adapters:
            return compare_grid({c: images["base"][:per_concept] for c, images in self.samples.items()},
                                title="base model")
        # stored base rates: the grid's base images are all the base images there are (GRID_SAMPLES a concept)
        per_concept = min([per_concept, *(len(images["base"]) for images in self.samples.values())])
        rows = {concept: images["base"][:per_concept] + images["adapted"][:per_concept]
                for concept, images in self.samples.items()}
        return compare_grid(rows, title=f"left {per_concept}: base, right {per_concept}: with adapters")

    def save(self, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write report.json, report.txt and grid.png into the folder ``out`` (atomically, as a whole)."""
        def write(folder: Path) -> None:
            (folder / "report.json").write_text(json.dumps(self.to_dict(), indent=2))
            (folder / "report.txt").write_text(self.table() + "\n")
            self.grid().save(folder / "grid.png")
        return write_folder(out, write, overwrite=overwrite)


def evaluate(base=None, *, adapters: list[AdapterSpec | str] = (), concepts: list[str] | None = None,
             n: int = 32, steps: int = 25, guidance_scale: float = 5.0, seed: int = 0, device: str | None = None,
             dtype: str = "auto", batch_size: int = 128, force: bool = False, fresh_base: bool = False,
             progress: bool = True) -> Report:
    """Judge ``n`` images per concept and phrasing split, from the base and from base + ``adapters``.

    ``base`` defaults to the bundled base model, the only one the bundled judge can score. With adapters, the base's
    rates are read from the base folder's stored measurement when one fits (the same weights, settings, concepts
    and judge, fp32 on the CPU; :mod:`esd_lora.base_rates`), and only the grid's few base images are generated;
    ``fresh_base=True`` generates and judges them all again. ``progress`` shows a progress bar over the images
    (on stderr).
    """
    from .bundled import world

    concepts = check_known(concepts) if concepts else world.all_concepts()
    positive_int("n", n)
    specs = parse_adapter_specs(adapters)
    pipe = as_pipeline(base or "bundled", device=device, dtype=dtype)
    plan = evaluation_plan(concepts, n, seed)
    settings = {"base": str(getattr(pipe, "name_or_path", base)), "n": n, "steps": steps,
                "guidance_scale": guidance_scale, "seed": seed, "judge": judge_digest()}
    stored = None if fresh_base or not specs else stored_rates(pipe, settings, concepts)

    bar = None

    def start_bar() -> None:  # once the adapters are checked: a bad one is a one-line error, with no bar above it
        nonlocal bar
        if bar is None:
            base_pass = len(concepts) * min(GRID_SAMPLES, n) if stored else len(plan) * n  # then base + adapters
            bar = tqdm(total=base_pass + (len(plan) * n if specs else 0), desc="evaluating", unit="image",
                       disable=not progress)

    def run() -> list[list[Image.Image]]:
        start_bar()
        return [generate_images(pipe, prompts, s, steps, guidance_scale, batch_size, bar=bar)
                for _, _, prompts, s in plan]

    def grid_images() -> list[list[Image.Image]]:
        """The stored rates' grid row: the first images of each concept's training split, all in one batch."""
        start_bar()
        count = min(GRID_SAMPLES, n)
        wanted = [(prompts[:count], [s + j for j in range(count)]) if split == "train" else ([], [])
                  for _, split, prompts, s in plan]
        images = iter(generate_images(pipe, [p for prompts, _ in wanted for p in prompts],
                                      [s for _, seeds in wanted for s in seeds], steps, guidance_scale, batch_size,
                                      bar=bar))
        return [[next(images) for _ in prompts] for prompts, _ in wanted]

    try:
        base_images, adapted_images, loaded = with_and_without(pipe, specs, run, force=force,
                                                               base_run=grid_images if stored else None)
    finally:
        if bar is not None:
            bar.close()

    rows, samples = [], {}
    for (concept, split, _, _), before, after in zip(plan, base_images, adapted_images):
        dim = world.concept_dimension(concept)
        rate = lambda images: float(np.mean(judged_as(images, concept)))  # noqa: E731
        base_rate = stored[0][concept][split] if stored else rate(before)
        adapted_rate = base_rate if after is before else rate(after)  # no adapters: the very same images
        rows.append(ConceptScore(concept, dim, split, base_rate, adapted_rate, n))
        if split == "train":
            samples[concept] = {"base": before, "adapted": after}
    if stored:
        settings["base_rates"] = stored[1]
    described = [{"source": s.source, "weight": s.weight, "concepts": a.metadata.config.concepts,
                  "method": a.metadata.config.method} for s, a in zip(specs, loaded)]
    return Report(rows=rows, settings=settings, adapters=described, samples=samples)


def evaluation_plan(concepts: list[str], n: int, seed: int) -> list[tuple[str, str, list[str], int]]:
    """``(concept, split, prompts, first seed)`` for each concept and phrasing split, in order: the ``n`` prompts
    and seeds follow the concept's place in ``concepts`` (another list or order gives other images)."""
    from .bundled import world

    return [(c, split, sample_prompts(world.prompts_for(c, split), n, seed + 100 * i + j),
             seed + 10_000 * i + 1_000 * j)
            for i, c in enumerate(concepts) for j, split in enumerate(SPLITS)]


def check_known(concepts: list[str]) -> list[str]:
    """``concepts`` as a list, if the bundled judge knows every one; else an error naming those it knows."""
    from .bundled import world

    known = world.all_concepts()
    unknown = [c for c in concepts if c not in known]
    if unknown:
        raise UnknownConceptError(f"the bundled judge does not know {', '.join(unknown)}: it knows "
                                  f"{', '.join(known)}")
    return list(concepts)


def judged_as(images: list[Image.Image], concept: str) -> list[bool]:
    """For each image, whether the bundled judge labels it as ``concept`` (in the concept's dimension)."""
    from .bundled import world
    from .bundled.judge import judge

    dim = world.concept_dimension(concept)
    return [lab[dim] == concept for lab in judge(images)]


def read_prompts_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a prompts CSV in the authors' format, checked for the three columns."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts CSV {path} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path} lacks column(s) {', '.join(missing)}: a prompts CSV needs "
                              f"{', '.join(CSV_COLUMNS)}")
        rows = list(reader)
    for i, row in enumerate(rows, start=2):
        try:
            row["evaluation_seed"] = int(row["evaluation_seed"])
        except (TypeError, ValueError):
            raise ConfigError(f"{path} line {i}: evaluation_seed {row['evaluation_seed']!r} is not an integer") \
                from None
    return rows


def generate_for_judges(base, prompts_csv: str | os.PathLike, out: str | os.PathLike, *,
                        adapters: list[AdapterSpec | str] = (), steps: int = 50, guidance_scale: float = 7.5,
                        device: str | None = None, dtype: str = "auto", overwrite: bool = False,
                        force: bool = False, progress: bool = True) -> Path:
    """For each CSV row, generate its image from the base and from base + adapters, seeded by the row.

    Writes ``base/<case_number>.png``, ``adapted/<case_number>.png`` and ``manifest.csv`` (one row per image:
    case_number, prompt, evaluation_seed, model, path) into the folder ``out``; ``progress`` shows a progress bar
    over the images (on stderr).
    """
    check_folder(out, overwrite=overwrite)
    rows = read_prompts_csv(prompts_csv)
    specs = parse_adapter_specs(adapters)
    pipe = as_pipeline(base or "bundled", device=device, dtype=dtype)
    loaded = apply_adapters(pipe, specs, force=force) if specs else []

    models = ("base", "adapted") if loaded else ("base",)

    def write(folder: Path) -> None:
        with (folder / "manifest.csv").open("w", newline="") as f, \
                tqdm(total=len(models) * len(rows), desc="generating", unit="image", disable=not progress) as bar:
            manifest = csv.writer(f)
            manifest.writerow(["case_number", "prompt", "evaluation_seed", "model", "path"])
            for model in models:
                (folder / model).mkdir()
                if loaded:
                    (pipe.disable_lora if model == "base" else pipe.enable_lora)()
                for row in rows:
                    image = generate_images(pipe, [row["prompt"]], row["evaluation_seed"], steps,
                                            guidance_scale, 1, bar=bar)[0]
                    name = f"{model}/{row['case_number']}.png"
                    image.save(folder / name)
                    manifest.writerow([row["case_number"], row["prompt"], row["evaluation_seed"], model, name])
    try:
        return write_folder(out, write, overwrite=overwrite)
    finally:
        if loaded:
            pipe.unload_lora_weights()


def sample_prompts(pool: list[str], n: int, seed: int) -> list[str]:
    """``n`` prompts from ``pool``, without repetition while the pool lasts, deterministic."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(pool)) for _ in range(n // len(pool) + 1)])
    return [pool[i] for i in order[:n]]


@torch.no_grad()
def generate_images(pipe, prompts: list[str], seed: int | list[int], steps: int, guidance: float, batch_size: int,
                    *, bar: tqdm | None = None, **pipe_kwargs) -> list[Image.Image]:
    """One image per prompt, image ``j`` from seed ``seed + j`` (or ``seed[j]``, given a list), in batches;
    ``pipe_kwargs`` go to the pipeline (``output_type="latent"`` gives latents instead of PIL images); ``bar`` (a
    progress bar) counts the images."""
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + j for j in range(len(prompts))]
    images = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        generators = [torch.Generator().manual_seed(s) for s in seeds[start:start + batch_size]]
        images += pipe(batch, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                       **{"output_type": "pil", **pipe_kwargs}).images
        if bar is not None:
            bar.update(len(batch))
    return images
