"""Erase many concepts, one adapter each, spread over processes with accelerate.

    accelerate launch --num_processes 4 -m esd_lora erase-many concepts.txt --out-dir adapters/

A concepts file holds one adapter per line: a concept (``van gogh``) or several comma-separated concepts erased
together into one adapter (``claude monet, pablo picasso``). Blank lines and lines starting with ``#`` are skipped.
The lines are dealt to the processes with accelerate's ``PartialState.split_between_processes``, so each adapter
is trained and written by exactly one process, atomically, as ``<out_dir>/esd-<concepts>.safetensors``; its
metadata records which process wrote it. Adapters already in the folder are skipped unless ``overwrite``: a run
that stopped half-way resumes where it left off. Without a launcher, one process trains every line in turn.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env

from .config import EraseConfig
from .erase import erase, make_config
from .errors import ConceptsFileError, ConceptsFileNotFoundError, EsdLoraError, OutputExistsError
from .families import as_pipeline
from .outputs import check_output

STATUSES = ("written", "skipped", "failed")


@dataclass
class Job:
    """One adapter to train: where its concepts come from (file line), the concepts, and the output file."""

    source: str
    concepts: list[str]
    out: Path


@dataclass
class Outcome:
    """What became of one job: ``status`` is written, skipped (already there) or failed (``message`` says why)."""

    file: str
    concepts: list[str]
    status: str
    process: int
    seconds: float = 0.0
    message: str = ""


def read_concepts_file(path: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """``(where, concepts)`` per adapter line of a concepts file, ``where`` naming the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConceptsFileNotFoundError(f"concepts file {path} does not exist: give a text file with one concept "
                                        "(or comma-separated concepts for one adapter) per line")
    lines = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = text.strip()
        if text and not text.startswith("#"):
            lines.append((f"{path} line {number}", _split(text, f"{path} line {number}")))
    if not lines:
        raise ConceptsFileError(f"{path} names no concept: write one concept per line (lines starting with # are "
                                "comments)")
    return lines


def _split(text: str, where: str) -> list[str]:
    concepts = [" ".join(c.split()) for c in text.split(",")]
    if not all(concepts):
        raise ConceptsFileError(f"{where}: empty concept in {text!r}: remove the extra comma")
    return concepts


def plan(lines: list[tuple[str, list[str]]], out_dir: Path) -> list[Job]:
    """One job per line, refusing two lines that would write the same file (the same concepts, twice)."""
    from .cli._common import slug  # here, not at the top: the cli package imports this module

    jobs, seen = [], {}
    for where, concepts in lines:
        name = f"esd-{slug('-'.join(concepts), 'concept')}.safetensors"
        if name in seen:
            raise ConceptsFileError(f"{where} ({', '.join(concepts)}) repeats {seen[name]}: both would write {name}; "
                                    "remove one of them")
        seen[name] = where
        jobs.append(Job(where, concepts, out_dir / name))
    return jobs


def erase_many(base, concepts: str | os.PathLike | list, out_dir: str | os.PathLike = ".", *,
               overwrite: bool = False, progress: bool = True, **options) -> list[Outcome]:
    """Train one adapter per line of ``concepts`` (a concepts file, or a list of concepts / lists of concepts)
    into ``out_dir``, this process taking its share of the lines; return every process's outcomes, in order.

    ``options`` are :class:`~esd_lora.config.EraseConfig` fields shared by every adapter. Every line and option
    is checked before any training, so bad input fails at once with nothing written.

    >>> erase_many("path/to/sd15", "concepts.txt", "adapters/", iterations=200)
    """
    if isinstance(concepts, (str, os.PathLike)):
        lines = read_concepts_file(concepts)
    else:
        lines = [(f"item {i}", _split(c, f"item {i}") if isinstance(c, str) else list(c))
                 for i, c in enumerate(concepts, start=1)]
        if not lines:
            raise ConceptsFileError("no concept given: give at least one concept to erase")
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"--out-dir {out_dir} is a file: give a folder (it is created if missing)")
    jobs = plan(lines, out_dir)
    configs = [make_config(base, job.concepts, **options) for job in jobs]  # validate every line first
    out_dir.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        if overwrite or not job.out.is_file():
            check_output(job.out, overwrite=overwrite)  # e.g. a folder in the way
    state = PartialState(cpu=_on_cpu(options.get("device")))
    device = options.get("device") or (str(state.device) if state.num_processes > 1 else None)
    outcomes, pipe = [], None
    with state.split_between_processes(list(zip(jobs, configs))) as mine:
        for job, config in mine:
            if job.out.is_file() and not overwrite:
                outcomes.append(Outcome(str(job.out), job.concepts, "skipped", state.process_index))
                continue
            pipe = pipe or as_pipeline(base, device=device, dtype=config.dtype)
            outcomes.append(_train_one(pipe, job, config, state, overwrite=overwrite, progress=progress))
    return gather_object(outcomes)


def _on_cpu(device: str | None) -> bool:
    """Whether several processes share the CPU: asked for (``--device cpu``, ``accelerate launch --cpu``), or
    there is no CUDA GPU to give each process its own."""
    return str(device or "").startswith("cpu") or parse_flag_from_env("ACCELERATE_USE_CPU") \
        or not torch.cuda.is_available()


def _train_one(pipe, job: Job, config: EraseConfig, state: PartialState, *, overwrite: bool,
               progress: bool) -> Outcome:
    """Train and save one adapter, its metadata naming this process; a training error fails this job only."""
    who = f"process {state.process_index} (of {state.num_processes})"
    if progress:
        print(f"{who}: erasing {', '.join(job.concepts)} ({job.source}) into {job.out}", flush=True)
    started = time.perf_counter()
    try:
        adapter = erase(pipe, job.concepts, config=config, progress=progress and state.is_main_process)
        adapter.metadata.extra["erase_many"] = {"process": state.process_index, "processes": state.num_processes,
                                                "source": job.source}
        adapter.save(job.out, overwrite=overwrite)
    except EsdLoraError as exc:
        return Outcome(str(job.out), job.concepts, "failed", state.process_index, message=str(exc))
    return Outcome(str(job.out), job.concepts, "written", state.process_index, time.perf_counter() - started)


def summary(outcomes: list[Outcome]) -> str:
    """A table of the outcomes, one line each, under a count per status."""
    counts = ", ".join(f"{sum(o.status == s for o in outcomes)} {s}" for s in STATUSES)
    processes = len({o.process for o in outcomes})
    lines = [f"{len(outcomes)} adapter(s), {processes} process(es) with work: {counts}"]
    width = max(len(o.file) for o in outcomes)
    for o in outcomes:
        seconds = f"{o.seconds:6.1f} s" if o.status == "written" else " " * 8
        note = f"  {o.message}" if o.message else ""
        lines.append(f"  {o.status:<8} {o.file:<{width}}  process {o.process}  {seconds}  "
                     f"{', '.join(o.concepts)}{note}")
    return "\n".join(lines)
