"""Red-team an erasure: recovery attacks against base + adapters, and adversarial soft prompts for training.

Each attack tries to make the erased model (base + adapters) generate the erased concept again:

* ``paraphrase``: other phrasings and synonyms of the concept (the bundled world's held-out phrasings, or a
  file of prompts, one a line);
* ``soft-prompt``: a few free token embeddings appended to the concept prompts, optimised so that the erased
  model's noise prediction for prompt + tokens matches the base model's (adapters off) for the prompt alone
  (as the P4D attack does), at the states the erased model passes through when prompted with the concept;
* ``hard-prompt``: the same, with every vector projected onto its nearest real word at each step
  (straight-through, as PEZ does): the result is a prompt anyone can type;
* ``textual-inversion``: a new token in place of the concept's words, learnt on the images (latents) the base
  model makes for the concept prompts (as the concept-inversion attack on erasures does);
* ``completion``: the base model runs the first steps of sampling, the erased model finishes.

Every attack generates ``n`` images from the same seeds as the ``none`` row (the concept prompts on the erased
model). On the bundled base the bundled judge says which images show the concept: the attack success rate. On
any other base the images and a manifest are written for an external judge.

Soft prompts are new tokens added to the pipeline's tokenizer with diffusers' textual-inversion loader for as
long as they are needed; a forward hook on the text encoder's token embedding puts the free vectors in their
rows, so the pipeline's own prompt encoding is used throughout (CLIPTextModel takes no ``inputs_embeds`` in
transformers 5). They need a StableDiffusionPipeline (SD 1.x/2.x); on SDXL only ``paraphrase`` and
``completion`` run.

:class:`Adversary` reuses the soft-prompt search inside an erasure (``EraseConfig.adversarial_every``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .erase import frozen
from .errors import ConfigError, EmptyConceptError, UnsupportedAttackError
from .config import ATTACKS, positive_int
from .evaluate import check_known, generate_images, judged_as, sample_prompts
from .families import BUNDLED_BASE, as_pipeline, base_folder
from .generate import compare_grid
from .objective import esd_loss
from .outputs import write_folder
from .stack import AdapterSpec, apply_adapters, parse_adapter_specs

SOFT_PROMPT_ATTACKS = ("soft-prompt", "hard-prompt", "textual-inversion")
_MATCHING_ATTACKS = ("soft-prompt", "hard-prompt")  # those learning from the bank of erased trajectories
ADVERSARIAL_TOKENS = 4  # free vectors of the adversarial soft prompt
SOFT_PROMPT_LR = 1e-2  # Adam learning rate of soft-prompt vectors (token embeddings are ~0.02 per coordinate)
_BANK_PROMPTS = 8  # base-model trajectories (and latents) the optimising attacks learn from
_BATCH = 4  # states per optimisation step
_GRID_COLUMNS = 8


# --------------------------------------------------------------------------- #
# Soft prompts
# --------------------------------------------------------------------------- #


def check_soft_prompts(pipe) -> None:
    """Refuse a pipeline whose prompts soft tokens cannot be fed to (only SD 1.x/2.x pipelines)."""
    if type(pipe).__name__ != "StableDiffusionPipeline":
        raise UnsupportedAttackError(
            f"soft prompts (the {', '.join(SOFT_PROMPT_ATTACKS)} attacks and adversarial erasure) need a "
            f"StableDiffusionPipeline (SD 1.x/2.x), not a {type(pipe).__name__}: choose --attacks paraphrase "
            "completion, or erase without --adversarial")


class SoftPrompt:
    """``count`` new tokens whose input embeddings are free vectors, appended to prompts to steer them.

    The vectors start at the embeddings of random real words. With ``project``, every forward uses each
    vector's nearest real word (cosine) while gradients update the free vector (straight-through, as PEZ).
    """

    def __init__(self, pipe, count: int, *, generator: torch.Generator, name: str, project: bool = False) -> None:
        self.pipe, self.project = pipe, project
        self.tokens = [f"<{name}-{i}>" for i in range(count)]
        weight = pipe.text_encoder.get_input_embeddings().weight.detach()
        self.word_ids = _word_ids(pipe.tokenizer).to(weight.device)
        self.words = weight[self.word_ids].float()
        start = self.word_ids[torch.randint(len(self.word_ids), (count,), generator=generator).to(weight.device)]
        self.vectors = torch.nn.Parameter(weight[start].float().clone())

    def apply(self, prompt: str) -> str:
        """``prompt`` followed by the soft tokens."""
        return f"{prompt} {' '.join(self.tokens)}"

    def nearest(self) -> torch.Tensor:
        """Index (into ``words``) of the real word nearest (cosine) to each vector."""
        similarity = F.normalize(self.vectors.detach(), dim=-1) @ F.normalize(self.words, dim=-1).T
        return similarity.argmax(-1)

    def typed(self) -> str:
        """The nearest real words as text: what a person would type."""
        tokens = self.pipe.tokenizer.convert_ids_to_tokens(self.word_ids[self.nearest()].tolist())
        return " ".join(t.removesuffix("</w>") for t in tokens)

    def current(self) -> torch.Tensor:
        """The vectors the text encoder sees: free, or projected onto real words with straight-through grads."""
        if not self.project:
            return self.vectors
        return self.vectors + (self.words[self.nearest()] - self.vectors).detach()

    @contextmanager
    def installed(self) -> Iterator["SoftPrompt"]:
        """Inside, the pipeline's tokenizer knows the soft tokens and its text encoder embeds them as
        :meth:`current`; on exit both are as before."""
        pipe = self.pipe
        pipe.load_textual_inversion(self.vectors.detach().to(pipe.text_encoder.dtype), token=self.tokens)
        ids = torch.tensor(pipe.tokenizer.convert_tokens_to_ids(self.tokens))

        def embed(module, args, output):
            hits = (args[0].unsqueeze(-1) == ids.to(args[0].device)).to(output.dtype)  # (batch, length, count)
            replaced = hits @ self.current().to(output.dtype)
            return torch.where(hits.sum(-1, keepdim=True) > 0, replaced, output)

        handle = pipe.text_encoder.get_input_embeddings().register_forward_hook(embed)
        try:
            yield self
        finally:
            handle.remove()
            pipe.unload_textual_inversion(tokens=self.tokens)

    def optimise(self, steps: int, lr: float, loss: Callable[[], torch.Tensor]) -> None:
        """``steps`` Adam steps on the vectors alone (no gradient reaches the models); call inside
        :meth:`installed`."""
        optimizer = torch.optim.Adam([self.vectors], lr=lr)
        for _ in range(steps):
            (self.vectors.grad,) = torch.autograd.grad(loss(), [self.vectors])
            optimizer.step()


def _word_ids(tokenizer) -> torch.Tensor:
    """Ids of the tokenizer's typable whole words: ASCII letters ending a word (CLIP marks them ``</w>``);
    special and added tokens are left out. Without any, every ordinary token."""
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    vocab = {i: t for t, i in tokenizer.get_vocab().items() if i not in special}
    words = [i for i, t in vocab.items() if t.endswith("</w>") and t[:-4].isascii() and t[:-4].isalpha()]
    return torch.tensor(sorted(words or vocab))


def encode(pipe, prompts: list[str]) -> torch.Tensor:
    """The pipeline's own text encoding of ``prompts``, with gradients (soft tokens included)."""
    return pipe.encode_prompt(prompts, pipe.device, 1, False)[0]


