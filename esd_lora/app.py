"""The web app: erase, compare, stack, merge, evaluate and share erasures in a browser (gradio Blocks).

Run ``python app.py`` (the repository then also runs as a Hugging Face Space) or ``esd-lora app``. The UI only
calls library verbs: :func:`~esd_lora.erase.erase`, :func:`~esd_lora.generate.generate`,
:func:`~esd_lora.merge.merge`, :func:`~esd_lora.evaluate.evaluate`, :func:`~esd_lora.adapter.load_adapter` and the
Hub functions of :mod:`esd_lora.hub`. Every handler is a method of :class:`App`, so tests call them without a browser.

Model work (erase, compare, merge, evaluate) shares one gradio queue slot: concurrent users wait their turn, and
one training runs at a time per process (:class:`Trainer`), shown in a busy line at the top of the page. A
training is cancelled from the page; cancelled, it writes nothing. Outputs go to a per-process temporary folder.
"""

from __future__ import annotations

import atexit
import functools
import html
import importlib
import inspect
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from .errors import ConfigError, EsdLoraError, MissingDependencyError, TrainerBusyError, TrainingCancelledError

try:
    import gradio as gr
except ImportError as exc:
    raise MissingDependencyError("the web app needs gradio: pip install 'esd-lora[app]'") from exc

from .adapter import Adapter, load_adapter
from .catalog import INDEX, CatalogEntry, load_catalog
from .config import METHODS, PRESERVE_AT, EraseConfig
from .stack import AdapterSpec

CATALOG = Path(__file__).resolve().parent.parent / "adapters"
"""The bundled adapter catalog at the repository root (absent from a plain pip install: the list is then empty)."""
STACK_HEADERS = ["adapter", "weight", "concepts"]
REPORT_HEADERS = ["concept", "dimension", "split", "base %", "adapted %"]
MODEL_QUEUE = "model"  # the gradio concurrency id shared by every event that runs the model
POLL_S = 0.5  # how often a running training updates the page
DISPLAY_PX = 256  # small models make tiny images: show them at least this tall (nearest neighbour)


