"""A base model's stored rates: what :func:`esd_lora.evaluate` measured on the base itself, kept beside its weights.

Evaluating adapters generates every image twice, from the base and from base + adapters. On a CPU the base's half
is minutes of work that gives the same numbers every time, so a base folder may carry ``base_rates.json``: the rate
of each concept and phrasing split, per measurement (images per split, DDIM steps, guidance, seed), with a digest
of the exact weights and scheduler it was measured on. ``evaluate`` then generates only the adapted images (and a
few base images for the grid) when the pipeline is that folder's model, unchanged, in fp32 on the CPU, the
settings match a stored measurement and the judge in use is the one that labelled it (each measurement records a
digest of the judge's weights: a judge of another world version, ``esd_lora.bundled.judge.weights_from``, reads
only its own); ``fresh_base=True`` (``--fresh-base``) measures the base again.
``python scripts/check_bundled_base.py --n 32 --seed S --store-rates`` adds a measurement.

Float sums run in another order with another number of torch threads, so a fresh measurement on another machine
can differ from the stored one by an image where the judge's call is close; each measurement records its threads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .errors import NotAPipelineError
from .outputs import atomic_path

FILE = "base_rates.json"
SETTINGS = ("n", "steps", "guidance_scale", "seed")
"""The evaluation settings a stored measurement must match."""


def weights_digest(pipe) -> str:
    """sha256 of the exact weights (names, dtypes, shapes, bytes) of the UNet, text encoder and VAE, and of the
    scheduler's class and config: anything that changes the base's images changes it (LoRA layers too)."""
    digest = hashlib.sha256()
    for part in ("unet", "text_encoder", "vae"):
        for name, tensor in sorted(getattr(pipe, part).state_dict().items()):
            tensor = tensor.detach().to("cpu").contiguous()
            digest.update(f"{part}.{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    scheduler = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    digest.update(f"{type(pipe.scheduler).__name__}{json.dumps(scheduler, sort_keys=True, default=str)}".encode())
    return "sha256:" + digest.hexdigest()


def judge_digest(path: str | Path | None = None) -> str:
    """sha256 of the judge weights file ``path``, by default the one labelling images now (the bundled judge, or
    that of an ``esd_lora.bundled.judge.weights_from`` block)."""
    from .adapter import file_sha256
    from .bundled.judge import weights_in_use

    return "sha256:" + file_sha256(path or weights_in_use())


def _judged_by(measurement: dict) -> str:
    """The digest of the judge that labelled ``measurement``; one stored before judges were recorded was labelled
    by the bundled judge."""
    from .bundled.judge import WEIGHTS_PATH

    return measurement.get("judge") or judge_digest(WEIGHTS_PATH)


def _folder(pipe) -> Path | None:
    from .families import base_folder

    folder = base_folder(pipe)
    return folder if folder is not None and folder.is_dir() else None


def _same_settings(measurement: dict, settings: dict) -> bool:
    return all(measurement.get(k) == settings[k] for k in SETTINGS)


def _read(path: Path) -> list[dict]:
    try:
        measurements = json.loads(path.read_text())["measurements"]
        if not isinstance(measurements, list) or not all(isinstance(m, dict) for m in measurements):
            raise TypeError("'measurements' is not a list of objects")
    except (ValueError, TypeError, KeyError) as exc:
        raise NotAPipelineError(f"{path} is not a valid base-rates file ({exc}): fix or delete it") from exc
    return measurements


def _on_cpu_in_fp32(pipe) -> bool:
    return all(p.device.type == "cpu" and p.dtype == torch.float32
               for part in ("unet", "text_encoder", "vae") for p in getattr(pipe, part).parameters())


def stored_rates(pipe, settings: dict, concepts: list[str]) -> tuple[dict[str, dict[str, float]], str] | None:
    """The stored rates ``{concept: {split: rate}}`` of ``pipe``'s base for ``settings`` (with the digest of the
    judge under ``"judge"``; by default the judge in use) and ``concepts``, and a line that says where they come
    from; None if its folder stores none that fit (other settings, other concepts or another order of them, other
    weights, another judge, not fp32 on the CPU, where the stored images were made)."""
    folder = _folder(pipe)
    if folder is None or not (folder / FILE).is_file() or not _on_cpu_in_fp32(pipe):
        return None
    judge = settings.get("judge") or judge_digest()
    fitting = [m for m in _read(folder / FILE)  # the same concepts in the same order: each one's seeds follow its place
               if _same_settings(m, settings) and list(m.get("rates", {})) == list(concepts)
               and _judged_by(m) == judge]
    if not fitting:
        return None
    digest = weights_digest(pipe)
    for m in fitting:
        if m.get("weights") == digest:
            note = (f"stored in {folder / FILE} (these weights, settings and judge, "
                    f"{m.get('torch_threads', '?')} torch threads)")
            return {c: m["rates"][c] for c in concepts}, note
    return None


def store_rates(pipe, report) -> Path:
    """Add the base rates of ``report`` (an :func:`esd_lora.evaluate` report of ``pipe`` without adapters) to the
    ``base_rates.json`` of ``pipe``'s folder, with the digest of the judge that labelled them (the report's), replacing
    a measurement with the same settings and judge; returns the file."""
    folder = _folder(pipe)
    if folder is None:
        raise NotAPipelineError("the pipeline was not loaded from a local folder: there is nowhere to store its rates")
    if not _on_cpu_in_fp32(pipe):
        raise NotAPipelineError("stored base rates are measured in fp32 on the CPU: load the base with "
                                "--device cpu --dtype fp32")
    if report.adapters:
        raise ValueError("a report with adapters holds no base measurement of its own to store")
    from . import __version__

    measurement = {**{k: report.settings[k] for k in SETTINGS}, "weights": weights_digest(pipe),
                   "judge": report.settings.get("judge") or judge_digest(), "torch_threads": torch.get_num_threads(),
                   "esd_lora": __version__, "rates": report.base_rates()}
    path = folder / FILE
    kept = [m for m in (_read(path) if path.is_file() else [])
            if not (_same_settings(m, measurement) and _judged_by(m) == measurement["judge"])]
    data = {"about": "per concept and phrasing split, the share of the base's images judged as the concept, as "
                     "esd_lora.evaluate measured it (fp32, CPU; 'judge': the digest of the judge's weights); "
                     "evaluate reads it when the weights, settings and judge match instead of generating the "
                     "base's images again",
            "measurements": sorted(kept + [measurement], key=lambda m: [*(m[k] for k in SETTINGS), _judged_by(m)])}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
    return path
