"""esd-lora against the paper's training loop: time to the erasure bar, seconds per iteration, peak memory, file size.

    python benchmarks/speed.py [--quick] [--json FILE] [--parts bundled random] [--variants ...]

Part "bundled" (the bundled base, on CPU or CUDA): each variant erases ``--concept`` and every ``--check-every``
iterations training pauses for a check at ``--n`` images per concept and phrasing split (the same prompts and
seeds as the base's): first the erased concept alone, and only once it is at most 10% (both phrasing splits),
every other concept. The bar is passed when every other concept keeps at least 90% of its base rate, and a pass
is confirmed at ``--confirm-n`` images (a pass by chance at small n does not count; a check within one image per
split of the bar goes on to the confirmation too, which decides: at 8 images 88% cannot be told from 94%,
and a strict check would stop a run that meets the bar from being confirmed). "Every other concept" is,
by default (``--others reliable``), every one the base draws at least 90% of the time on both phrasing splits
(at ``--confirm-n``): the bundled base's earlier build drew dotted at ~70% (today's at ~91%), and a concept that
unreliable swings by more than the bar's 10% between checks; ``--others all`` counts every concept, and each check
also reports the worst of all. Reported: training seconds (checks excluded) and iterations to erasure (the concept
<= 10% on both splits, confirmed at ``--confirm-n``) and to the bar, seconds per iteration (setup and bank refreshes
included), peak memory before the first check, and the size of what must be saved. Time to the bar is the "erasure
quality per second" figure: a variant that iterates faster but needs more iterations shows it here.

Variants ("reference" is benchmarks/reference_esd.py, the paper's loop; the others are esd_lora.erase with the
bundled base's recommended settings plus one switch):

* reference          two UNets, full attn2 weights, fresh trajectory by the trained model every step, separate
                     e0/ep forwards, fp32 (full weights do not train in bf16); one row per learning rate of
                     ``--reference-lrs`` (its tries, below)
* esd-lora           the defaults: LoRA, one UNet, bank of 16 trajectories, batched teacher
* fresh-trajectory   bank_size=0: x_t from a fresh trajectory every step, as in the paper
* frozen-sampler     sample_with=frozen: the bank's guidance passes are reused as e0/ep
* unbatched-teacher  the teacher's (and student's) prompts in separate forwards instead of one batch
* checkpointing      gradient_checkpointing=True
* low-memory         gradient_checkpointing=True and refresh_batch=2 (the bank sampled 2 trajectories at a time)
* lowest-memory      gradient_checkpointing=True and refresh_batch=1
* compile            compile=True (compile time counts)
* bf16 / fp32        dtype of the frozen base (the bundled part runs fp32, as the base rates, unless a variant
                     says otherwise; the random part bf16 on CUDA, fp32 on CPU)

Part "random" (random-weight UNets of the released SD 1.5 and SDXL architectures, benchmarks/random_models.py):
one training iteration's time and the peak memory, for the reference loop and esd-lora variants. The random
pipeline is saved once (in the run's dtype, under ``--work-dir``) and every loop starts from that folder, as a
user's run does: the reference keeps the whole pipeline; ``esd_lora.erase(folder)`` frees the text encoders and
the VAE once the prompts are encoded. "pipe MB" is the loaded pipeline alone. The reference
stops every trajectory at step ``ddim_steps // 2`` (the mean of the paper's uniform draw); esd-lora's time per
iteration is its steady step plus its bank refresh spread over ``refresh_every`` steps. On CPU the default keeps
this to minutes: 2 DDIM steps and half-size latents (32x32 for SD 1.5, 64x64 for SDXL); on CUDA the real sizes,
50 DDIM steps and bf16. A loop that would not fit in the free memory is skipped and says so.

The reference's learning rates: the paper's 1e-5 is for SD 1.4, and the bundled base needs a far higher one
(esd-lora's recommended LoRA rate is 5e-3, 25x its SD default). Tries on 2 shared CPU cores, red, checks at n=4:
1e-3 left red at 75-100% for 300 iterations; 2e-3 swung red between 25% and 100% over 150; 3e-3 erased red (0% at
60 and 100 iterations) but took star or striped down to 38% of its base rate: without a preservation term the
full-weight loop overshoots. The default sweep 1e-3, 2e-3, 3e-3 keeps the fastest run that passes; if none
passes, esd-lora's ratio is a lower bound against the longest reference run. How long each reference run trains is
set by ``--reference-budget`` (default 10, the target ratio): esd-lora runs first, and each reference run trains until
the bar or for 10x esd-lora's training time to the bar, to the check after; one that is still short of the bar then
shows esd-lora at least 10x faster, whatever the reference would do later (without the budget, or if esd-lora does
not reach the bar, ``--max-iterations`` bounds every run).

Every measurement runs in its own subprocess (this script with --worker), so each peak memory is its own: the
process's maximum resident set (ru_maxrss) on CPU, torch.cuda.max_memory_allocated on CUDA. The workers inherit the
environment: ``MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/speed.py ...`` has glibc hand large freed blocks
back at once in every loop alike (the machine line says which allocator setting a run had).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {  # esd-lora variant -> erase options on top of the defaults
    "esd-lora": {},
    "fresh-trajectory": {"bank_size": 0},
    "frozen-sampler": {"sample_with": "frozen"},
    "unbatched-teacher": {},  # the worker splits esd-lora's batched forwards instead
    "checkpointing": {"gradient_checkpointing": True},
    "low-memory": {"gradient_checkpointing": True, "refresh_batch": 2},
    "lowest-memory": {"gradient_checkpointing": True, "refresh_batch": 1},
    "compile": {"compile": True},
    "bf16": {"dtype": "bf16"},
    "fp32": {"dtype": "fp32"},
}
SPLITS = ("train", "held-out")
ERASED_MAX, KEPT_MIN = 0.10, 0.90
RELIABLE = 0.90  # with --others reliable, the bar counts the concepts the base draws at least this often
# Parameters of the released models (UNet, text encoders), to skip a loop that cannot fit in memory.
PARAMS = {"sd15": (0.86e9, 0.12e9), "sdxl": (2.57e9, 0.82e9)}
CPU_LATENTS = {"sd15": 32, "sdxl": 64}


# ----------------------------------------------------------------------------------------------- workers


class BarReached(Exception):
    """Raised from esd-lora's callback to stop training once the bar is passed."""


