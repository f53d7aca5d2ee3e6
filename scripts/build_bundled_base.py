"""Rebuild the bundled Stable-Diffusion-architecture base model from scratch, offline.

The model is trained on the synthetic concept world of
:mod:`esd_lora.bundled.world` and saved as a stock ``StableDiffusionPipeline``
(``AutoencoderKL`` + ``UNet2DConditionModel`` + ``CLIPTextModel`` /
``CLIPTokenizer`` + ``DDIMScheduler``) with ``save_pretrained(...,
safe_serialization=True)``.

Stages (all seeded):

1. render a fixed training set of 32x32 images of the concept world;
2. build a byte-level BPE ``CLIPTokenizer`` whose vocabulary covers every
   caption word (each word is a single token);
3. train the ``AutoencoderKL`` (32x32x3 -> 8x8x8 latents, or 16x16x4 with ``--latent-size 16``) on the images and
   set its ``scaling_factor`` so that scaled latents have unit variance;
4. encode the images once, then train the ``UNet2DConditionModel`` and the
   ``CLIPTextModel`` jointly on the latents (epsilon prediction, min-SNR
   weighting, 10 % empty captions for classifier-free guidance, EMA weights);
5. assemble and save the pipeline, and write the tokenizer files.

Usage::

    python scripts/build_bundled_base.py --out esd_lora/bundled/base --overwrite   # one stage, from scratch
    # the shipped base, stage by stage (179 minutes on 2 CPU cores; build_info.json has each stage's figures):
    # three stages on world version 1 (the base shipped until 2026-12-08), then two on version 7
    python scripts/build_bundled_base.py --out s1 --seed 0 --lr 6e-4 --budget-minutes 50 --threads 2
    python scripts/build_bundled_base.py --resume s1 --out s2 --seed 1 --lr 4e-4 --budget-minutes 38 --threads 2
    python scripts/build_bundled_base.py --resume s2 --out s3 --seed 2 --lr 3e-4 --budget-minutes 25 --threads 2
    python scripts/build_bundled_base.py --resume s3 --out s4 --seed 3 --lr 4e-4 --budget-minutes 36 \\
        --oversample dotted=2 star=1.5 --world-version 7 --threads 2
    python scripts/build_bundled_base.py --resume s4 --out s5 --seed 4 --lr 3e-4 --budget-minutes 30 \\
        --oversample dotted=2 red=1.3 striped=1.3 --world-version 7 --threads 2
    # continue the UNet of an earlier build on the current world version, drawing the concepts it draws
    # worst more often
    python scripts/build_bundled_base.py --resume esd_lora/bundled/base --out /tmp/base-next --seed 3 \\
        --lr 4e-4 --budget-minutes 40 --oversample dotted=1.5 star=1.5
    # from scratch on world version 3, the VAE's reconstructions judged by a judge of that version
    python -m esd_lora.bundled.judge --world-version 3 --out /tmp/judge-v3.safetensors
    python scripts/build_bundled_base.py --out /tmp/base-v3 --world-version 3 --judge /tmp/judge-v3.safetensors
    # from scratch on 16x16x4 latents (the UNet gets a 16x16 level in front); --resume continues it as it is
    python scripts/build_bundled_base.py --out /tmp/base-16 --latent-size 16 --budget-minutes 110
    # on a GPU, batch 256 (docs/bundled-base-builds.md, "On a GPU"); --unet-steps high, so the budget ends it
    python scripts/build_bundled_base.py --out /tmp/base-gpu --device cuda --latent-size 16 --world-version 6 \\
        --judge /tmp/judge-v6.safetensors --batch-size 256 --lr 1e-3 --unet-steps 200000 --budget-minutes 9

The bundled model was built in stages (a from-scratch build, then ``--resume`` stages); each stage's settings,
world version (``--world-version``; the shipped base's first three stages rendered version 1, its last two version 7,
see ``world.WORLD_VERSION``) and minutes are in its ``build_info.json`` and model card
(``esd_lora/bundled/base/README.md``).
The UNet runs at ~1.0-1.9 steps/s on 2 cores (batch 64), at 15-18 steps/s of batch 256 on one H200; each
stage's device and batch size are recorded too. ``--budget-minutes`` squeezes the UNet learning-rate schedule
into the remaining wall-clock budget and stops it there, so a slower machine still finishes (with a weaker
model).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import esd_lora  # noqa: E402  (first: its log filter drops transformers' notes on the missing torchvision)
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from esd_lora.bundled import world  # noqa: E402
from esd_lora.bundled.judge import WEIGHTS_PATH, judge, weights_file, weights_from  # noqa: E402
from esd_lora.errors import OutputExistsError  # noqa: E402
from esd_lora.outputs import check_folder, write_folder  # noqa: E402

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
LATENT_SIZES = (8, 16)
"""``--latent-size``: 8 (the shipped base: 8x8x8 latents) or 16 (16x16x4 latents, a 7-pixel pattern period over 3.5
latent pixels instead of 1.75; tried for the dots, see docs/bundled-base-builds.md)."""


def latent_channels(latent_size: int) -> int:
    """8 channels at 8x8 (with 4, the autoencoder blurred the 7-pixel patterns: judge pattern accuracy on its
    reconstructions 83 %), 4 at 16x16, as Stable Diffusion."""
    return 8 if latent_size == 8 else 4


# --------------------------------------------------------------------------- #
# Tokenizer
# --------------------------------------------------------------------------- #


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-to-printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first) to a list of symbols."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == math.inf:
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def build_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocabulary and merges in which every word is one token.

    The base vocabulary holds the 256 byte symbols with and without the
    ``</w>`` end-of-word suffix, like CLIP.  Merges are appended greedily
    (always with the highest rank so far) until each word reduces to a single
    token; a merge with the highest rank never changes words already handled.
    """
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        chars = [_bytes_to_unicode()[b] for b in word.encode("utf-8")]
        while True:
            symbols = _bpe(chars[:-1] + [chars[-1] + "</w>"], ranks)
            if len(symbols) == 1:
                break
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tokens.append(pair[0] + pair[1])
    tokens = list(dict.fromkeys(tokens)) + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer(workdir: Path) -> CLIPTokenizer:
    """Write vocab.json / merges.txt for the world's vocabulary and load a CLIPTokenizer."""
    vocab, merges = build_vocab_and_merges(world.vocabulary())
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    (workdir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(vocab=str(workdir / "vocab.json"), merges=str(workdir / "merges.txt"), model_max_length=MAX_LENGTH)
    for w in world.vocabulary():
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"word {w!r} is not a single token: {ids}"
    return tok


class CaptionTokens:
    """Caches ``input_ids`` of captions (padded to 77 like the pipeline does)."""

    def __init__(self, tokenizer: CLIPTokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[c] for c in captions])


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #


