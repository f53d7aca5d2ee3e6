"""Judge for the concept world: labels shape, colour and pattern of 32x32 images.

The judge is a tiny convolutional network (about 70 k parameters, stored as
``judge.safetensors`` next to this file) with one classification head per
dimension.  It was trained on fresh renders of :mod:`world` with blur, noise,
contrast and colour-jitter augmentations so that it also labels the slightly
blurry images produced by a diffusion model.

Usage::

    from esd_lora.bundled.judge import judge
    labels = judge(images)   # [{"shape": "star", "colour": "red", "pattern": "solid"}, ...]

Rebuild the weights (3 to 10 minutes on 2 CPU cores)::

    python -m esd_lora.bundled.judge
    # a judge for another world version, to measure a base built on it (scripts/check_bundled_base.py --judge)
    python -m esd_lora.bundled.judge --world-version 3 --out judge-v3.safetensors
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

try:
    from . import world
    from ..outputs import atomic_path
except ImportError:  # executed as a plain script: the package's root is two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import world  # type: ignore[no-redef]
    from esd_lora.outputs import atomic_path

WEIGHTS_PATH = Path(__file__).with_name("judge.safetensors")
TRAIN_SEED = 1_000


class JudgeNet(nn.Module):
    """Small CNN with three heads (shape, colour, pattern)."""

    def __init__(self) -> None:
        super().__init__()
        chans = [(3, 24, 1), (24, 32, 2), (32, 48, 1), (48, 64, 2), (64, 64, 2)]
        layers: list[nn.Module] = []
        for cin, cout, stride in chans:
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({d: nn.Linear(64, len(world.CONCEPTS[d])) for d in world.DIMENSIONS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map images in [-1, 1] (NCHW) to logits per dimension."""
        h = self.features(x).mean(dim=(2, 3))
        return {d: head(h) for d, head in self.heads.items()}