def peak_mb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocations, or the maximum resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def rates(pipe, concepts: list[str], n: int, seed: int, steps: int) -> dict[str, dict[str, float]]:
    """Per concept and phrasing split, the share of images judged as the concept (the pipeline as it is)."""
    import esd_lora

    report = esd_lora.evaluate(pipe, concepts=concepts, n=n, seed=seed, steps=steps,
                               progress=False)  # between training steps: no bar
    return {c: {s: report.rate(c, split=s) for s in SPLITS} for c in concepts}


def screen_slack(task: dict) -> float:
    """How far the check at ``n`` images lets a rate miss the bar and still go on to the confirmation at
    ``confirm_n``, which decides: one image per split (at 8 images, 12% is one image of 8, and a concept of the bar
    one image short is at 88-94% of its base rate, where the bar is 90%; a strict screen would never ask)."""
    return 1 / task["n"] if task["confirm_n"] > task["n"] else 0.0


def check(pipe, task: dict) -> dict:
    """The bar at ``n`` images, within one image (:func:`screen_slack`), and if so at ``confirm_n`` images, strictly
    (a pass by chance at small n is not one)."""
    slack = screen_slack(task)
    result = bar(pipe, task, task["n"], task["base_rates"]["n"], slack)
    if result["passed"] and slack:
        confirmed = bar(pipe, task, task["confirm_n"], task["base_rates"]["confirm_n"])
        result.update({f"confirm_{k}": v for k, v in confirmed.items()}, passed=confirmed["passed"])
    return result


def bar(pipe, task: dict, n: int, base: dict, slack: float = 0.0) -> dict:
    """The erased concept at most 10% on both splits, then every other concept of the bar (``bar_others``) at
    >= 90% of its base rate. Also the worst of all other concepts, those left out of the bar included. ``slack``
    (a share of images per split) lowers the bar by that much: the erased concept may be ``slack`` higher, and the
    others ``slack`` lower on average over the splits."""
    concept, others = task["concept"], task["others"]
    erased = max(rates(pipe, [concept], n, task["seed"], task["eval_steps"])[concept].values())
    result = {"erased": erased, "worst_other": None, "worst_ratio": None, "worst_any": None,
              "worst_any_ratio": None, "passed": False}
    if erased <= ERASED_MAX + slack:
        now = rates(pipe, others, n, task["seed"], task["eval_steps"])
        ratios = {c: _mean(now[c]) / _mean(base[c]) if _mean(base[c]) > 0 else 1.0 for c in others}
        kept = {c: ratios[c] >= KEPT_MIN - (slack / 2 / _mean(base[c]) if _mean(base[c]) > 0 else 0.0)
                for c in others}  # one image of the 2n is 1/(2n) of the mean rate
        worst = min(task["bar_others"], key=ratios.get)
        worst_any = min(ratios, key=ratios.get)
        result.update(worst_other=worst, worst_ratio=ratios[worst], worst_any=worst_any,
                      worst_any_ratio=ratios[worst_any], passed=all(kept[c] for c in task["bar_others"]))
    return result