def match_loss(pipe, prompts: list[str], x: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the UNet's predictions for ``prompts`` (soft tokens included) at ``x_t`` and ``target``."""
    prediction = pipe.unet(x, t, encoder_hidden_states=encode(pipe, prompts)).sample
    return F.mse_loss(prediction.float(), target.float())


# --------------------------------------------------------------------------- #
# Attacks
# --------------------------------------------------------------------------- #


@dataclass
class Run:
    """The images one attack generated, their prompts and seeds, and (with a judge) which show the concept."""

    prompts: list[str]
    seeds: list[int]
    images: list[Image.Image] = field(repr=False)
    judged: list[bool] | None = None


@dataclass
class AttackResult:
    """One row of the report: an attack's success rate (``None`` without a judge), budget and wall time."""

    attack: str
    success_rate: float | None
    successes: int | None
    images: int
    budget: int
    budget_unit: str
    seconds: float
    detail: str = ""


@dataclass
class AttackReport:
    """The result of :func:`attack`: one row per attack (``none`` first), the base rate and the settings."""

    concept: str
    rows: list[AttackResult]
    base_rate: float | None
    settings: dict
    adapters: list[dict] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict, repr=False)  # "base", "none" and every attack

    def result(self, attack: str) -> AttackResult:
        return next(r for r in self.rows if r.attack == attack)

    def table(self) -> str:
        lines = [f"{'attack':<18} {'success':>7} {'images':>6}  {'budget':<16} {'time':>8}  detail"]
        for r in self.rows:
            rate = "-" if r.success_rate is None else f"{r.success_rate:.0%}"
            budget = f"{r.budget} {r.budget_unit}" if r.budget else "-"
            lines.append(f"{r.attack:<18} {rate:>7} {r.images:>6}  {budget:<16} {r.seconds:>6.1f} s  {r.detail}")
        if self.base_rate is None:
            lines.append(f"no judge for this base: score the images in manifest.csv for {self.concept!r}")
        else:
            lines.append(f"base model without adapters: {self.base_rate:.0%} judged {self.concept} on the "
                         "no-attack prompts and seeds")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"concept": self.concept, "base_rate": self.base_rate, "settings": self.settings,
                "adapters": self.adapters, "rows": [asdict(r) for r in self.rows]}

    def grid(self) -> Image.Image:
        """Per attack, up to 8 images judged as the concept (without a judge: its first 8 images)."""
        rows = {}
        for name, run in self.runs.items():
            shown = run.images if run.judged is None else [im for im, hit in zip(run.images, run.judged) if hit]
            label = name if run.judged is None else f"{name}: {sum(run.judged)}/{len(run.images)}"
            rows[label] = shown[:_GRID_COLUMNS]
        if not any(rows.values()):
            return compare_grid({name: run.images[:_GRID_COLUMNS] for name, run in self.runs.items()},
                                title=f"no image judged {self.concept}: the first images of each run")
        judged = self.base_rate is not None
        title = f"images judged {self.concept}" if judged else f"first images for {self.concept!r}"
        return compare_grid(rows, title=title)

    def save(self, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write report.json, report.txt, grid.png, every image (images/RUN/J.png) and manifest.csv into
        the folder ``out``, atomically as a whole."""
        def write(folder: Path) -> None:
            (folder / "report.json").write_text(json.dumps(self.to_dict(), indent=2))
            (folder / "report.txt").write_text(self.table() + "\n")
            self.grid().save(folder / "grid.png")
            with (folder / "manifest.csv").open("w", newline="") as f:
                manifest = csv.writer(f)
                manifest.writerow(["run", "index", "prompt", "seed", "path", "judged_as_concept"])
                for name, run in self.runs.items():
                    (folder / "images" / name).mkdir(parents=True)
                    for j, (prompt, seed, image) in enumerate(zip(run.prompts, run.seeds, run.images)):
                        path = f"images/{name}/{j}.png"
                        image.save(folder / path)
                        manifest.writerow([name, j, prompt, seed, path, "" if run.judged is None else run.judged[j]])
        return write_folder(out, write, overwrite=overwrite)


def attack(base=None, *, adapters: list[AdapterSpec | str], concept: str, attacks: list[str] | None = None,
           budget: int = 200, n: int = 16, steps: int = 25, guidance_scale: float = 5.0, seed: int = 0,
           tokens: int = 4, handoff: float = 0.25, lr: float = SOFT_PROMPT_LR,
           paraphrases: str | os.PathLike | None = None, device: str | None = None, dtype: str = "auto",
           force: bool = False, progress: bool = True) -> AttackReport:
    """Run recovery ``attacks`` (default: every one that applies) against ``base`` + ``adapters``.

    ``budget`` is the number of optimisation steps of the soft-prompt, hard-prompt and textual-inversion
    attacks; ``tokens`` the vectors of the soft and hard prompts; ``handoff`` the share of sampling steps the
    base model runs in the completion attack. ``base`` defaults to the bundled base, the only one the bundled
    judge scores (``concept`` must then be one it knows); elsewhere the rates are ``None`` and
    :meth:`AttackReport.save` writes the images for an external judge. ``progress`` shows a progress bar over the
    runs (on stderr).
    """
    from .bundled import world

    specs = parse_adapter_specs(adapters)
    if not specs:
        raise ConfigError("no adapter to attack: give at least one, e.g. --adapter no-red.safetensors")
    if not isinstance(concept, str) or not concept.strip():
        raise EmptyConceptError("empty concept: name the erased concept to attack, e.g. --concept red")
    concept = " ".join(concept.split())
    for name, value in (("budget", budget), ("n", n), ("steps", steps), ("tokens", tokens)):
        positive_int(name, value)
    if isinstance(handoff, bool) or not isinstance(handoff, (int, float)) or not 0 < handoff < 1:
        raise ConfigError(f"handoff must be a share of the sampling steps between 0 and 1, got {handoff!r}")
    unknown = sorted(set(attacks or ()) - set(ATTACKS))
    if unknown:
        raise ConfigError(f"unknown attack(s) {', '.join(unknown)}: choose from {', '.join(ATTACKS)}")
    judged = is_bundled(base)
    if judged:
        check_known([concept])
    phrasings = (read_paraphrases(paraphrases) if paraphrases is not None
                 else world.prompts_for(concept, "held-out") if judged else None)
    pipe = as_pipeline(base or "bundled", device=device, dtype=dtype)
    chosen = _choose(attacks, pipe, phrasings is not None)
    loaded = apply_adapters(pipe, specs, force=force)  # every file checked before any work is done
    try:
        pool, words = ((world.prompts_for(concept, "train"), world.synonyms(concept)) if judged
                       else ([concept], [concept]))
        attacker = _Attacker(pipe, pool, phrasings, words, n=n, steps=steps, guidance=guidance_scale, seed=seed,
                             budget=budget, tokens=tokens, handoff=handoff, lr=lr)
        runs, rows = {}, []
        # closed also when a run fails, so the error is not printed into a half-drawn bar
        with tqdm(("base", "none", *chosen), desc="attacking", unit="run", disable=not progress) as bar:
            for name in bar:
                bar.set_postfix_str(name)
                if name in _MATCHING_ATTACKS:
                    attacker.bank()  # sampled once; its time is counted in every attack that learns from it
                started = time.perf_counter()
                run, spent, unit, detail = attacker.run(name)
                seconds = time.perf_counter() - started + attacker.bank_seconds(name)
                if judged:
                    run.judged = judged_as(run.images, concept)
                runs[name] = run
                if name != "base":
                    hits = sum(run.judged) if judged else None
                    rows.append(AttackResult(name, hits / len(run.images) if judged else None, hits,
                                             len(run.images), spent, unit, round(seconds, 2), detail))
    finally:
        pipe.unload_lora_weights()
    settings = {"base": str(getattr(pipe, "name_or_path", base)), "n": n, "steps": steps,
                "guidance_scale": guidance_scale, "seed": seed, "budget": budget, "tokens": tokens,
                "handoff": handoff, "lr": lr,
                "skipped": {a: _why_skipped(a, pipe, phrasings is not None) or "not asked for"
                            for a in ATTACKS if a not in chosen}}
    described = [{"source": s.source, "weight": s.weight, "concepts": a.metadata.config.concepts,
                  "method": a.metadata.config.method, "sha256": a.sha256} for s, a in zip(specs, loaded)]
    base_rate = float(np.mean(runs["base"].judged)) if judged else None
    return AttackReport(concept=concept, rows=rows, base_rate=base_rate, settings=settings, adapters=described,
                        runs=runs)


def is_bundled(base) -> bool:
    """Whether ``base`` (a name, folder or loaded pipeline; ``None`` = bundled) is the bundled base model."""
    if base is None:
        return True
    folder = base_folder(base)  # None for a pipeline built in memory: not the bundled base
    return folder is not None and folder.resolve() == Path(BUNDLED_BASE).resolve()


def read_paraphrases(path: str | os.PathLike) -> list[str]:
    """The prompts of a paraphrase file: one a line; blank lines and lines starting with '#' are skipped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"paraphrase file {path} does not exist: give a text file with one prompt a line")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ConfigError(f"paraphrase file {path} holds no prompt: write one prompt a line")
    return prompts