def make_vae(latent_size: int = 8) -> AutoencoderKL:
    """32x32x3 <-> 8x8x8 (or 16x16x4) KL autoencoder (~1 M parameters)."""
    blocks = (32, 64, 64) if latent_size == 8 else (32, 64)  # one downsampling per block but the last
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=blocks,
        layers_per_block=1,
        latent_channels=latent_channels(latent_size),
        norm_num_groups=16,
        sample_size=world.IMAGE_SIZE,
    )


def make_unet(cross_attention_dim: int, latent_size: int = 8) -> UNet2DConditionModel:
    """Cross-attention UNet (~4.8 M parameters) on 8x8x8 latents: levels of 8x8, 4x4 (with cross-attention) and
    2x2; or on 16x16x4 latents: one more level of 16x16 in front, 32 channels and no attention (23 % more time per
    training step at batch 64 on 2 CPU cores, 15 % at batch 1)."""
    plain, attn = ("DownBlock2D", "UpBlock2D"), ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D")
    levels = [(64, attn), (96, attn), (128, plain)]
    if latent_size == 16:
        levels = [(32, plain)] + levels
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels(latent_size),
        out_channels=latent_channels(latent_size),
        layers_per_block=1,
        block_out_channels=tuple(width for width, _ in levels),
        down_block_types=tuple(kinds[0] for _, kinds in levels),
        up_block_types=tuple(kinds[1] for _, kinds in reversed(levels)),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def make_text_encoder(tokenizer: CLIPTokenizer, hidden: int = 128) -> CLIPTextModel:
    """Small CLIP text transformer (~0.7 M parameters)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def make_scheduler() -> DDIMScheduler:
    """DDIM sampler over a 1000-step linear-beta DDPM schedule (epsilon prediction)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