def erasure_confirmed(pipe, task: dict) -> bool:
    """After a check found the concept erased at ``n`` images: still at most 10% on both splits at ``confirm_n``."""
    if task["confirm_n"] <= task["n"]:
        return True
    found = rates(pipe, [task["concept"]], task["confirm_n"], task["seed"], task["eval_steps"])[task["concept"]]
    return max(found.values()) <= ERASED_MAX


def _mean(by_split: dict[str, float]) -> float:
    return sum(by_split.values()) / len(by_split)


class Clock:
    """Training time with the checks taken out; the checks run through :meth:`pause`."""

    def __init__(self) -> None:
        self.start, self.paused = time.perf_counter(), 0.0

    def train_s(self) -> float:
        return time.perf_counter() - self.start - self.paused

    @contextmanager
    def pause(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - started


def split_forwards() -> None:
    """Make esd-lora ask the UNet one prompt per forward instead of one batched forward (unbatched-teacher)."""
    erase_module = importlib.import_module("esd_lora.erase")  # the module: esd_lora.erase is also the function

    def predict(unet, x, t, texts):
        return tuple(unet(x, t, **text.unet_kwargs()).sample for text in texts)

    erase_module._predict = predict


def bar_worker(task: dict) -> dict:
    """Train one variant on the bundled base until it passes the bar or reaches ``max_iterations``."""
    import esd_lora
    from esd_lora.erase import ADAPTER_NAME
    from esd_lora.families import load_pipeline
    from peft.utils import get_peft_model_state_dict

    options = {**task["overrides"], **VARIANTS.get(task["variant"], {})}  # the variant's own switch wins over --set
    if task["variant"] == "unbatched-teacher":
        split_forwards()
    # fp32 unless the variant says otherwise, on CUDA too: the base rates are fp32's, and the reference trains
    # full weights (Adam's steps vanish in bf16 weights), as the paper did in fp32.
    pipe = load_pipeline("bundled", device=task["device"], dtype=options.get("dtype", "fp32"))
    device = pipe.unet.device
    row = {"pipeline_mb": peak_mb(device), "checks": [], "iterations": None, "train_s": None,
           "erased_iterations": None, "erased_train_s": None}
    clock = Clock()

    def after(step: int, save_bytes, generating=nullcontext) -> bool:
        """Bookkeeping after a step, and the check when one is due (the pipeline ``generating`` with the model
        being trained); True once the bar is passed, or at the first check past the run's ``max_train_s``."""
        row["last_iteration"], row["last_train_s"] = step, clock.train_s()
        if step % task["check_every"] and step != task["max_iterations"]:
            return False
        if not row["checks"]:  # training memory, before any evaluation adds its own
            row["peak_mb"], row["file_mb"] = peak_mb(device), save_bytes() / 2**20
        with clock.pause(), generating():
            result = check(pipe, task)
            if row["erased_iterations"] is None and result["erased"] <= ERASED_MAX + screen_slack(task) and \
                    erasure_confirmed(pipe, task):
                row["erased_iterations"], row["erased_train_s"] = step, row["last_train_s"]
        row["checks"].append({"iteration": step, "train_s": row["last_train_s"], **result})
        if result["passed"]:
            row["iterations"], row["train_s"] = step, row["last_train_s"]
        elif task.get("max_train_s") and row["last_train_s"] >= task["max_train_s"]:
            row["stopped_at_budget"] = True  # at the first check past its time: it had all of it
            return True
        return result["passed"]

    if task["variant"] == "reference":
        from reference_esd import ReferenceESD

        ref = ReferenceESD(pipe, [task["concept"]], lr=task["lr"], seed=task["seed"],
                           **{k: v for k, v in options.items() if k == "ddim_steps"})
        for step in range(1, task["max_iterations"] + 1):
            ref.step()
            if after(step, ref.file_bytes, lambda: swapped_unet(pipe, ref.trained)):
                break
    else:
        def lora_bytes() -> int:
            state = get_peft_model_state_dict(pipe.unet, adapter_name=ADAPTER_NAME)
            return sum(t.numel() * 4 for t in state.values())  # saved in fp32

        def callback(step: int, loss: float) -> None:
            if after(step, lora_bytes):
                raise BarReached

        try:
            esd_lora.erase(pipe, task["concept"], iterations=task["max_iterations"], seed=task["seed"],
                           progress=False, callback=callback, **options)
        except BarReached:
            pass
    row["s_per_it"] = row["last_train_s"] / row["last_iteration"]
    return row


@contextmanager
def swapped_unet(pipe, unet):
    """The pipeline generating with ``unet`` instead of its own."""
    own = pipe.unet
    pipe.unet = unet
    try:
        yield
    finally:
        pipe.unet = own


def save_worker(task: dict) -> dict:
    """Build a random-weight SD 1.5 / SDXL pipeline and save it, in the run's dtype, where the loops load it from."""
    from random_models import build

    torch.manual_seed(0)
    pipe = build(task["model"], unet_overrides=task["unet_overrides"])
    pipe.to(dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[task["dtype"]])
    pipe.save_pretrained(task["folder"], safe_serialization=True)
    return {}


def load_worker(task: dict) -> dict:
    """The peak memory of the loaded pipeline alone."""
    from esd_lora.families import load_pipeline

    pipe = load_pipeline(task["folder"], device=task["device"], dtype=task["dtype"])
    with torch.no_grad():  # on CPU the weights are mapped from the files: read them all, as a forward does
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                for tensor in (*module.parameters(), *module.buffers()):
                    tensor.sum()
    return {"pipeline_mb": peak_mb(pipe.unet.device)}


def timing_worker(task: dict) -> dict:
    """Time training iterations on a saved random-weight SD 1.5 / SDXL pipeline; record the peak memory.

    Both loops start from the folder, as a user's run does: the reference loads the whole pipeline and keeps it;
    esd_lora.erase(folder) loads it and frees the text encoders and VAE once the prompts are encoded."""
    import esd_lora
    from esd_lora.families import load_pipeline

    erase_module = importlib.import_module("esd_lora.erase")

    options = dict(VARIANTS.get(task["variant"], {}))
    if task["variant"] == "unbatched-teacher":
        split_forwards()
    dtype = {"auto": task["dtype"], "bf16": "bf16", "fp32": "fp32"}[options.pop("dtype", "auto")]
    torch.manual_seed(0)
    device = torch.device(task["device"])
    row = {"dtype": dtype}
    iterations, steps = task["iterations"], task["ddim_steps"]
    marks = [time.perf_counter()]
    if task["variant"] == "reference":
        from reference_esd import ReferenceESD

        pipe = load_pipeline(task["folder"], device=task["device"], dtype=dtype)
        ref = ReferenceESD(pipe, ["a concept"], lr=1e-5, ddim_steps=steps, stop_at=steps // 2)
        for _ in range(iterations):
            ref.step()
            marks.append(time.perf_counter())
        row["file_mb"], refresh_s = ref.file_bytes() / 2**20, 0.0
    else:
        refreshes = []
        original = erase_module.TrajectoryBank.refresh

        def timed_refresh(bank):
            started = time.perf_counter()
            original(bank)
            refreshes.append(time.perf_counter() - started)

        erase_module.TrajectoryBank.refresh = timed_refresh
        adapter = esd_lora.erase(task["folder"], "a concept", iterations=iterations, ddim_steps=steps,
                                 progress=False, device=task["device"], dtype=dtype,
                                 callback=lambda step, loss: marks.append(time.perf_counter()), **options)
        row["file_mb"] = adapter.num_parameters * 4 / 2**20
        refresh_s = sum(refreshes[:1]) / adapter.metadata.config.refresh_every  # none without a bank
    steady = [b - a for a, b in zip(marks[1:], marks[2:])]
    row.update(first_s=marks[1] - marks[0], step_s=sum(steady) / len(steady), refresh_s=refresh_s,
               peak_mb=peak_mb(device))
    row["s_per_it"] = row["step_s"] + refresh_s
    return row


def base_worker(task: dict) -> dict:
    """The base model's rates of the erased concept and of every other, as the checks will ask for them."""
    from esd_lora.families import load_pipeline

    pipe = load_pipeline("bundled", device=task["device"], dtype="fp32")
    base = {}
    for key in ("n", "confirm_n"):
        args = (task[key], task["seed"], task["eval_steps"])
        base[key] = {**rates(pipe, [task["concept"]], *args), **rates(pipe, task["others"], *args)}
    return base


WORKERS = {"bar": bar_worker, "timing": timing_worker, "base": base_worker, "save": save_worker,
           "load": load_worker}


# ------------------------------------------------------------------------------------------------ parent


def run_worker(task: dict) -> dict:
    """Run one measurement in a fresh Python process; its result, or ``{"error": ...}``."""
    result = subprocess.run([sys.executable, __file__, "--worker", json.dumps(task)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()] or ["no output"]
        reason = "killed (out of memory?)" if result.returncode in (-9, 137) else lines[-1]
        return {"error": f"exit {result.returncode}: {reason}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        name = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                     if line.startswith("model name")), name)
    return f"{name}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, {allocator_setting()}"


def allocator_setting() -> str:
    """The glibc allocator setting that decides how much freed memory a CPU process keeps resident."""
    threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    return f"MALLOC_MMAP_THRESHOLD_={threshold}" if threshold else "default malloc settings"


def free_mb(device: str) -> float:
    """Memory a new process may use: free GPU memory, or MemAvailable."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0] / 2**20
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return float("inf")
    kb = next(int(line.split()[1]) for line in meminfo.read_text().splitlines() if line.startswith("MemAvailable"))
    return kb / 1024


def needed_mb(model: str, loop: str, dtype: str) -> float:
    """A floor on a loop's memory: the UNet (twice for the reference, plus Adam on its attn2) and text encoders."""
    unet, text = PARAMS[model]
    size = 2 if dtype == "bf16" else 4
    copies = 2.25 if loop == "reference" else 1.0
    return (copies * unet + text) * size / 2**20


def bundled_part(args, device: str) -> list[dict]:
    from esd_lora.bundled import world

    others = [c for c in world.all_concepts() if c != args.concept]
    common = {"concept": args.concept, "others": others, "n": args.n, "confirm_n": args.confirm_n,
              "seed": args.seed, "device": device,
              "eval_steps": args.eval_steps}
    print(f"base rates at n={args.n} and n={args.confirm_n} per concept and split ...", flush=True)
    base = run_worker({"kind": "base", **common})
    if "error" in base:
        sys.exit(f"base rates failed: {base['error']}")
    reliable = [c for c in others if min(base["confirm_n"][c].values()) >= RELIABLE]
    common["bar_others"] = reliable if args.others == "reliable" else others
    left_out = [c for c in others if c not in common["bar_others"]]
    print(f"{args.concept}: base {_mean(base['confirm_n'][args.concept]):.0%}; bar: {args.concept} <= "
          f"{ERASED_MAX:.0%} on both splits, every other concept >= {KEPT_MIN:.0%} of its base rate"
          + (f" (left out, drawn by the base < {RELIABLE:.0%} on a split: {', '.join(left_out)})" if left_out else "")
          + f"; checked every {args.check_every} iterations at n={args.n}, a pass confirmed at n={args.confirm_n}\n")
    header = (f"{'variant':<18} {'lr':>7} {'s/it':>6} {'erased':>11} {'bar':>11} {'peak MB':>8} {'file MB':>8}  "
              "last check: erased / worst other of the bar / worst of all")
    if args.erase_options:
        print(f"every esd-lora variant also with {', '.join(f'{k}={v}' for k, v in args.erase_options.items())}")
    print(f"{'':<33}{'iters / s':>11} {'iters / s':>11}")
    print(header)
    rows = []
    overrides = {"ddim_steps": args.ddim_steps} if args.ddim_steps else {}
    runs = [(v, lr) for v in args.variants for lr in (args.reference_lrs if v == "reference" else [None])]
    budgeted = bool(args.reference_budget) and {"esd-lora", "reference"} <= set(args.variants)
    if budgeted:  # esd-lora's time to the bar sets the reference's time
        runs.sort(key=lambda run: run[0] != "esd-lora")
    budget = None
    for variant, lr in runs:
        extra = {} if variant == "reference" else args.erase_options
        task = {"kind": "bar", "variant": variant, "lr": lr, "base_rates": base, "overrides": {**overrides, **extra},
                "check_every": args.check_every, "max_iterations": args.max_iterations, **common}
        if variant == "reference" and budget:
            task.update(max_train_s=budget, max_iterations=10**9)
        row = {"variant": variant, "lr": lr or extra.get("lr"), **run_worker(task)}
        rows.append(row)
        print(_bar_line(row), flush=True)
        if budgeted and variant == "esd-lora":
            budget = row.get("train_s") and args.reference_budget * row["train_s"]
            print(f"{'':<18} the reference runs until the bar or for {args.reference_budget:g}x esd-lora's "
                  + (f"{row['train_s']:.0f} s to the bar: {budget:.0f} s of training, to its next check"
                     if budget else "time to the bar, which it did not reach: to --max-iterations"), flush=True)
    _bar_ratios(rows)
    return rows


def _bar_line(row: dict) -> str:
    lr = f"{row['lr']:.0e}" if row["lr"] else "recomm."
    if "error" in row:
        return f"{row['variant']:<18} {lr:>7}  {row['error']}"
    last = row["checks"][-1] if row["checks"] else {}

    def reached(iterations, seconds) -> str:
        if iterations:
            return f"{iterations} / {seconds:.0f}"
        return f">{row['last_iteration']} / >{row['last_train_s']:.0f}"

    other = f"{last['worst_other']} {last['worst_ratio']:.0%} / {last['worst_any']} {last['worst_any_ratio']:.0%}" \
        if last.get("worst_other") else "-"
    erased = f"{last['erased']:.0%}" if last else "-"
    return (f"{row['variant']:<18} {lr:>7} {row['s_per_it']:6.3f} "
            f"{reached(row['erased_iterations'], row['erased_train_s']):>11} "
            f"{reached(row['iterations'], row['train_s']):>11} "
            f"{row.get('peak_mb', float('nan')):8.0f} {row.get('file_mb', float('nan')):8.2f}  {erased} / {other}")


def _bar_ratios(rows: list[dict]) -> None:
    """Each esd-lora variant against the reference, to erasure and to the bar: against the fastest reference run
    that got there, or, if none did, against the longest reference run (esd-lora is then at least that much
    faster)."""
    refs = [r for r in rows if r["variant"] == "reference" and "error" not in r]
    if not refs:
        return
    longest = max(refs, key=lambda r: r["last_train_s"])
    print()
    for goal, key in (("erasure", "erased_train_s"), ("the bar", "train_s")):
        passed = [r for r in refs if r[key]]
        ref = min(passed, key=lambda r: r[key]) if passed else longest
        ref_s = ref[key] if passed else ref["last_train_s"]
        stopped = " when its time was up" if ref.get("stopped_at_budget") else ""
        print(f"to {goal}, against the reference at lr {ref['lr']:.0e} ({ref_s:.0f} s" +
              (f" to {goal}):" if passed else f", {goal} not reached: the longest reference run, stopped{stopped} at "
                                              f"{ref['last_iteration']} iterations):"))
        for row in rows:
            if row["variant"] == "reference" or "error" in row:
                continue
            faster = f"{'' if passed else 'at least '}{ref_s / row[key]:.1f}x faster" if row[key] else \
                f"{goal} not reached"
            print(f"  {row['variant']:<18} {faster}")
    ref = min((r for r in refs if r["train_s"]), key=lambda r: r["train_s"], default=longest)
    print(f"per iteration, memory and file, against the reference at lr {ref['lr']:.0e}:")
    for row in rows:
        if row["variant"] != "reference" and "error" not in row:
            print(f"  {row['variant']:<18} {ref['s_per_it'] / row['s_per_it']:.1f}x iterations/s   "
                  f"{ref['peak_mb'] / row['peak_mb']:.2f}x less peak memory   "
                  f"{ref['file_mb'] / row['file_mb']:.0f}x smaller file")


def random_part(args, device: str) -> list[dict]:
    cuda = device.startswith("cuda")
    steps = args.timing_ddim_steps or (50 if cuda else 2)
    iterations = args.timing_iterations or (10 if cuda else 3)
    dtype = "bf16" if cuda else "fp32"
    print(f"\nrandom-weight UNets: {steps} DDIM steps (reference stopping step {steps // 2}), {iterations} "
          f"iterations, base {dtype}" + ("" if cuda or args.full_size or args.quick else ", half-size latents (CPU)"))
    print(f"{'model':<5} {'variant':<18} {'dtype':<5} {'s/it':>8} {'first s':>8} {'peak MB':>8} {'pipe MB':>8} "
          f"{'file MB':>9}")
    rows = []
    for model in args.models:
        overrides = dict(args.unet_overrides.get(model, {}))
        if not cuda and not args.full_size and not args.quick:
            overrides["sample_size"] = CPU_LATENTS[model]
        with tempfile.TemporaryDirectory(prefix=f"esd-lora-speed-{model}-", dir=args.work_dir) as folder:
            saved = run_worker({"kind": "save", "model": model, "dtype": dtype, "folder": folder,
                                "unet_overrides": overrides})
            loaded = saved if "error" in saved else run_worker({"kind": "load", "folder": folder, "device": device,
                                                                "dtype": dtype})
            for variant in args.timing_variants:
                loop = "reference" if variant == "reference" else "esd-lora"
                run_dtype = VARIANTS.get(variant, {}).get("dtype", dtype)
                need, free = needed_mb(model, loop, run_dtype), free_mb(device)
                row = {"model": model, "variant": variant}
                if "error" in loaded:
                    row["error"] = f"could not save or load the random pipeline: {loaded['error']}"
                elif not args.quick and need > 0.9 * free:
                    row["error"] = f"skipped: needs over {need / 1024:.0f} GiB, {free / 1024:.0f} GiB free"
                else:
                    row.update(run_worker({"kind": "timing", "model": model, "variant": variant, "device": device,
                                           "dtype": dtype, "ddim_steps": steps, "iterations": iterations,
                                           "folder": folder}))
                    row["pipeline_mb"] = loaded["pipeline_mb"]
                rows.append(row)
                print(_timing_line(row), flush=True)
    _timing_ratios(rows)
    return rows


def _timing_line(row: dict) -> str:
    if "error" in row:
        return f"{row['model']:<5} {row['variant']:<18} {row['error']}"
    return (f"{row['model']:<5} {row['variant']:<18} {row['dtype']:<5} {row['s_per_it']:8.3f} {row['first_s']:8.1f} "
            f"{row['peak_mb']:8.0f} {row['pipeline_mb']:8.0f} {row['file_mb']:9.2f}")


def _timing_ratios(rows: list[dict]) -> None:
    for model in dict.fromkeys(r["model"] for r in rows):
        ref = next((r for r in rows if r["model"] == model and r["variant"] == "reference" and "error" not in r),
                   None)
        if ref is None:
            continue
        for row in rows:
            if row["model"] == model and row["variant"] != "reference" and "error" not in row:
                print(f"  {model} {row['variant']:<16} {ref['s_per_it'] / row['s_per_it']:.1f}x faster per "
                      f"iteration, {ref['peak_mb'] / row['peak_mb']:.2f}x less peak memory, "
                      f"{ref['file_mb'] / row['file_mb']:.0f}x smaller file than the reference")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of seconds per measurement: few iterations, tiny random UNets; its "
                             "numbers mean nothing")
    parser.add_argument("--json", default=None, help="also write every row to this file")
    parser.add_argument("--parts", nargs="+", default=["bundled", "random"], choices=["bundled", "random"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--concept", default="red", help="the concept erased on the bundled base")
    parser.add_argument("--variants", nargs="+", default=None, choices=["reference", *VARIANTS],
                        help="bundled-base variants, run in this order, but esd-lora first under "
                             "--reference-budget (default: all but fp32, which is the default there, and low-memory)")
    parser.add_argument("--reference-lrs", nargs="+", type=float, default=[1e-3, 2e-3, 3e-3],
                        help="learning rates tried for the reference loop, one row each")
    parser.add_argument("--n", type=int, default=8, help="images per concept and phrasing split at each check")
    parser.add_argument("--confirm-n", type=int, default=32,
                        help="images per concept and split of the check that confirms a pass at --n")
    parser.add_argument("--eval-steps", type=int, default=25, help="sampling steps of the checks' images")
    parser.add_argument("--others", choices=["reliable", "all"], default="reliable",
                        help="the other concepts the bar counts: those the base draws >= 90%% of the time on both "
                             "phrasing splits (default; a concept the base draws at 70%% swings by more than the "
                             "bar's 10%% at these n), or all")
    parser.add_argument("--set", dest="erase_options", action="append", default=[], metavar="OPTION=VALUE",
                        help="an erase option on top of every esd-lora variant's on the bundled base, e.g. --set "
                             "lr=0.01 (a JSON value, else a string; checked before any run; not applied to the "
                             "reference; a variant's own switch wins)")
    parser.add_argument("--check-every", type=int, default=50)
    parser.add_argument("--max-iterations", type=int, default=600)
    parser.add_argument("--reference-budget", type=float, default=10.0, metavar="RATIO",
                        help="with both esd-lora and reference among --variants: esd-lora runs first, and each "
                             "reference run trains until the bar or for RATIO times esd-lora's training time to the "
                             "bar, to the check after (instead of --max-iterations); a reference still short of the "
                             "bar then shows esd-lora at least RATIO times faster (default 10, the target; 0: off)")
    parser.add_argument("--ddim-steps", type=int, default=None,
                        help="DDIM steps of every bundled-base variant (default: each loop's own, 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    parser.add_argument("--timing-variants", nargs="+", default=None, choices=["reference", *VARIANTS],
                        help="variants timed on the random UNets (default: reference, esd-lora, checkpointing, "
                             "low-memory; on CUDA also compile and fp32)")
    parser.add_argument("--timing-ddim-steps", type=int, default=None, help="default: 50 on CUDA, 2 on CPU")
    parser.add_argument("--timing-iterations", type=int, default=None, help="default: 10 on CUDA, 3 on CPU")
    parser.add_argument("--full-size", action="store_true", help="on CPU too, the released latent sizes")
    parser.add_argument("--work-dir", default=None,
                        help="where the random pipelines are saved for the loops to load (default: the temp folder; "
                             "SD 1.5 takes 4 GB in fp32, SDXL 14 GB)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 <= args.reference_budget < float("inf"):  # nan too
        parser.error(f"--reference-budget {args.reference_budget:g}: expected a finite ratio > 0, or 0 for no budget")
    if args.work_dir is not None and not Path(args.work_dir).is_dir():
        parser.error(f"--work-dir {args.work_dir} is not a folder: create it or pass another")
    cuda = args.device.startswith("cuda")
    if args.variants is None:
        # the bundled part runs fp32, and its model is too small for the low-memory options to matter
        args.variants = ["reference", *(v for v in VARIANTS if v not in ("fp32", "low-memory", "lowest-memory"))]
        if args.quick:
            args.variants.remove("compile")
    if args.timing_variants is None:
        args.timing_variants = ["reference", "esd-lora", "checkpointing", "low-memory"] + (["compile", "fp32"]
                                                                                            if cuda else [])
    args.erase_options = dict(_option(parser, o) for o in args.erase_options)
    if args.erase_options:  # a bad value is the one-line error now, not each worker's
        from esd_lora.erase import make_config
        from esd_lora.errors import EsdLoraError

        try:  # as the bundled part's variants will erase, the base's recommendations included
            make_config("bundled", args.concept, **args.erase_options)
        except EsdLoraError as exc:
            parser.error(f"--set: {exc}")
    args.unet_overrides = {}
    if args.quick:  # seconds per measurement: the shapes of the code paths, not of the models
        args.reference_lrs, args.n, args.confirm_n, args.eval_steps = args.reference_lrs[-1:], 1, 2, 4
        args.check_every, args.max_iterations, args.ddim_steps = 2, 4, args.ddim_steps or 4
        args.timing_ddim_steps, args.timing_iterations = args.timing_ddim_steps or 4, args.timing_iterations or 3
        args.unet_overrides = {"sd15": {"block_out_channels": [32, 64, 64, 64], "attention_head_dim": 4,
                                        "sample_size": 16},
                               "sdxl": {"block_out_channels": [32, 64, 64], "attention_head_dim": [2, 4, 4],
                                        "transformer_layers_per_block": [1, 1, 1], "sample_size": 16}}
    return args


def _option(parser, text: str) -> tuple[str, object]:
    """``--set NAME=VALUE`` as (name, value) (:func:`esd_lora.config.parse_option`), or the parser's error."""
    from esd_lora.config import parse_option
    from esd_lora.errors import ConfigError

    try:
        return parse_option(text)
    except ConfigError as exc:
        parser.error(f"--set {exc}")


def main() -> None:
    args = parse_args()
    if args.worker:
        task = json.loads(args.worker)
        print(json.dumps(WORKERS[task["kind"]](task)))
        return
    started = time.perf_counter()
    print(f"machine: {machine(args.device)}; esd-lora speed benchmark{' (--quick: smoke run)' if args.quick else ''}")
    results = {"machine": machine(args.device), "quick": args.quick, "settings": {
        k: v for k, v in vars(args).items() if k not in ("worker", "json")}}
    if "bundled" in args.parts:
        results["bundled"] = bundled_part(args, args.device)
    if "random" in args.parts:
        results["random"] = random_part(args, args.device)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
