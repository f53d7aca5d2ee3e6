"""EraseConfig: every training option of an erasure, with help text and validation.

The config is saved in the adapter's header, so a file always says how it was made. Unknown keys met when
reading a config (from a newer esd-lora, say) warn instead of being silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, EmptyConceptError, UnknownMethodError

METHODS: dict[str, str] = {
    "esd-x": "cross-attention (attn2 to_q, to_k, to_v, to_out.0): styles, artists, people",
    "esd-x-strict": "cross-attention keys and values only (attn2 to_k, to_v)",
    "esd-u": "every Linear/Conv outside cross-attention, except time embedding and conv_out: objects, nudity",
    "esd-all": "every Linear/Conv layer of the UNet",
}
SAMPLERS = ("trained", "frozen")
PRESERVE_AT = ("erased", "own")
LR_SCHEDULES = ("constant", "linear", "cosine")
DTYPES = ("auto", "fp32", "fp16", "bf16")
ADVERSARIAL_EVERY = 10  # `erase --adversarial`: steps between two adversarial soft-prompt searches
# the recovery attacks of `esd-lora attack` (esd_lora.attack)
ATTACKS: dict[str, str] = {
    "paraphrase": "other phrasings and synonyms of the concept (held-out phrasings, or --paraphrases FILE)",
    "soft-prompt": "free token embeddings appended to the prompt, optimised to bring back the base model's "
                   "prediction for the concept",
    "hard-prompt": "the soft-prompt attack projected onto real words: a prompt anyone can type",
    "textual-inversion": "a new token, in place of the concept's words, learnt on the images the base model "
                         "makes for the concept",
    "completion": "the base model runs the first sampling steps, the erased model finishes",
}


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class EraseConfig:
    """How to train one ESD erasure as a LoRA adapter.

    The target follows the paper: ``e0 - eta * (ep - e0)``, where ``e0`` is the frozen model's unconditional
    prediction and ``ep`` its prediction for the concept. (The authors' later ``esd_sd.py`` writes
    ``ep - eta * (ep - e0)``: its ``eta=2`` is our ``eta=1``.)
    """

    concepts: list[str] = field(metadata={"help": "concept prompt(s) to erase; one is drawn per step"})
    method: str = _opt("esd-x", "which UNet layers the adapter trains: " + ", ".join(METHODS))
    erase_from: str | None = _opt(
        None, "erase the concept only from this prompt (e.g. 'glasses' from 'a scientist'): its frozen "
        "prediction replaces the unconditional one")
    contexts: list[str] = field(default_factory=list, metadata={"help": (
        "context prompts with {} where the concept goes (e.g. 'a {} on a table'): the concept is also erased "
        "inside each, toward the frozen prediction of the context without it, so the words around it are kept")})
    concept_contexts: dict[str, list[str]] = field(default_factory=dict, metadata={"help": (
        "contexts for one of the erased concepts only, {concept: [context, ...]}, on top of contexts: what a "
        "base's scenes give an erasure of concepts whose scenes differ (red and star: 'striped {} star' for red, "
        "'striped red {}' for star)")})
    preserve: list[str] = field(default_factory=list, metadata={"help": (
        "anchor prompts whose frozen predictions the adapter must keep (e.g. neighbouring concepts); one is "
        "drawn per step")})
    preserve_weight: float = _opt(1.0, "weight of the preservation term")
    preserve_at: str = _opt(
        "erased", "where the preservation term compares the trained and frozen predictions: at the x_t of the "
        "erased concept's trajectories ('erased'), or at x_t from the preserved prompts' own trajectories, "
        "sampled by the frozen base ('own': what the base draws for them is kept; costs a second trajectory "
        "source)")
    preserve_text_weight: float = _opt(
        0.0, "weight of a term that keeps the cross-attention keys and values of the preserved prompts and of the "
        "empty prompt: the adapter's change to attn2 to_k / to_v applied to their text embeddings, relative to the "
        "base's keys and values (cheap: no UNet forward); 0 = off")
    eta: float = _opt(1.0, "negative guidance strength (paper form; the authors' later code's eta=2 is ours=1)")
    start_guidance: float = _opt(3.0, "classifier-free guidance used to sample the partial trajectory x_t")
    ddim_steps: int = _opt(50, "DDIM steps of the sampling schedule a stopping step is drawn from")
    iterations: int = _opt(400, "gradient steps")
    lr: float = _opt(2e-4, "Adam learning rate of the adapter")
    lr_schedule: str = _opt(
        "constant", "learning-rate schedule over the iterations: 'constant' (as in the paper), or 'linear' / "
        "'cosine' decay to 0 by the last iteration")
    rank: int = _opt(4, "LoRA rank")
    alpha: float | None = _opt(None, "LoRA alpha (scale = alpha / rank); default: equal to the rank")
    seed: int = _opt(0, "random seed of noise, stopping steps and concept draws")
    bank_size: int = _opt(
        16, "x_t trajectories sampled together and reused until the next refresh (with the frozen sampler, "
        "their guidance passes are reused as the teacher's predictions); 0 samples a fresh trajectory for every "
        "step, as in the paper")
    refresh_every: int = _opt(50, "steps between re-samplings of the trajectory bank")
    refresh_batch: int = _opt(
        0, "trajectories sampled per UNet forward when the bank is re-sampled (a smaller batch, less memory); "
        "0 = as many as fit a fixed activation budget: the whole bank on small models, 8 at SD 1.5 size, "
        "2 at SDXL size")
    adversarial_every: int = _opt(
        0, "adversarial erasure: every this many steps, optimise a soft prompt that brings the concept back "
        "against the current adapter, and add its ESD term to the loss at every step; 0 = off (SD 1.x/2.x only)")
    adversarial_steps: int = _opt(10, "optimisation steps of each adversarial soft-prompt search")
    sample_with: str = _opt(
        "trained", "which model samples x_t: 'trained' (base + adapter, as in the paper) or 'frozen' "
        "(the base alone, as in the authors' later code)")
    device: str | None = _opt(None, "torch device; default: cuda if available, else mps, else cpu")
    dtype: str = _opt("auto", "dtype of the frozen base (the adapter trains in fp32): auto = bf16/fp16 on "
                              "CUDA, fp32 elsewhere")
    gradient_checkpointing: bool = _opt(
        False, "recompute the UNet's activations in the backward pass instead of keeping them: less memory, "
        "more time per step")
    compile: bool = _opt(False, "compile the UNet forward with torch.compile (needs a C++ compiler on CPU, "
                                "Triton on CUDA): slower first steps, faster later ones on large models")

    def __post_init__(self) -> None:
        if isinstance(self.concepts, str):
            self.concepts = [self.concepts]
        self.concepts = [_clean_concept(c) for c in self.concepts]
        if not self.concepts:
            raise EmptyConceptError("no concept given: name at least one concept to erase, e.g. 'van gogh'")
        if self.method not in METHODS:
            raise UnknownMethodError(
                f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if isinstance(self.preserve, str):
            self.preserve = [self.preserve]
        self.preserve = [_clean_concept(p, what="preserve prompt") for p in self.preserve]
        if self.erase_from is not None:
            self.erase_from = _clean_concept(self.erase_from, what="erase_from prompt")
        self.contexts = _clean_contexts(self.contexts)
        if not isinstance(self.concept_contexts, dict):
            raise ConfigError(f"concept_contexts must map erased concepts to lists of contexts, e.g. "
                              f"{{'red': ['striped {{}} star']}}, got {self.concept_contexts!r}")
        cleaned = {}
        for concept, contexts in self.concept_contexts.items():
            name = _clean_concept(concept)
            if name not in self.concepts:
                raise ConfigError(f"concept_contexts names {name!r}, which is not erased (the erased concepts: "
                                  f"{', '.join(self.concepts)}): give contexts for erased concepts only")
            cleaned[name] = _clean_contexts(contexts)
        self.concept_contexts = cleaned
        if self.sample_with not in SAMPLERS:
            raise ConfigError(f"sample_with must be one of {', '.join(SAMPLERS)}, got {self.sample_with!r}")
        for name in ("gradient_checkpointing", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.preserve_at not in PRESERVE_AT:
            raise ConfigError(f"preserve_at must be one of {', '.join(PRESERVE_AT)}, got {self.preserve_at!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name, zero in (("bank_size", "off"), ("adversarial_every", "off"), ("refresh_batch", "automatic")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be 0 ({zero}) or a positive integer, got {value!r}")
        for name in ("iterations", "ddim_steps", "rank", "refresh_every", "adversarial_steps"):
            positive_int(name, getattr(self, name))
        if self.alpha is None:
            self.alpha = float(self.rank)
        for name in ("eta", "start_guidance", "lr", "alpha", "preserve_weight", "preserve_text_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if self.lr <= 0 or self.alpha <= 0:
            raise ConfigError("lr and alpha must be greater than 0")
        for name in ("preserve_weight", "preserve_text_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.preserve_text_weight and self.method == "esd-u":
            raise ConfigError("preserve_text_weight holds cross-attention keys and values, which esd-u does not "
                              "train: use --method esd-x-strict, esd-x or esd-all, or drop the weight")
        if self.preserve_at == "own" and not self.preserve:
            raise ConfigError("preserve_at='own' needs preserve prompts to keep: add some (--preserve TEXT)")
        if (self.contexts or self.concept_contexts) and self.adversarial_every:
            raise ConfigError("contexts and adversarial erasure cannot be combined yet: drop one of them")

    def targets(self) -> list[tuple[str, str | None]]:
        """Every prompt the adapter erases, with the prompt whose frozen prediction it is erased toward (None:
        the unconditional one): each concept toward ``erase_from``, then each concept inside each context
        toward the context without it ('a {} on a table' erases 'a red on a table' toward 'a on a table'), then each
        concept inside its own ``concept_contexts``."""
        pairs = [(c, self.erase_from) for c in self.concepts]
        for context in self.contexts:
            pairs += [(_fill(context, c), _fill(context, "")) for c in self.concepts]
        for c in self.concepts:
            pairs += [(_fill(context, c), _fill(context, "")) for context in self.concept_contexts.get(c, [])]
        return pairs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EraseConfig":
        """Build a config from a dict, warning about (and ignoring) keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ignoring unknown EraseConfig keys {unknown} (written by another esd-lora version?)",
                          stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of one option, for the CLI and the web app."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}[name]


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is a positive integer (not a bool); else a ConfigError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _clean_contexts(value: Any) -> list[str]:
    """A context or a list of them, each checked (:func:`_clean_context`)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"contexts must be a list of prompts with {{}} where the concept goes, got {value!r}")
    return [_clean_context(c) for c in value]


def _clean_context(text: Any) -> str:
    text = _clean_concept(text, what="context")
    if text.count("{}") != 1:
        raise ConfigError(f"context {text!r} must hold {{}} once, where the concept goes, e.g. 'a {{}} on a table'")
    if not _fill(text, ""):
        raise ConfigError(f"context {text!r} has no words around the concept: give some, e.g. 'a {{}} on a table'")
    return text


def _fill(context: str, concept: str) -> str:
    return " ".join(context.replace("{}", concept).split())


def _clean_concept(text: Any, *, what: str = "concept") -> str:
    if not isinstance(text, str) or not text.strip():
        raise EmptyConceptError(f"empty {what}: give a non-empty text such as 'van gogh' or 'red'")
    return " ".join(text.split())


def parse_option(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` (a benchmark's ``--set``) as an erase option ``(name, value)``: dashes in the name are
    underscores, and the value is parsed as JSON if it is JSON (``0.01``, ``[]``), else kept as a string."""
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in EraseConfig.__dataclass_fields__ or name == "concepts":
        raise ConfigError(f"{text}: expected OPTION=VALUE with OPTION one of esd_lora.erase's options "
                          f"({', '.join(f for f in EraseConfig.__dataclass_fields__ if f != 'concepts')})")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value
