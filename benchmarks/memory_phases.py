"""Where an erasure's memory goes on CPU: resident memory through one esd_lora.erase(), phase by phase.

    python benchmarks/memory_phases.py --random sd15 --work-dir /tmp/esd-mem --gradient-checkpointing --refresh-batch 1
    python benchmarks/memory_phases.py path/to/pipeline --iterations 5 --json phases.json

A thread reads the process's resident set (``/proc/self/statm``, Linux) every 2 ms while ``esd_lora.erase`` trains
on a saved pipeline folder, and files each reading under what training is doing: ``load`` (loading the pipeline,
encoding the prompts), ``refresh`` (sampling the bank of trajectories), ``sample`` (a fresh trajectory, with
``--bank-size 0``), ``teacher`` (the frozen model's predictions), ``student`` (the trained model's forward),
``backward``, ``adam`` (the optimizer step), and ``between`` for the rest. It prints every phase's peak and how far
it rose above the memory it started from, then the first iterations phase by phase. ``--random sd15|sdxl`` first
saves a random-weight pipeline of that architecture (``benchmarks/random_models.py``) into ``--work-dir``, or uses
the one saved there by an earlier run. ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment (glibc) hands large
freed blocks back to the system at once; the summary's first line says whether it was set. On CUDA,
``benchmarks/speed.py`` reports ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import esd_lora  # noqa: E402
from esd_lora.errors import EsdLoraError  # noqa: E402
from speed import allocator_setting  # noqa: E402

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 0.0


def resident_mb() -> float:
    """The process's resident set, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE_MB


class PhaseTrace:
    """Resident memory sampled in a thread, in runs of the same phase: ``[phase, start MB, peak MB]``."""

    NESTING = ("refresh", "sample")  # phases whose forwards belong to them, not to the teacher

    def __init__(self, every_s: float = 0.002) -> None:
        self.phase, self.runs, self.every_s = "load", [], every_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.read()
            time.sleep(self.every_s)

    def read(self) -> None:
        with self._lock:  # the sampling thread and the phase changes both read
            mb, phase = resident_mb(), self.phase
            if self.runs and self.runs[-1][0] == phase:
                self.runs[-1][2] = max(self.runs[-1][2], mb)
            else:
                self.runs.append([phase, mb, mb])

    @contextmanager
    def running(self):
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.read()

    def enter(self, phase, fn):
        """``fn`` wrapped so that its calls count as ``phase`` (a name, or a function of the phase it is called in);
        a reading is taken as each call starts and ends."""
        def wrapped(*args, **kwargs):
            outer = self.phase
            self.phase = phase(outer) if callable(phase) else phase
            self.read()
            try:
                return fn(*args, **kwargs)
            finally:
                self.read()
                self.phase = outer if outer in self.NESTING else "between"
        return wrapped

    def summary(self) -> dict[str, dict[str, float]]:
        """Per phase: its peak, and the most it rose above the memory it started from."""
        out: dict[str, dict[str, float]] = {}
        for phase, start, peak in self.runs:
            row = out.setdefault(phase, {"peak_mb": 0.0, "rise_mb": 0.0, "runs": 0})
            row["peak_mb"] = max(row["peak_mb"], peak)
            row["rise_mb"] = max(row["rise_mb"], peak - start)
            row["runs"] += 1
        return out


def traced_erase(folder: str, options: dict, trace: PhaseTrace):
    """``esd_lora.erase(folder, "a concept", **options)`` with its phases reported to ``trace``."""
    erase_module = importlib.import_module("esd_lora.erase")

    def forward(outer: str) -> str:
        if outer in trace.NESTING:
            return outer
        return "student" if torch.is_grad_enabled() else "teacher"

    with ExitStack() as stack:
        for owner, name, phase in [(erase_module.TrajectoryBank, "refresh", "refresh"),
                                   (erase_module.Resampler, "draw", "sample"),
                                   (erase_module, "_predict", forward),
                                   (torch.Tensor, "backward", "backward"),
                                   (torch.optim.Adam, "step", "adam")]:
            stack.enter_context(mock.patch.object(owner, name, trace.enter(phase, getattr(owner, name))))
        return esd_lora.erase(folder, "a concept", progress=False, device="cpu", **options)


def save_random(model: str, work_dir: Path) -> Path:
    """A random-weight pipeline of ``model``'s architecture saved in ``work_dir/model`` (kept for later runs)."""
    from random_models import build

    folder = work_dir / model
    if (folder / "model_index.json").is_file():
        return folder
    if folder.exists():
        sys.exit(f"error: {folder} exists and is not a saved pipeline: move it away or pass another --work-dir")
    torch.manual_seed(0)
    tmp = work_dir / f".{model}.partial"  # renamed once whole: an interrupted save is never taken for a pipeline
    shutil.rmtree(tmp, ignore_errors=True)
    build(model).save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)
    return folder


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", nargs="?", help="a saved diffusers pipeline folder to erase from")
    parser.add_argument("--random", choices=["sd15", "sdxl"], help="erase from a random-weight pipeline instead")
    parser.add_argument("--work-dir", help="where --random saves its pipeline (4 GB for SD 1.5, 14 GB for SDXL)")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--ddim-steps", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--refresh-batch", type=int, default=None)
    parser.add_argument("--bank-size", type=int, default=None)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--show", type=int, default=2, help="iterations to print phase by phase")
    parser.add_argument("--json", default=None, help="also write the summary and every run of a phase here")
    args = parser.parse_args()
    if (args.pipeline is None) == (args.random is None):
        parser.error("pass a pipeline folder or --random sd15|sdxl (one of them)")
    if args.random and (args.work_dir is None or not Path(args.work_dir).is_dir()):
        parser.error("--random needs --work-dir, an existing folder to save the random pipeline in")
    if not Path("/proc/self/statm").is_file():
        parser.error("this benchmark reads /proc/self/statm (Linux); on CUDA use benchmarks/speed.py")
    return args


def main() -> None:
    args = parse_args()
    folder = str(save_random(args.random, Path(args.work_dir)) if args.random else args.pipeline)
    options = {"iterations": args.iterations, "ddim_steps": args.ddim_steps, "dtype": args.dtype,
               "gradient_checkpointing": args.gradient_checkpointing}
    options.update({k: v for k, v in (("refresh_batch", args.refresh_batch), ("bank_size", args.bank_size))
                    if v is not None})
    trace = PhaseTrace()
    try:
        with trace.running():
            traced_erase(folder, options, trace)
    except EsdLoraError as exc:  # a bad option or folder: erase's own one-line message
        sys.exit(f"error: {exc}")
    summary = trace.summary()
    print(f"{allocator_setting()}, {torch.get_num_threads()} torch threads")
    print(f"{'phase':<9} {'peak MB':>8} {'rise MB':>8} {'runs':>5}")
    for phase, row in sorted(summary.items(), key=lambda kv: kv[1]["peak_mb"]):
        print(f"{phase:<9} {row['peak_mb']:8.0f} {row['rise_mb']:8.0f} {row['runs']:5d}")
    print(f"\nthe first {args.show} iteration(s), phase by phase (start MB -> peak MB):")
    steps = 0
    for phase, start, peak in trace.runs:
        print(f"  {phase:<9} {start:8.0f} -> {peak:8.0f}")
        steps += phase == "adam"
        if steps >= args.show:
            break
    if args.json:
        Path(args.json).write_text(json.dumps({"options": options, "pipeline": folder, "summary": summary,
                                               "runs": trace.runs}, indent=2))


if __name__ == "__main__":
    main()