# --------------------------------------------------------------------------- #
# Training stages
# --------------------------------------------------------------------------- #


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """NHWC uint8 -> NCHW float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class Clock:
    """Training progress as the larger of the step fraction and the wall-clock budget fraction."""

    def __init__(self, total_steps: int, budget_s: float = math.inf) -> None:
        self.total_steps = total_steps
        self.start = time.time()
        self.budget_s = budget_s

    def progress(self, step: int) -> float:
        if self.budget_s <= 0:  # spent before the clock started (elapsed / a negative budget would never reach 1)
            return 1.0
        return max(step / self.total_steps, (time.time() - self.start) / self.budget_s)

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0


def cosine_lr(progress: float, warmup: float = 0.03) -> float:
    """Linear warm-up then cosine decay to 10 %, as a multiplier of the peak LR."""
    if progress < warmup:
        return max(progress, 1e-3) / warmup
    frac = (progress - warmup) / (1.0 - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


class ThreadGovernor:
    """Drop to one torch thread while other processes compete for the CPU.

    On a small shared machine, two OpenMP threads competing with another busy
    process slow training down several-fold; one thread degrades gracefully.
    Decided from the 1-minute load average every ``every`` steps.
    """

    def __init__(self, max_threads: int, every: int = 25) -> None:
        self.max_threads = max_threads
        self.every = every
        torch.set_num_threads(max_threads)

    def update(self, step: int) -> None:
        if step % self.every or self.max_threads == 1:
            return
        load = os.getloadavg()[0]
        threads = torch.get_num_threads()
        if threads > 1 and load > threads + 0.7:
            torch.set_num_threads(1)
        elif threads == 1 and load < 1.5:
            torch.set_num_threads(self.max_threads)


def _edge_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical pixel differences: keeps the fine checkered/dotted patterns sharp."""
    return sum(F.l1_loss(r, t) for r, t in ((rec.diff(dim=-1), x.diff(dim=-1)), (rec.diff(dim=-2), x.diff(dim=-2))))