def to_tensor(images: Sequence[Image.Image] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Convert PIL images or an NHWC uint8 array to an NCHW float tensor in [-1, 1]."""
    if isinstance(images, torch.Tensor):
        arr = images.detach().cpu().numpy()
    elif isinstance(images, np.ndarray):
        arr = images
    else:
        arr = np.stack([np.asarray(im.convert("RGB").resize((world.IMAGE_SIZE, world.IMAGE_SIZE), Image.BILINEAR)) for im in images])
    if arr.ndim == 3:
        arr = arr[None]
    x = torch.from_numpy(np.ascontiguousarray(arr)).float().permute(0, 3, 1, 2)
    if x.shape[-1] != world.IMAGE_SIZE:
        x = F.interpolate(x, size=(world.IMAGE_SIZE, world.IMAGE_SIZE), mode="bilinear", antialias=True)
    return x / 127.5 - 1.0


_weights = [WEIGHTS_PATH]  # the file judge() uses: the bundled one unless inside ``weights_from``


@lru_cache(maxsize=4)
def _load(path: str) -> JudgeNet:
    net = JudgeNet()
    net.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return net.eval()


def load_weights(path: str | os.PathLike) -> JudgeNet:
    """Load the judge weights in ``path`` (cached; do not modify the network returned)."""
    return _load(str(path))


def save_weights(net: JudgeNet, path: str | os.PathLike) -> None:
    """Save ``net``'s weights to ``path`` through a temporary file, so that an interrupted save leaves no judge."""
    with atomic_path(Path(path)) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    _load.cache_clear()


def weights_problem(path: str | os.PathLike) -> str | None:
    """``None`` if ``path`` holds judge weights, else what is wrong with it, in one line (for a ``--judge`` option)."""
    if not Path(path).is_file():
        return "no such file; train one with python -m esd_lora.bundled.judge --out FILE"
    try:
        load_weights(path)
    except (SafetensorError, RuntimeError, OSError, ValueError) as err:
        return f"not the weights of a bundled judge ({str(err).splitlines()[0]})"
    return None


def weights_file(path: str) -> Path:
    """An argparse ``type`` for a ``--judge FILE`` option: ``path``, if it holds judge weights; else an argument error
    with the one line of :func:`weights_problem`, before any work."""
    if problem := weights_problem(path):
        raise argparse.ArgumentTypeError(f"{path}: {problem}")
    return Path(path)


def weights_in_use() -> Path:
    """The judge weights file that :func:`judge` uses now: the bundled one, or that of the innermost
    :func:`weights_from` block."""
    return _weights[-1]


def load_judge() -> JudgeNet:
    """Load the judge weights in use (cached): the bundled ones, or those of :func:`weights_from`."""
    return load_weights(weights_in_use())


@contextmanager
def weights_from(path: str | os.PathLike) -> Iterator[JudgeNet]:
    """Judge with the weights in ``path`` (say, a judge trained on another world version) inside the block;
    :func:`judge`, and so ``esd_lora.evaluate``, use them. The file is loaded first: one that holds no judge
    weights raises here."""
    net = load_weights(path)
    _weights.append(Path(path))
    try:
        yield net
    finally:
        _weights.pop()


@torch.no_grad()
def judge_probs(images: Sequence[Image.Image] | np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Return per-dimension class probabilities, arrays of shape ``(n, n_classes)``."""
    net = load_judge()
    x = to_tensor(images)
    out: dict[str, list[torch.Tensor]] = {d: [] for d in world.DIMENSIONS}
    for i in range(0, len(x), batch_size):
        logits = net(x[i : i + batch_size])
        for d in world.DIMENSIONS:
            out[d].append(logits[d].softmax(-1))
    return {d: torch.cat(v).numpy() for d, v in out.items()}


def judge(images: Sequence[Image.Image] | np.ndarray, min_confidence: float = 0.0) -> list[dict[str, str | None]]:
    """Label each image with its shape, colour and pattern.

    Args:
        images: a list of PIL images or an ``(n, H, W, 3)`` uint8 array
            (resized to 32x32 if needed).
        min_confidence: a label whose probability is below this is ``None``.

    Returns:
        One dict per image with keys ``"shape"``, ``"colour"``, ``"pattern"``.
    """
    probs = judge_probs(images)
    labels: list[dict[str, str | None]] = []
    for i in range(len(probs["shape"])):
        row: dict[str, str | None] = {}
        for d in world.DIMENSIONS:
            k = int(probs[d][i].argmax())
            row[d] = world.CONCEPTS[d][k] if probs[d][i, k] >= min_confidence else None
        labels.append(row)
    return labels


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


def _labels(attrs: list[tuple[str, str, str]]) -> dict[str, torch.Tensor]:
    return {d: torch.tensor([world.CONCEPTS[d].index(a[j]) for a in attrs]) for j, d in enumerate(world.DIMENSIONS)}


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur a batch with an isotropic Gaussian of standard deviation ``sigma`` pixels."""
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, noise, contrast and per-channel gain jitter mimicking generated images."""
    n = x.shape[0]
    half = n // 2
    sigma = 0.3 + 0.8 * float(torch.rand((), generator=gen))
    x = torch.cat([_gaussian_blur(x[:half], sigma), x[half:]])
    gain = 1.0 + 0.08 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
    contrast = 1.0 + 0.3 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    x = x * gain * contrast
    x = x + torch.randn(x.shape, generator=gen) * 0.06 * torch.rand(n, 1, 1, 1, generator=gen)
    return x.clamp(-1.0, 1.0)


def train_judge(n_images: int = 40_000, steps: int = 2_500, batch_size: int = 128, seed: int = TRAIN_SEED,
                versions: Sequence[int] = (world.WORLD_VERSION,)) -> JudgeNet:
    """Train a fresh :class:`JudgeNet` on renders of the concept world (``versions``: which world versions, in
    equal parts; the shipped judge saw the current one only)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # the first version's part is drawn from ``seed`` itself: one version alone is the data set of the judge
    # trained on it (the shipped judge's, for the current one)
    parts = [world.render_dataset(n_images // len(versions), seed + i, version=v) for i, v in enumerate(versions)]
    images = np.concatenate([x for x, _ in parts])
    attrs = [a for _, part in parts for a in part]
    n_images = len(images)
    x_all = to_tensor(images)
    y_all = _labels(attrs)
    net = JudgeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        idx = torch.randint(0, n_images, (batch_size,), generator=gen)
        logits = net(augment(x_all[idx], gen))
        loss = sum(F.cross_entropy(logits[d], y_all[d][idx]) for d in world.DIMENSIONS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0:
            print(f"step {step:5d} loss {loss.item():.4f}", flush=True)
    return net.eval()


@torch.no_grad()
def accuracy(n_images: int, seed: int, version: int = world.WORLD_VERSION) -> dict[str, float]:
    """Per-dimension accuracy of the bundled judge on ``n_images`` fresh renders of world ``version``."""
    images, attrs = world.render_dataset(n_images, seed, version=version)
    preds = judge(images)
    return {d: float(np.mean([p[d] == a[j] for p, a in zip(preds, attrs)])) for j, d in enumerate(world.DIMENSIONS)}


def main(argv: Sequence[str] | None = None) -> None:
    """Train the judge, save it (next to this file unless ``--out``) and report its accuracy on every version."""
    p = argparse.ArgumentParser(prog="python -m esd_lora.bundled.judge", description="Train the bundled judge.")
    p.add_argument("--world-version", type=int, choices=world.VERSIONS, default=world.WORLD_VERSION,
                   help="train on renders of this world version (default: the current one, %(default)s)")
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="weights file (default: the bundled judge's)")
    args = p.parse_args(argv)
    if not args.out.parent.is_dir():
        p.error(f"--out {args.out}: its folder does not exist; create it or pick another path")
    t0 = time.time()
    save_weights(train_judge(versions=(args.world_version,)), args.out)
    print(f"saved {args.out} in {time.time() - t0:.0f} s")
    with weights_from(args.out):
        for version in world.VERSIONS:
            print(f"accuracy on 2000 fresh renders of world version {version}:", accuracy(2_000, 987_654, version))


if __name__ == "__main__":
    main()