def _why_skipped(name: str, pipe, have_phrasings: bool) -> str | None:
    """Why attack ``name`` cannot run here (``None``: it can)."""
    if name == "paraphrase" and not have_phrasings:
        return "no phrasings: pass --paraphrases FILE (a concept outside the bundled world)"
    if name in SOFT_PROMPT_ATTACKS and type(pipe).__name__ != "StableDiffusionPipeline":
        return f"soft prompts need a StableDiffusionPipeline (SD 1.x/2.x), not a {type(pipe).__name__}"
    return None


def _choose(attacks: list[str] | None, pipe, have_phrasings: bool) -> list[str]:
    """The attacks to run: those asked for (refusing one that cannot run here), or every one that can."""
    if attacks is None:
        return [a for a in ATTACKS if _why_skipped(a, pipe, have_phrasings) is None]
    if "paraphrase" in attacks and not have_phrasings:
        raise ConfigError("the paraphrase attack has no phrasings for a concept outside the bundled world: pass "
                          "--paraphrases FILE (one prompt a line), or leave it out of --attacks")
    if set(attacks) & set(SOFT_PROMPT_ATTACKS):
        check_soft_prompts(pipe)
    return list(dict.fromkeys(attacks))


@dataclass
class _Bank:
    """The states the erased model passes through when sampling the concept prompts, with the base model's
    conditional prediction at each: where the erasure shows, and what undoing it looks like."""

    prompts: list[str]
    x: torch.Tensor
    t: torch.Tensor
    trajectory: torch.Tensor
    target: torch.Tensor
    seconds: float

    def sample(self, soft: SoftPrompt, size: int, generator: torch.Generator):
        """``size`` random states: ``(prompts + soft tokens, x_t, t, base prediction)``."""
        pick = torch.randint(len(self.x), (size,), generator=generator)
        return ([soft.apply(self.prompts[i]) for i in self.trajectory[pick]], self.x[pick], self.t[pick],
                self.target[pick])