def train_vae(images: torch.Tensor, steps: int, batch_size: int, gen: torch.Generator, device: str,
              governor: ThreadGovernor, latent_size: int = 8) -> AutoencoderKL:
    """Train the autoencoder with L1 + L2 reconstruction losses and a small KL term."""
    vae = make_vae(latent_size).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    clock = Clock(steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(clock.progress(s)))
    bar = tqdm(range(steps), desc="vae", mininterval=5)
    for step in bar:
        governor.update(step)
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        x = images[idx].to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=None)).sample
        kl = post.kl().mean() / post.mean[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-3 * kl + _edge_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", kl=f"{kl.item():.2f}", refresh=False)
    return vae.eval()


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of all images (unscaled)."""
    means, stds = [], []
    for i in range(0, len(images), 512):
        post = vae.encode(images[i : i + 512].to(device)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """In-place exponential moving average of parameters."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)


def caption_labels(caption: str) -> list[int]:
    """Per dimension, 1 + the index of the concept the caption names, or 0 when it names none."""
    named = {}
    for word in caption.replace(",", " ").split():
        concept = _WORD_TO_CONCEPT.get(word)
        if concept is not None:
            named[world.concept_dimension(concept)] = concept
    return [world.CONCEPTS[d].index(named[d]) + 1 if d in named else 0 for d in world.DIMENSIONS]


_WORD_TO_CONCEPT = {w: c for c in world.all_concepts() for w in world.synonyms(c, "all")}


def pretrain_text_encoder(text_encoder: CLIPTextModel, tokens: CaptionTokens, steps: int, batch_size: int,
                          rng: np.random.Generator, device: str, governor: ThreadGovernor) -> CLIPTextModel:
    """Teach the text encoder to write the caption's concepts into every position from the end token on.

    A pipeline pads prompts to 77 tokens, so ~70 of the positions the UNet attends to are padding.  Trained
    jointly with the UNet from scratch, those positions stay nearly the same for every prompt and the UNet
    learns to ignore the text (loss with right and shuffled captions equal after 2,000 steps).  Here linear
    heads read shape / colour / pattern (or "none") from each of those positions; the heads are thrown away
    and the encoder is then frozen while the UNet trains.
    """
    text_encoder = text_encoder.to(device).train()
    hidden = text_encoder.config.hidden_size
    heads = torch.nn.ModuleList([torch.nn.Linear(hidden, len(world.CONCEPTS[d]) + 1) for d in world.DIMENSIONS]).to(device)
    opt = torch.optim.AdamW(list(text_encoder.parameters()) + list(heads.parameters()), lr=1e-3)
    eos = tokens.tokenizer.eos_token_id
    bar = tqdm(range(steps), desc="text encoder", mininterval=10)
    for step in bar:
        governor.update(step)
        captions = [world.sample_caption(*world.sample_attributes(rng), rng) for _ in range(batch_size)]
        ids = tokens(captions).to(device)
        states = text_encoder(ids).last_hidden_state
        after_eos = (torch.arange(ids.shape[1], device=device)[None] >= (ids == eos).int().argmax(1)[:, None]).float()
        targets = torch.tensor([caption_labels(c) for c in captions], device=device)
        loss = 0.0
        for j, head in enumerate(heads):
            per_token = F.cross_entropy(head(states).transpose(1, 2), targets[:, j : j + 1].expand(-1, ids.shape[1]), reduction="none")
            loss = loss + (per_token * after_eos).sum() / after_eos.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return text_encoder.eval().requires_grad_(False)


def parse_oversample(items: list[str]) -> dict[str, float]:
    """``["dotted=2", "star=1.5"]`` -> ``{"dotted": 2.0, "star": 1.5}``, checked against the world's concepts."""
    out = {}
    for item in items:
        concept, sep, weight = item.partition("=")
        if not sep or concept not in world.all_concepts():
            raise SystemExit(f"error: --oversample takes CONCEPT=WEIGHT with a concept of "
                             f"{', '.join(world.all_concepts())}, got {item!r}")
        try:
            out[concept] = float(weight)
        except ValueError:
            raise SystemExit(f"error: --oversample weight must be a number, got {item!r}") from None
        if not (math.isfinite(out[concept]) and out[concept] > 0):
            raise SystemExit(f"error: --oversample weight must be a positive number, got {item!r}")
    return out


def sampling_weights(attrs: list[tuple[str, str, str]], oversample: dict[str, float]) -> torch.Tensor | None:
    """Per-image sampling weights: the product of the weights of the image's concepts (None: uniform)."""
    if not oversample:
        return None
    return torch.tensor([math.prod(oversample.get(c, 1.0) for c in a) for a in attrs], dtype=torch.float64)


def train_unet(
    latents: tuple[torch.Tensor, torch.Tensor],
    attrs: list[tuple[str, str, str]],
    tokens: CaptionTokens,
    text_encoder: CLIPTextModel,
    args: argparse.Namespace,
    gen: torch.Generator,
    rng: np.random.Generator,
    governor: ThreadGovernor,
    budget_s: float = math.inf,
    unet: UNet2DConditionModel | None = None,
) -> UNet2DConditionModel:
    """Train the UNet (a new one, or ``unet`` to continue) with the frozen text encoder; return the EMA copy."""
    device = args.device
    unet = (unet or make_unet(text_encoder.config.hidden_size, args.latent_size)).to(device).train()
    text_encoder = text_encoder.to(device)
    ema_unet = copy.deepcopy(unet).eval()
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    clock = Clock(args.unet_steps, budget_s)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(clock.progress(s)))
    noise_sched = make_scheduler()
    alphas_cumprod = noise_sched.alphas_cumprod.to(device)
    mean, std = latents
    weights = sampling_weights(attrs, args.oversample)
    bar = tqdm(range(args.unet_steps), desc="unet", mininterval=10)
    for step in bar:
        governor.update(step)
        if weights is None:
            idx = torch.randint(0, len(mean), (args.batch_size,), generator=gen)
        else:
            idx = torch.multinomial(weights, args.batch_size, replacement=True, generator=gen)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)).to(device)
        captions = [world.sample_caption(*attrs[i], rng) for i in idx.tolist()]
        with torch.no_grad():
            cond = text_encoder(tokens(captions).to(device)).last_hidden_state
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (args.batch_size,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        xt = noise_sched.add_noise(x0, noise, t)
        pred = unet(xt, t, cond).sample
        snr = alphas_cumprod[t] / (1.0 - alphas_cumprod[t])
        weight = torch.clamp(snr, max=args.min_snr_gamma) / snr
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema_update(ema_unet, unet, min(args.ema_decay, (1 + step) / (10 + step)))
        if step % 250 == 0:
            right, shuffled = conditioning_check(unet, x0, noise, cond, gen)
            bar.write(f"step {step}: loss at t=600 with the right captions {right:.4f}, shuffled {shuffled:.4f}")
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if clock.done(step + 1) and step + 1 < args.unet_steps:
            print(f"time budget reached after {step + 1} UNet steps", flush=True)
            break
    args.unet_steps_done = step + 1
    return ema_unet.cpu()


@torch.no_grad()
def conditioning_check(unet: UNet2DConditionModel, x0: torch.Tensor, noise: torch.Tensor, cond: torch.Tensor,
                       gen: torch.Generator) -> tuple[float, float]:
    """Loss at t=600 with the batch's captions and with shuffled ones: equal means the UNet ignores the text."""
    t = torch.full((len(x0),), 600, device=x0.device)
    xt = make_scheduler().add_noise(x0, noise, t)
    shuffled = cond[torch.randperm(len(cond), generator=gen).to(cond.device)]
    return tuple(F.mse_loss(unet(xt, t, c).sample, noise).item() for c in (cond, shuffled))


def save_pipeline(out: Path, vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer) -> None:
    """Assemble a StableDiffusionPipeline and save it with safetensors."""
    pipe = StableDiffusionPipeline(
        vae=vae.cpu(),
        text_encoder=text_encoder.cpu(),
        tokenizer=tokenizer,
        unet=unet.cpu(),
        scheduler=make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out), safe_serialization=True)