def visible_errors(fn: Callable) -> Callable:
    """Show esd-lora's typed errors in the page as a gradio error message; the app keeps serving.

    ``gr.Error`` is how gradio reports an expected failure to the user (no traceback in the server log).
    """
    def convert(exc: EsdLoraError) -> gr.Error:
        return gr.Error(str(exc), print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except EsdLoraError as exc:
                raise convert(exc) from exc
        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EsdLoraError as exc:
            raise convert(exc) from exc
    return function


def number(value, name: str, kind: type = float) -> float | int | None:
    """A form field as a number; ``None`` when left blank (the default then applies)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if kind is int:
        if not result.is_integer():
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        return int(result)
    return result


def split_concepts(text: str | None) -> list[str]:
    """Concepts typed in one box, separated by commas or new lines."""
    return [c.strip() for c in (text or "").replace("\n", ",").split(",") if c.strip()]


def split_lines(text: str | None) -> list[str]:
    """Prompts typed in one box, one per line (prompts may hold commas)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def read_catalog(folder: str | os.PathLike = CATALOG) -> dict[str, CatalogEntry]:
    """The catalog's adapters by name; none when the folder has no index (a plain pip install)."""
    folder = Path(folder)
    return {e.name: e for e in load_catalog(folder).entries} if (folder / INDEX).is_file() else {}


def display(images: list[Image.Image]) -> Image.Image:
    """Images side by side in one strip, scaled up (nearest neighbour) to at least ``DISPLAY_PX`` tall."""
    width, height = images[0].size
    scale = max(1, -(-DISPLAY_PX // height))  # rounded up
    strip = Image.new("RGB", (width * scale * len(images), height * scale))
    for i, image in enumerate(images):
        strip.paste(image.convert("RGB").resize((width * scale, height * scale), Image.NEAREST),
                    (i * width * scale, 0))
    return strip


def session_of(request: gr.Request | None) -> str:
    """The browser session a request comes from (one per open page)."""
    return getattr(request, "session_hash", None) or "local"


@dataclass
class Job:
    """One training: who started it, how far it is, and its outcome."""

    owner: str
    config: EraseConfig
    losses: list[float] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: Adapter | None = None
    error: BaseException | None = None

    def on_step(self, step: int, loss: float) -> None:
        """The erase callback: record the loss, or stop training (nothing is written) once cancelled."""
        if self.cancelled.is_set():
            raise TrainingCancelledError(f"cancelled at step {step}/{self.config.iterations}: nothing was written")
        self.losses.append(loss)

    def describe(self) -> str:
        step = f"step {len(self.losses)}/{self.config.iterations}" if self.losses else "starting"
        return f"erasing {', '.join(self.config.concepts)} ({self.config.method}), {step}"


class Trainer:
    """Runs one training at a time for the whole process, in a background thread the page polls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.job: Job | None = None

    def start(self, job: Job, work: Callable[[Callable[[int, float], None]], Adapter]) -> None:
        """Run ``work(callback)`` for ``job`` in a thread; refuse while another training runs."""
        if not self._lock.acquire(blocking=False):
            raise TrainerBusyError(f"a training is already running ({self.status()}): wait for it to finish")
        self.job = job

        def run() -> None:
            try:
                job.result = work(job.on_step)
            except BaseException as exc:  # handed to the page by the handler that polls the job
                job.error = exc
            finally:
                self._lock.release()
                job.done.set()

        threading.Thread(target=run, name="esd-lora-erase", daemon=True).start()

    def running(self) -> Job | None:
        job = self.job
        return job if job is not None and not job.done.is_set() else None

    def cancel(self, owner: str) -> bool:
        """Cancel the running training if ``owner`` started it; ``False`` when there is none of theirs."""
        job = self.running()
        if job is None or job.owner != owner:
            return False
        job.cancelled.set()
        return True

    def status(self) -> str:
        job = self.running()
        return job.describe() if job else "idle"


class App:
    """The app's state (work folder, catalog, trainer, loaded base) and one method per UI action."""

    def __init__(self, *, workdir: str | os.PathLike | None = None, catalog: str | os.PathLike = CATALOG,
                 hub_endpoint: str | None = None, lend_token: bool = True) -> None:
        """``lend_token``: a blank token field falls back to this server's own Hugging Face login (only
        sensible when the app serves its owner alone, on loopback)."""
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="esd-lora-app-")
            atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        self.workdir = Path(workdir)
        self.catalog = read_catalog(catalog)
        self.hub_endpoint = hub_endpoint
        self.lend_token = lend_token
        self.trainer = Trainer()
        self._pipe, self._pipe_base = None, None

    def pipeline(self, base: str):
        """The loaded base model; the last one is kept (model events run one at a time, so sharing is safe)."""
        from .families import load_pipeline

        base = str(base).strip()
        if self._pipe_base != base:
            self._pipe, self._pipe_base = None, None  # free the old model before loading the next
            self._pipe, self._pipe_base = load_pipeline(base), base
        return self._pipe

    def new_folder(self) -> Path:
        folder = self.workdir / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        return folder

    def token(self, typed: str | None, *, push: bool = False) -> str | bool | None:
        """The token for a Hub call: the typed one, else this server's login when lent (``None`` lets
        huggingface_hub find it), else none at all (``False``)."""
        if typed and typed.strip():
            return typed.strip()
        if self.lend_token:
            return None
        if push:
            raise ConfigError("paste a Hugging Face write token in the token field to push: this server does not "
                              "lend its own")
        return False

    def busy_status(self) -> str:
        status = self.trainer.status()
        if status == "idle":
            return "**Status:** idle"
        return f"**Status: busy** ({html.escape(status)}); other jobs wait in the queue"

    # Erase

    @visible_errors
    def erase(self, base, concepts, method, eta, iterations, lr, rank, contexts="", preserve="",
              preserve_at="erased", no_preserve=False, no_contexts=False, request: gr.Request = None):
        """Train an erasure in the background; yield (status, loss curve, download, adapter path) as it goes.
        A blank field means what the base recommends (the bundled base: esd-x-strict, eta 0.5, its scenes that
        name the concept as contexts, the other concepts' names preserved); ``no_preserve`` means no preservation
        at all (plain ESD), ``no_contexts`` no contexts."""
        from .cli.erase import default_name
        from .erase import erase, make_config

        options = {"method": method or None, "eta": number(eta, "eta"),
                   "iterations": number(iterations, "iterations", int), "lr": number(lr, "learning rate"),
                   "rank": number(rank, "rank", int),
                   "contexts": split_lines(contexts) or None, "preserve": split_lines(preserve) or None,
                   "preserve_at": preserve_at}
        for name, ticked, label in (("preserve", no_preserve, "No preservation"), ("contexts", no_contexts,
                                                                                   "No contexts")):
            if ticked:
                if options[name]:
                    raise ConfigError(f"'{label}' is ticked and the {name.capitalize()} box is filled: clear one "
                                      "of them")
                options[name] = []
        config = make_config(base, split_concepts(concepts), **{k: v for k, v in options.items() if v is not None})
        out = self.new_folder() / default_name(config)
        job = Job(owner=session_of(request), config=config)
        self.trainer.start(job, lambda callback: erase(self.pipeline(base), config.concepts, config=config, out=out,
                                                       progress=False, callback=callback))
        try:
            while not job.done.wait(POLL_S):
                yield progress_html(job), loss_curve(job), gr.skip(), gr.skip()
        except GeneratorExit:  # the page went away: stop training, write nothing
            job.cancelled.set()
            raise
        if isinstance(job.error, TrainingCancelledError):
            yield html.escape(str(job.error)), loss_curve(job), gr.skip(), gr.skip()
            return
        if job.error is not None:
            raise job.error
        adapter = job.result
        meta = adapter.metadata
        done = (f"erased {html.escape(', '.join(config.concepts))} in {meta.wall_time_s:.1f} s "
                f"({config.iterations} steps, final loss {meta.final_loss:.5f}): {adapter.path.name}")
        yield done, loss_curve(job), str(adapter.path), str(adapter.path)

    def cancel(self, request: gr.Request = None) -> str:
        if self.trainer.cancel(session_of(request)):
            return "cancelling: the training stops after the current step and writes nothing"
        return "nothing to cancel: no training of yours is running"

    @visible_errors
    def push_adapter(self, path, repo_id, private, token) -> str:
        from .hub import push_adapter

        return self.push(push_adapter, path, "erase a concept first", repo_id, private, token)

    def push(self, push, path, missing: str, repo_id, private, token) -> str:
        """Upload ``path`` (an adapter, a merged folder) with the Hub function ``push``; say where it went."""
        if not path:
            raise ConfigError(f"nothing to push yet: {missing}")
        url = push(path, (repo_id or "").strip(), private=bool(private), endpoint=self.hub_endpoint,
                   token=self.token(token, push=True))
        return f"pushed to {url}"

    # The stack (Compare tab; also used by Merge and Evaluate)

    def add(self, rows, names: dict, name: str, path, weight) -> tuple[list, dict]:
        """Add the adapter at ``path`` under a unique ``name``; refuse a file that is not an esd-lora adapter."""
        adapter = load_adapter(path)
        weight = number(weight, "weight")
        rows = stack_rows(rows)
        unique, n = name, 1
        while unique in names or any(row[0] == unique for row in rows):
            n += 1
            unique = f"{name}-{n}"
        rows.append([unique, 1.0 if weight is None else weight, ", ".join(adapter.metadata.config.concepts)])
        return rows, {**names, unique: str(path)}

    @visible_errors
    def add_erased(self, path, weight, rows, names):
        if not path:
            raise ConfigError("nothing to add yet: erase a concept first")
        return self.add(rows, names, Path(path).stem, path, weight)

    @visible_errors
    def add_catalog(self, name, weight, rows, names):
        if name not in self.catalog:
            raise ConfigError(f"choose an adapter of the catalog ({', '.join(self.catalog) or 'empty'})")
        return self.add(rows, names, name, self.catalog[name].file, weight)

    @visible_errors
    def add_upload(self, file, weight, rows, names):
        """Keep a copy of an uploaded adapter in the work folder and add it."""
        folder = self.new_folder()
        copy = Path(shutil.copy(file, folder / Path(file).name))
        try:
            rows, names = self.add(rows, names, copy.stem, copy, weight)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return rows, names

    @visible_errors
    def add_hub(self, repo_id, weight, token, rows, names):
        from .hub import pull_adapter

        repo_id = (repo_id or "").strip()
        path = pull_adapter(repo_id, endpoint=self.hub_endpoint, token=self.token(token))
        return self.add(rows, names, repo_id.removeprefix("hub:"), path, weight)

    def clear_stack(self) -> tuple[list, dict]:
        return [], {}

    def specs(self, rows, names: dict, *, required: bool = True) -> list[AdapterSpec]:
        """The stack as adapter specs: each row's file and its (edited) weight."""
        specs = []
        for name, weight, *_ in stack_rows(rows):
            if name not in names:
                raise ConfigError(f"{name!r} in the stack was not added in this page: add adapters with the "
                                  "buttons under the table")
            value = number(weight, f"the weight of {name}")
            specs.append(AdapterSpec(names[name], 1.0 if value is None else value))
        if required and not specs:
            raise ConfigError("the stack is empty: add an adapter (catalog, upload, Hub, or the Erase tab) first")
        return specs

    # Compare, Merge, Evaluate

    @visible_errors
    def compare(self, base, prompt, seed, num_images, rows, names):
        """The base's images and the stack's, same prompt and seeds, side by side."""
        from .generate import generate

        specs = self.specs(rows, names)
        result = generate(self.pipeline(base), prompt, adapters=specs, seed=number(seed, "seed", int) or 0,
                          num_images=number(num_images, "images", int) or 1)
        return display(result.base), display(result.erased)

    @visible_errors
    def merge(self, base, rows, names, dtype, single_file):
        """Fuse the stack into the base: a zipped diffusers folder (and a single file) to download or push."""
        from .merge import merge

        specs = self.specs(rows, names)
        folder = self.new_folder()
        single = folder / "merged.safetensors" if single_file else None
        out = merge(str(base).strip(), specs, folder / "merged", single_file=single, dtype=dtype)
        archive = shutil.make_archive(str(folder / "merged"), "zip", out)
        files = [archive] + ([str(single)] if single else [])
        return files, str(out), f"fused {len(specs)} adapter(s) into {base} ({dtype})"

    @visible_errors
    def push_merged(self, folder, repo_id, private, token) -> str:
        from .hub import push_folder

        return self.push(push_folder, folder, "merge the stack first", repo_id, private, token)

    @visible_errors
    def evaluate(self, rows, names, n, concepts, fresh_base=False, progress=gr.Progress(track_tqdm=True)):
        """The bundled judge's report on the bundled base, with and without the stack: table, grid and a line on
        where the base's rates come from. Gradio shows evaluate's progress bar (minutes of images) over the report
        while it runs."""
        from .evaluate import evaluate

        n = number(n, "images per concept", int) or 8
        report = evaluate(self.pipeline("bundled"), adapters=self.specs(rows, names, required=False), n=n,
                          concepts=concepts or None, fresh_base=bool(fresh_base))
        table = [[r.concept, r.dimension, r.split, round(100 * r.base), round(100 * r.adapted)] for r in report.rows]
        if "base_rates" in report.settings:
            note = (f"Base rates {report.settings['base_rates']}: only the grid's base images were generated. "
                    "Tick *Measure the base again* to generate all of them.")
        else:
            note = f"Base rates measured here: {n} images per concept and split."
        return table, report.grid(), note


def stack_rows(rows) -> list[list]:
    """The stack table's rows, without the blank ones a fresh table holds."""
    return [list(row) for row in rows or [] if row and str(row[0]).strip()]


def progress_html(job: Job) -> str:
    """A progress bar and the latest loss of a running training."""
    total, step = job.config.iterations, len(job.losses)
    detail = f", loss {job.losses[-1]:.5f}" if job.losses else " (loading the base, sampling trajectories)"
    return (f'<progress max="{total}" value="{step}"></progress> '
            f"{html.escape(job.describe())}{detail}")


def loss_curve(job: Job):
    import pandas as pd

    return pd.DataFrame({"step": range(1, len(job.losses) + 1), "loss": list(job.losses)})


def build_app(app: App | None = None) -> gr.Blocks:
    """The gradio Blocks of ``app`` (a fresh :class:`App` by default)."""
    app = app or App()
    catalog = [(f"{name} ({', '.join(e.concepts)}, {e.method})", name) for name, e in app.catalog.items()]
    from .bundled import world

    with gr.Blocks(title="esd-lora") as demo:
        gr.Markdown("# esd-lora\nErase concepts from text-to-image models as small, stackable LoRA adapters.")
        gr.Markdown(app.busy_status, every=1.0, elem_id="busy")
        with gr.Row():
            base = gr.Textbox("bundled", label="Base model", elem_id="base", scale=3,
                              info="'bundled' (the small offline model), a diffusers folder or a Hub id")
            token = gr.Textbox(label="Hugging Face token (optional)", type="password", scale=2,
                               info="for private repos and pushes")
        adapter_path, names, merged_path = gr.State(None), gr.State({}), gr.State(None)

        with gr.Tab("Erase"):
            with gr.Row():
                concepts = gr.Textbox(label="Concept(s) to erase", placeholder="red, or: van gogh, monet",
                                      elem_id="concepts", scale=3)
                method = gr.Dropdown(list(METHODS), value=None, label="Method", elem_id="method",
                                     info="blank: what the base recommends (bundled: esd-x-strict), else esd-x: "
                                          + METHODS["esd-x"])
            with gr.Row():
                # Text boxes, not gr.Number: a blank field means "the default" (gr.Number shows blank as 0).
                eta = gr.Textbox(label="eta", elem_id="eta",
                                 info="blank: what the base recommends (bundled: 0.5), else 1.0; "
                                      + EraseConfig.help("eta"))
                iterations = gr.Textbox("100", label="Iterations", elem_id="iterations", info="gradient steps")
                lr = gr.Textbox(label="Learning rate", elem_id="lr",
                                info="blank: what the base recommends (bundled: 0.005), else 0.0002")
                rank = gr.Textbox("4", label="Rank", elem_id="rank", info="LoRA rank")
            with gr.Accordion("Contexts and preservation", open=False, elem_id="erase-more"):
                with gr.Row():
                    contexts = gr.Textbox(label="Contexts (one per line)", lines=2, elem_id="contexts",
                                          placeholder="a {} portrait",
                                          info="blank: what the base recommends (bundled: every scene of its world "
                                               "that names the concept), else none; " + EraseConfig.help("contexts"))
                    preserve = gr.Textbox(label="Preserve (one prompt per line)", lines=2, elem_id="preserve",
                                          placeholder="claude monet",
                                          info="prompts whose frozen predictions the adapter must keep; blank: what "
                                               "the base recommends (bundled: the other concepts' names), else none")
                    preserve_at = gr.Dropdown(list(PRESERVE_AT), value="erased", label="Preserve at",
                                              elem_id="preserve-at", info=EraseConfig.help("preserve_at"))
                    no_preserve = gr.Checkbox(label="No preservation (plain ESD)", elem_id="no-preserve",
                                              info="keep nothing, not even what the base recommends")
                    no_contexts = gr.Checkbox(label="No contexts", elem_id="no-contexts",
                                              info="erase the concept as given only, not the contexts the base "
                                                   "recommends")
            with gr.Row():
                erase_btn = gr.Button("Erase", variant="primary", elem_id="erase-btn")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn")
            erase_status = gr.HTML(elem_id="erase-status")
            erase_note = gr.Markdown(elem_id="erase-note")
            curve = gr.LinePlot(x="step", y="loss", label="Training loss", elem_id="loss-curve", height=220)
            adapter_file = gr.File(label="Adapter", elem_id="adapter-file", interactive=False)
            with gr.Row():
                add_erased = gr.Button("Add to stack", elem_id="add-erased")
                erased_repo = gr.Textbox(label="Hub repo id", placeholder="user/esd-red", scale=2)
                erased_private = gr.Checkbox(label="private")
                push_erased = gr.Button("Push to Hub")
            erase_pushed = gr.Markdown(elem_id="erase-pushed")

        with gr.Tab("Compare", id="compare"):
            stack = gr.Dataframe(headers=STACK_HEADERS, datatype=["str", "number", "str"], type="array",
                                 label="Stack (edit the weights here; also used by Merge and Evaluate)",
                                 static_columns=[0, 2], interactive=True, elem_id="stack", value=[])
            weight = gr.Number(1.0, label="Weight of the next adapter added", elem_id="weight")
            with gr.Row():
                catalog_choice = gr.Dropdown(catalog, value=catalog[0][1] if catalog else None,
                                             label="Bundled catalog", elem_id="catalog", scale=2)
                add_catalog = gr.Button("Add from catalog", elem_id="add-catalog")
            with gr.Row():
                hub_id = gr.Textbox(label="Hub repo id", placeholder="user/esd-red or user/esd-red@revision",
                                    elem_id="hub-id", scale=2)
                add_hub = gr.Button("Add from Hub", elem_id="add-hub")
            upload = gr.File(label="Upload an adapter (.safetensors)", file_types=[".safetensors"],
                             elem_id="upload")
            clear = gr.Button("Clear stack", size="sm")
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", placeholder="a red circle", elem_id="prompt", scale=3)
                seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                num_images = gr.Slider(1, 4, value=2, step=1, label="Images", elem_id="num-images")
            compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn")
            with gr.Row():
                original = gr.Image(label="Original", type="pil", format="png", elem_id="original",
                                    interactive=False)
                erased = gr.Image(label="Erased", type="pil", format="png", elem_id="erased", interactive=False)

        with gr.Tab("Merge"):
            gr.Markdown("Fuse the stack (Compare tab) into the base weights: a diffusers folder (zipped) and, "
                        "optionally, one checkpoint in the original Stable Diffusion layout.")
            with gr.Row():
                dtype = gr.Dropdown(["fp32", "fp16", "bf16"], value="fp32", label="Saved dtype")
                single_file = gr.Checkbox(label="also a single-file checkpoint")
            merge_btn = gr.Button("Merge", variant="primary", elem_id="merge-btn")
            merge_status = gr.Markdown(elem_id="merge-status")
            merged_files = gr.File(label="Merged model", file_count="multiple", interactive=False)
            with gr.Row():
                merged_repo = gr.Textbox(label="Hub repo id", placeholder="user/bundled-no-red", scale=2)
                merged_private = gr.Checkbox(label="private")
                push_merged = gr.Button("Push to Hub")
            merge_pushed = gr.Markdown()

        with gr.Tab("Evaluate"):
            gr.Markdown("The bundled judge scores images of the bundled base with and without the stack "
                        "(share of images still showing each concept).")
            with gr.Row():
                n = gr.Number(8, label="Images per concept and split", precision=0, elem_id="eval-n")
                judged = gr.Dropdown(world.all_concepts(), multiselect=True, label="Concepts (blank: all)")
                fresh_base = gr.Checkbox(label="Measure the base again",
                                         info="by default the base's stored rates are read when they fit")
            evaluate_btn = gr.Button("Evaluate", variant="primary", elem_id="evaluate-btn")
            report = gr.Dataframe(headers=REPORT_HEADERS, label="Report", interactive=False, elem_id="report")
            eval_note = gr.Markdown(elem_id="eval-note")
            grid = gr.Image(label="Samples", type="pil", format="png", interactive=False)

        model = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": 1}
        erase_btn.click(app.erase, [base, concepts, method, eta, iterations, lr, rank, contexts, preserve, preserve_at,
                                    no_preserve, no_contexts],
                        [erase_status, curve, adapter_file, adapter_path], **model)
        cancel_btn.click(app.cancel, None, erase_note)
        push_erased.click(app.push_adapter, [adapter_path, erased_repo, erased_private, token], erase_pushed)
        add_erased.click(app.add_erased, [adapter_path, weight, stack, names], [stack, names])
        add_catalog.click(app.add_catalog, [catalog_choice, weight, stack, names], [stack, names])
        add_hub.click(app.add_hub, [hub_id, weight, token, stack, names], [stack, names])
        added = upload.upload(app.add_upload, [upload, weight, stack, names], [stack, names])
        for after in (added.success, added.failure):  # empty the upload box, also after a refused file
            after(lambda: None, None, upload)
        clear.click(app.clear_stack, None, [stack, names])
        compare_btn.click(app.compare, [base, prompt, seed, num_images, stack, names], [original, erased], **model)
        merge_btn.click(app.merge, [base, stack, names, dtype, single_file], [merged_files, merged_path,
                                                                               merge_status], **model)
        push_merged.click(app.push_merged, [merged_path, merged_repo, merged_private, token], merge_pushed)
        evaluate_btn.click(app.evaluate, [stack, names, n, judged, fresh_base], [report, grid, eval_note], **model)
    return demo


def launch(*, host: str, port: int, share: bool = False) -> None:
    """Serve the app until interrupted. The server's own Hub login is lent to blank token fields only when
    it serves this machine alone (loopback, no share link)."""
    lend = host in ("127.0.0.1", "localhost", "::1") and not share
    demo = build_app(App(lend_token=lend))
    if threading.current_thread() is threading.main_thread():  # kill, docker stop and service managers send
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: stop as on Ctrl-C, work folder removed
    for verb in ("erase", "evaluate", "generate", "hub", "merge"):  # torch, diffusers, peft: seconds to import,
        importlib.import_module(f"{__package__}.{verb}")  # paid before serving, not by the first click
    try:
        demo.launch(server_name=host, server_port=port, share=share, show_error=True)
    except OSError as exc:  # gradio's "cannot find empty port", a host that cannot be bound
        raise ConfigError(f"cannot serve on {host}:{port} ({exc}): pass another --port or --host") from exc


def main(argv: list[str] | None = None) -> int:
    """``python app.py [--host H] [--port P] [--share]``: the ``esd-lora app`` command."""
    from .cli import main as cli_main

    return cli_main(["app", *(sys.argv[1:] if argv is None else argv)])