class _Attacker:
    """Runs the attacks on a pipeline carrying the adapters; every run uses the seeds of the ``none`` run."""

    def __init__(self, pipe, pool: list[str], phrasings: list[str] | None, words: list[str], *, n: int, steps: int,
                 guidance: float, seed: int, budget: int, tokens: int, handoff: float, lr: float) -> None:
        self.pipe, self.pool, self.phrasings = pipe, pool, phrasings
        self.concept_words = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
        self.n, self.steps, self.guidance, self.seed = n, steps, guidance, seed
        self.budget, self.tokens, self.handoff, self.lr = budget, tokens, handoff, lr
        self.prompts = sample_prompts(pool, n, seed)
        self.generator = torch.Generator().manual_seed(seed)
        self._bank: _Bank | None = None

    def run(self, name: str) -> tuple[Run, int, str, str]:
        """Run ``name``: ``(run, budget spent, its unit, detail)``."""
        return getattr(self, name.replace("-", "_"))()

    def generate(self, prompts: list[str], **pipe_kwargs) -> Run:
        images = generate_images(self.pipe, prompts, self.seed, self.steps, self.guidance, self.n, **pipe_kwargs)
        return Run(prompts, [self.seed + j for j in range(len(prompts))], images)

    def base(self):
        with frozen(self.pipe.unet):
            return self.generate(self.prompts), 0, "", "the base model, adapters off"

    def none(self):
        return self.generate(self.prompts), 0, "", "the concept prompts, no attack"

    def paraphrase(self):
        prompts = sample_prompts(self.phrasings, self.n, self.seed + 1)
        return self.generate(prompts), len(self.phrasings), "phrasings", f"e.g. {prompts[0]!r}"

    def soft_prompt(self):
        soft = self._matched(project=False)
        with soft.installed():
            run = self.generate([soft.apply(p) for p in self.prompts])
        return run, self.budget, "steps", f"{self.tokens} free vectors appended"

    def hard_prompt(self):
        typed = self._matched(project=True).typed()
        run = self.generate([f"{p} {typed}" for p in self.prompts])
        return run, self.budget, "steps", f"appended {typed!r}"

    def textual_inversion(self):
        """A new token, in place of the concept's words, learnt on the images the base model makes for the
        concept prompts. At a noised image its target is the base model's prediction for the concept prompt,
        not the drawn noise: that estimates the same optimum with far less variance, so tens of steps do."""
        pipe, scheduler = self.pipe, self.pipe.scheduler
        prompts = sample_prompts(self.pool, _BANK_PROMPTS, self.seed + 2)
        with frozen(pipe.unet):  # what the base model makes for the concept, as latents
            latents = torch.stack(generate_images(pipe, prompts, self.seed + 10_000, self.steps, self.guidance,
                                                  len(prompts), output_type="latent"))
        soft = SoftPrompt(pipe, 1, generator=self.generator, name="esd-ti")

        def renamed(prompt: str) -> str:
            return self.concept_words.sub(soft.tokens[0], prompt)

        def loss() -> torch.Tensor:
            pick = torch.randint(len(latents), (_BATCH,), generator=self.generator)
            x0 = latents[pick]
            noise = torch.randn(x0.shape, generator=self.generator).to(x0)
            t = torch.randint(scheduler.config.num_train_timesteps, (_BATCH,), generator=self.generator)
            x = scheduler.add_noise(x0, noise, t.to(x0.device))
            chosen = [prompts[i] for i in pick]
            with torch.no_grad(), frozen(pipe.unet):
                target = pipe.unet(x, t, encoder_hidden_states=encode(pipe, chosen)).sample
            return match_loss(pipe, [renamed(p) for p in chosen], x, t, target)

        with soft.installed():
            soft.optimise(self.budget, self.lr, loss)
            run = self.generate([renamed(p) for p in self.prompts])
        return run, self.budget, "steps", f"a new word for the concept, learnt on {len(latents)} base images"

    def completion(self):
        first = min(max(1, round(self.handoff * self.steps)), max(1, self.steps - 1))

        def hand_over(pipe, i, t, kwargs):
            if i == first - 1:
                pipe.unet.enable_adapters()
            return kwargs

        with frozen(self.pipe.unet):
            run = self.generate(self.prompts, callback_on_step_end=hand_over)
        return run, first, "base steps", f"the base model runs {first} of {self.steps} steps"

    def _matched(self, *, project: bool) -> SoftPrompt:
        """A soft prompt optimised so that the erased model's prediction for prompt + soft tokens matches the
        base model's for the prompt alone, at states of the erased model's trajectories."""
        bank = self.bank()
        soft = SoftPrompt(self.pipe, self.tokens, generator=self.generator, name="esd-attack", project=project)
        with soft.installed():
            soft.optimise(self.budget, self.lr, lambda: match_loss(self.pipe, *bank.sample(soft, _BATCH,
                                                                                           self.generator)))
        return soft

    def bank(self) -> _Bank:
        """The erased model's trajectories for the concept (sampled once, on first use)."""
        if self._bank is None:
            self._bank = _sample_bank(self.pipe, sample_prompts(self.pool, _BANK_PROMPTS, self.seed + 2),
                                      self.steps, self.guidance, self.seed + 10_000)
        return self._bank

    def bank_seconds(self, name: str) -> float:
        """Time to sample the bank, counted in the wall time of every attack that learns from it."""
        return self.bank().seconds if name in _MATCHING_ATTACKS else 0.0