def write_build(out: Path, models: tuple, tokenizer_files: Path, info: dict, *, overwrite: bool = False) -> Path:
    """Save a build to the folder ``out`` as a whole: the pipeline (``models``: vae, unet, text encoder,
    tokenizer), the tokenizer's vocab.json and merges.txt from ``tokenizer_files`` and build_info.json, written
    into a temporary folder beside ``out`` that replaces it only once complete (an existing ``out`` is refused
    unless ``overwrite``). ``out`` may be the build being resumed: it is read before it is replaced."""

    def write(folder: Path) -> None:
        save_pipeline(folder, *models)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(tokenizer_files / name, folder / "tokenizer" / name)
        (folder / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")

    return write_folder(out, write, overwrite=overwrite)


@torch.no_grad()
def vae_reconstruction_accuracy(vae: AutoencoderKL, n: int, seed: int, version: int) -> dict[str, float]:
    """Judge accuracy per dimension on VAE reconstructions of fresh renders of world ``version``."""
    images, attrs = world.render_dataset(n, seed, version=version)
    rec = vae.decode(vae.encode(to_model_space(images).to(vae.device)).latent_dist.mean).sample
    rec_u8 = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    labels = judge(rec_u8)
    return {d: float(np.mean([lab[d] == a[j] for lab, a in zip(labels, attrs)])) for j, d in enumerate(world.DIMENSIONS)}


def describe_device(device: str) -> str:
    """The device a stage ran on, for build_info.json: ``cpu``, or ``cuda (NVIDIA H200)``."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO_ROOT / "esd_lora" / "bundled" / "base",
                   help="output pipeline folder (default: the shipped base's, which exists: pass --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (once the build is done)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-images", type=int, default=30_000, help="size of the rendered training set")
    p.add_argument("--vae-steps", type=int, default=2_000)
    p.add_argument("--vae-batch-size", type=int, default=32)
    p.add_argument("--text-steps", type=int, default=200, help="text-encoder pretraining steps (batch 256)")
    p.add_argument("--unet-steps", type=int, default=6_000)
    p.add_argument("--latent-size", type=int, choices=LATENT_SIZES, default=None,
                   help="latent grid of a from-scratch build: 8 (8x8x8, the shipped base; the default) or 16 "
                        "(16x16x4); --resume keeps the earlier build's")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--min-snr-gamma", type=float, default=5.0)
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="wall-clock budget of the whole build: the UNet learning-rate schedule is squeezed to end with it",
    )
    p.add_argument("--threads", type=int, default=None, help="max torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue training the UNet of an earlier build in DIR (its VAE, tokenizer and text "
                        "encoder are kept); use another --seed so the batches differ")
    p.add_argument("--world-version", type=int, choices=world.VERSIONS, default=world.WORLD_VERSION,
                   help="render the training images of this world version (default: the current one; "
                        "each stage's version is in build_info.json)")
    p.add_argument("--judge", type=weights_file, default=None, metavar="FILE",
                   help="judge the VAE's reconstructions with these weights, a judge of --world-version (python -m "
                        "esd_lora.bundled.judge --world-version V --out FILE; default: the bundled judge)")
    p.add_argument("--oversample", nargs="+", default=[], metavar="CONCEPT=WEIGHT",
                   help="draw training images of these concepts more often, e.g. --oversample dotted=2 star=1.5")
    args = p.parse_args()
    args.oversample = parse_oversample(args.oversample)
    if args.resume is not None and args.latent_size is not None:
        p.error("--latent-size is for a build from scratch: --resume keeps the latent grid of the build it continues")
    if args.resume is None:  # resumed, the grid is the earlier build's (its UNet is continued, no new one made)
        args.latent_size = args.latent_size or 8
    geometry = world.PATTERN_GEOMETRY[args.world_version]
    if args.judge is None and (geometry.images_of or args.world_version) != world.WORLD_VERSION:
        print(f"note: the bundled judge was trained on world version {world.WORLD_VERSION}; --judge FILE measures "
              f"the VAE's reconstructions of version {args.world_version} with a judge of that version", flush=True)
    try:  # refused now, not when the build is saved hours later
        check_folder(args.out, overwrite=args.overwrite)
    except OutputExistsError as err:
        p.error(str(err))
    return args


def main() -> None:
    args = parse_args()
    t0 = time.time()
    governor = ThreadGovernor(args.threads or torch.get_num_threads())
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    images_np, attrs = world.render_dataset(args.n_images, seed=12_345, version=args.world_version)
    images = to_model_space(images_np)
    print(f"rendered {len(images)} images in {time.time() - t0:.0f} s", flush=True)

    stage = {"seed": args.seed, "threads": governor.max_threads, "images": args.n_images, "lr": args.lr,
             "batch_size": args.batch_size, "device": describe_device(args.device),
             "world_version": args.world_version, "esd_lora": esd_lora.__version__}
    if args.oversample:
        stage["oversample"] = args.oversample
    if args.resume:  # keep the earlier build's VAE, tokenizer and text encoder; continue its UNet
        previous = json.loads((args.resume / "build_info.json").read_text())
        tokenizer_files = args.resume / "tokenizer"
        tokenizer = CLIPTokenizer.from_pretrained(args.resume / "tokenizer")
        vae = AutoencoderKL.from_pretrained(args.resume / "vae").to(args.device)
        text_encoder = CLIPTextModel.from_pretrained(args.resume / "text_encoder").eval().requires_grad_(False)
        start_unet = UNet2DConditionModel.from_pretrained(args.resume / "unet")
        mean, std = encode_latents(vae, images, args.device)
        scaling = vae.config.scaling_factor
        stage["resumed_from"] = str(args.resume)
    else:
        previous = {"stages": []}
        tokenizer_files = Path(tempfile.mkdtemp(prefix="bundled_tokenizer_"))
        tokenizer = build_tokenizer(tokenizer_files)
        print(f"tokenizer: {len(tokenizer)} tokens", flush=True)
        vae = train_vae(images, args.vae_steps, args.vae_batch_size, gen, args.device, governor, args.latent_size)
        mean, std = encode_latents(vae, images, args.device)
        scaling = float(1.0 / mean.std())
        vae.register_to_config(scaling_factor=scaling)
        print(f"vae done at {time.time() - t0:.0f} s; latent std {mean.std():.3f} -> scaling_factor {scaling:.4f}", flush=True)
        tokens = CaptionTokens(tokenizer)
        text_encoder = pretrain_text_encoder(make_text_encoder(tokenizer), tokens, args.text_steps, 256, rng, args.device, governor)
        print(f"text encoder done at {time.time() - t0:.0f} s", flush=True)
        stage.update(vae_steps=args.vae_steps, text_steps=args.text_steps, vae_scaling_factor=round(scaling, 4),
                     latent_size=args.latent_size)
        start_unet = None

    if args.world_version not in {s.get("world_version", 1) for s in previous["stages"]}:  # a new VAE or world
        if args.judge:
            stage["judge"] = args.judge.name
        with weights_from(args.judge or WEIGHTS_PATH):
            stage["judge_accuracy_on_vae_reconstructions"] = vae_reconstruction_accuracy(
                vae, 500, args.seed + 777, args.world_version)
        print(f"judge accuracy on VAE reconstructions: {stage['judge_accuracy_on_vae_reconstructions']}", flush=True)
    budget_s = 60 * args.budget_minutes - (time.time() - t0) if args.budget_minutes else math.inf
    if budget_s <= 0:
        print(f"note: --budget-minutes {args.budget_minutes} was spent before the UNet started; training one step",
              flush=True)
    latents = (mean * scaling, std * scaling)
    unet = train_unet(latents, attrs, CaptionTokens(tokenizer), text_encoder, args, gen, rng, governor, budget_s, start_unet)

    minutes = (time.time() - t0) / 60
    stage.update(minutes=round(minutes, 1), unet_steps=args.unet_steps_done, unet_steps_planned=args.unet_steps)
    stages = previous["stages"] + [stage]
    info = {"build_minutes": round(sum(s["minutes"] for s in stages), 1),
            "unet_steps": sum(s["unet_steps"] for s in stages), "stages": stages}
    try:
        write_build(args.out, (vae, unet, text_encoder, tokenizer), tokenizer_files, info, overwrite=args.overwrite)
    finally:  # the temporary tokenizer folder goes even when the build cannot be saved
        if not args.resume:
            shutil.rmtree(tokenizer_files, ignore_errors=True)
    print(f"saved pipeline to {args.out}; this stage took {minutes:.1f} min", flush=True)


if __name__ == "__main__":
    main()