def _sample_bank(pipe, prompts: list[str], steps: int, guidance: float, seed: int) -> _Bank:
    """Sample the erased model for ``prompts``, keep every intermediate state and ask the base model (adapters
    off) for its prediction there."""
    started = time.perf_counter()
    states: list[tuple[torch.Tensor, torch.Tensor]] = []

    def collect(pipe, i, t, kwargs):
        timesteps = pipe.scheduler.timesteps
        if i + 1 < len(timesteps):  # the latents after step i are the input of step i + 1
            states.append((kwargs["latents"], timesteps[i + 1].expand(len(prompts))))
        return kwargs

    generate_images(pipe, prompts, seed, steps, guidance, len(prompts), output_type="latent",
                    callback_on_step_end=collect)
    if not states:
        raise ConfigError("the soft- and hard-prompt attacks need at least 2 sampling steps: raise --steps")
    with torch.no_grad(), frozen(pipe.unet):
        hidden = encode(pipe, prompts)
        targets = [pipe.unet(x, t, encoder_hidden_states=hidden).sample for x, t in states]
    return _Bank(prompts=prompts, x=torch.cat([x for x, _ in states]), t=torch.cat([t for _, t in states]),
                 trajectory=torch.arange(len(prompts)).repeat(len(states)), target=torch.cat(targets),
                 seconds=time.perf_counter() - started)


# --------------------------------------------------------------------------- #
# Adversarial erasure
# --------------------------------------------------------------------------- #


class Adversary:
    """Adversarial soft prompts inside an erasure (``EraseConfig.adversarial_every`` > 0).

    Every ``adversarial_every`` steps, a soft prompt is optimised from random words, as the soft-prompt attack
    starts (``adversarial_steps`` Adam steps), so that the adapter being trained, given the concept + soft
    tokens, predicts what the frozen model predicts for the concept at the last ``adversarial_every`` training
    states. Every step then adds the ESD loss of the trained model for the concept + that soft prompt: the
    erasure must hold against it too. The preservation term of the erasure keeps the other concepts. (Warm
    starting each search from the previous prompt did worse on the bundled base: fresh soft-prompt attacks
    then succeeded more often than against a plain erasure.)
    """

    def __init__(self, pipe, config) -> None:
        check_soft_prompts(pipe)
        self.pipe, self.config = pipe, config
        self.generator = torch.Generator().manual_seed(config.seed)  # its own: the erasure's draws stay the same
        self.recent: deque = deque(maxlen=config.adversarial_every)
        self.hidden: torch.Tensor | None = None

    def esd_term(self, step: int, x: torch.Tensor, t: torch.Tensor, i: int, e0: torch.Tensor,
                 ep: torch.Tensor) -> torch.Tensor:
        """The ESD loss of the trained model for concept ``i`` + the current adversarial prompt at ``x_t``."""
        self.recent.append((x, t, i, ep))
        if step % self.config.adversarial_every == 0:
            self._search()
        student = self.pipe.unet(x, t, encoder_hidden_states=self.hidden[i : i + 1]).sample
        return esd_loss(student, e0, ep, self.config.eta)

    def _search(self) -> None:
        x = torch.cat([s[0] for s in self.recent])
        t = torch.stack([torch.as_tensor(s[1], device=x.device) for s in self.recent])
        soft = SoftPrompt(self.pipe, ADVERSARIAL_TOKENS, generator=self.generator, name="esd-adversary")
        prompts = [soft.apply(self.config.concepts[s[2]]) for s in self.recent]
        target = torch.cat([s[3] for s in self.recent])
        with soft.installed():
            soft.optimise(self.config.adversarial_steps, SOFT_PROMPT_LR,
                          lambda: match_loss(self.pipe, prompts, x, t, target))
            with torch.no_grad():
                self.hidden = encode(self.pipe, [soft.apply(c) for c in self.config.concepts])
