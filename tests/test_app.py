"""The web app's handlers, called directly (no browser): results, progress, cancel, busy, and bad input."""

import importlib
import json
import socket
import sys
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest

import esd_lora
from esd_lora import load_adapter
from esd_lora.app import (MODEL_QUEUE, App, Job, build_app, display, number, progress_html, read_catalog,
                          split_concepts)
from esd_lora.cli import build_parser, main
from esd_lora.config import EraseConfig
from esd_lora.adapter import file_sha256
from esd_lora.errors import CatalogError, ConfigError, TrainerBusyError


pytest_plugins = ["hub_server"]  # the fake Hub fixture


def session(name="alice"):
    return SimpleNamespace(session_hash=name)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app(tmp_path):
    return App(workdir=tmp_path / "work", catalog=tmp_path / "no-catalog.json",
               hub_endpoint=f"http://127.0.0.1:{closed_port()}")


@pytest.fixture
def stack(app, sd1_adapter):
    """The stack holding the session-trained sd1 adapter at weight 1."""
    return app.add_erased(str(sd1_adapter), 1.0, [], {})


def adapters_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".safetensors" in p.name]


def test_number_fields():
    assert number("", "rank") is None and number(None, "rank") is None  # blank: the default applies
    assert number(" 10 ", "iterations", int) == 10 and number(2.5, "eta") == 2.5
    with pytest.raises(ConfigError, match="iterations must be a number, got 'ten'"):
        number("ten", "iterations", int)
    with pytest.raises(ConfigError, match="whole number"):
        number("2.5", "rank", int)
    assert split_concepts(" red, blue\nvan gogh,, ") == ["red", "blue", "van gogh"]


@pytest.mark.parametrize("concepts, iterations, lr, more, message", [
    ("  ", "10", "", {}, "no concept given"),
    ("red", "ten", "", {}, "iterations must be a number, got 'ten'"),
    ("red", "10", "fast", {}, "learning rate must be a number, got 'fast'"),
    ("red", "0", "", {}, "iterations must be a positive integer"),
    ("red", "10", "", {"contexts": "a red car"}, "must hold {} once, where the concept goes"),
    ("red", "10", "", {"preserve_at": "own"}, "needs preserve prompts to keep"),  # the tiny base recommends none
])
def test_erase_bad_input_is_a_visible_error_and_starts_nothing(app, tiny_dirs, concepts, iterations, lr, more,
                                                               message):
    with pytest.raises(gr.Error, match=message):
        next(app.erase(str(tiny_dirs["sd1"]), concepts, "esd-x", "1.0", iterations, lr, "4", **more,
                       request=session()))
    assert app.trainer.status() == "idle" and not adapters_in(app.workdir)


def test_erase_streams_progress_and_offers_the_adapter(app, tiny_dirs):
    updates = list(app.erase(str(tiny_dirs["sd1"]), "red", "esd-x", "1.0", "3", "", "2", request=session()))
    status, curve, file, path = updates[-1]
    assert status.startswith("erased red") and file == path
    adapter = load_adapter(path)
    assert adapter.metadata.config.concepts == ["red"] and adapter.metadata.config.rank == 2
    assert adapter.metadata.config.contexts == [] and adapter.metadata.config.preserve == []
    assert list(curve["step"]) == [1, 2, 3] and np.isfinite(curve["loss"]).all()
    assert app.trainer.status() == "idle"


def test_erase_takes_contexts_and_preserved_prompts_one_per_line(app, tiny_dirs):
    updates = list(app.erase(str(tiny_dirs["sd1"]), "red", "esd-x", "1.0", "2", "", "2", "a {} star\n\n a {} box ",
                             "blue\na green, dotted star", "own", request=session()))
    config = load_adapter(updates[-1][-1]).metadata.config
    assert config.contexts == ["a {} star", "a {} box"] and config.preserve == ["blue", "a green, dotted star"]
    assert config.preserve_at == "own"


def test_erase_without_preservation_on_a_base_that_recommends_it(app, recommending_base):
    def config(**more):
        updates = list(app.erase(str(recommending_base), "red", "esd-x", "1.0", "1", "", "2", request=session(),
                                 **more))
        return load_adapter(updates[-1][-1]).metadata.config

    assert config().preserve == ["blue", "dotted"]  # a blank box: the base's anchors, less those naming red
    assert config(no_preserve=True).preserve == []
    with pytest.raises(gr.Error, match="'No preservation' is ticked and the Preserve box is filled"):
        next(app.erase(str(recommending_base), "red", "esd-x", "1.0", "1", "", "2", "", "blue", no_preserve=True,
                       request=session()))
    assert config().contexts == ["a {} toy"] and config(no_contexts=True).contexts == []
    with pytest.raises(gr.Error, match="'No contexts' is ticked and the Contexts box is filled"):
        next(app.erase(str(recommending_base), "red", "esd-x", "1.0", "1", "", "2", "a {} car", no_contexts=True,
                       request=session()))
    assert app.trainer.status() == "idle"


def test_blank_method_and_eta_are_what_the_base_recommends(app, recommending_base):
    settings = json.loads((recommending_base / "esd_lora.json").read_text())
    settings["erase"].update(method="esd-x-strict", eta=0.5)
    (recommending_base / "esd_lora.json").write_text(json.dumps(settings))

    def config(method, eta):
        updates = list(app.erase(str(recommending_base), "red", method, eta, "1", "", "2", request=session()))
        return load_adapter(updates[-1][-1]).metadata.config

    assert (config(None, "").method, config(None, "").eta) == ("esd-x-strict", 0.5)
    assert (config("esd-x", "1").method, config("esd-x", "1").eta) == ("esd-x", 1.0)


def test_progress_bar_shows_step_and_loss():
    job = Job(owner="a", config=EraseConfig(concepts=["red"], iterations=10))
    assert '<progress max="10" value="0">' in progress_html(job)
    job.on_step(1, 0.25)
    job.on_step(2, 0.125)
    assert '<progress max="10" value="2">' in progress_html(job) and "step 2/10, loss 0.12500" in progress_html(job)


def test_cancel_stops_training_writes_nothing_and_frees_the_trainer(app, tiny_dirs, monkeypatch):
    """While a training runs (held in its model loading here): busy status, owner-only cancel, one at a time."""
    release = threading.Event()
    load = app.pipeline
    monkeypatch.setattr(app, "pipeline", lambda base: release.wait() and load(base))
    updates = app.erase(str(tiny_dirs["sd1"]), "red", "esd-x", "1.0", "50", "", "2", request=session("alice"))
    status, *_ = next(updates)
    assert "<progress" in status and "erasing red" in status
    assert "busy" in app.busy_status() and "erasing red" in app.busy_status()
    with pytest.raises(gr.Error, match="already running"):
        next(app.erase(str(tiny_dirs["sd1"]), "blue", "esd-x", "1.0", "5", "", "2", request=session("bob")))
    assert app.cancel(session("bob")).startswith("nothing to cancel")  # not bob's training
    assert app.cancel(session("alice")).startswith("cancelling")
    release.set()
    status, curve, file, path = list(updates)[-1]
    assert status == "cancelled at step 1/50: nothing was written"
    assert file == path == gr.skip()  # the previous download stays
    assert not adapters_in(app.workdir)
    assert app.trainer.status() == "idle" and app.cancel(session("alice")).startswith("nothing to cancel")


def test_trainer_runs_one_at_a_time():
    app = App(workdir="unused", catalog="absent.json")
    started, release = threading.Event(), threading.Event()
    job = Job(owner="a", config=EraseConfig(concepts=["red"]))
    app.trainer.start(job, lambda callback: (started.set(), release.wait()))
    started.wait()
    with pytest.raises(TrainerBusyError, match=r"a training is already running \(erasing red \(esd-x\), starting\)"):
        app.trainer.start(Job(owner="b", config=EraseConfig(concepts=["blue"])), lambda callback: None)
    release.set()
    job.done.wait()
    assert app.trainer.status() == "idle"


def test_compare_shows_original_and_erased_side_by_side(app, tiny_dirs, stack):
    rows, names = stack
    original, erased = app.compare(str(tiny_dirs["sd1"]), "a red square", 0, 2, rows, names)
    assert original.size == erased.size == (2 * 256, 256)  # two 16 px images, scaled up for display
    assert np.abs(np.asarray(original, float) - np.asarray(erased, float)).mean() > 1


def test_stack_weights_are_edited_in_the_table(app, tiny_dirs, sd1_adapter, stack):
    rows, names = stack
    rows, names = app.add_erased(str(sd1_adapter), "0.5", rows, names)
    assert [row[:2] for row in rows] == [[sd1_adapter.stem, 1.0], [f"{sd1_adapter.stem}-2", 0.5]]
    assert [s.weight for s in app.specs(rows, names)] == [1.0, 0.5]
    rows[1][1] = "heavy"
    with pytest.raises(gr.Error, match=f"the weight of {sd1_adapter.stem}-2 must be a number, got 'heavy'"):
        app.compare(str(tiny_dirs["sd1"]), "a red square", 0, 1, rows, names)
    with pytest.raises(gr.Error, match="the stack is empty"):
        app.compare(str(tiny_dirs["sd1"]), "a red square", 0, 1, *app.clear_stack())
    with pytest.raises(ConfigError, match="'typed-in' in the stack was not added in this page"):
        app.specs([["typed-in", 1, ""]], names)


def test_upload_of_a_non_adapter_is_refused_and_not_kept(app, tmp_path, sd1_adapter):
    bogus = tmp_path / "notes.safetensors"
    bogus.write_bytes(b"not a safetensors file at all")
    with pytest.raises(gr.Error, match="notes.safetensors"):
        app.add_upload(str(bogus), 1.0, [], {})
    assert not adapters_in(app.workdir)
    rows, names = app.add_upload(str(sd1_adapter), 1.0, [], {})
    assert rows[0][0] == sd1_adapter.stem and Path(names[sd1_adapter.stem]).is_file()


def test_unreachable_or_bad_hub_repo_is_a_visible_error(app):
    with pytest.raises(gr.Error, match=f"{app.hub_endpoint}"):  # nothing listens there
        app.add_hub("nobody/no-such-adapter", 1.0, "", [], {})
    with pytest.raises(gr.Error, match="repo id"):
        app.add_hub("../etc/passwd", 1.0, "", [], {})


def test_push_then_add_from_the_hub(app, hub, sd1_adapter):
    app.hub_endpoint = hub.url
    assert app.push_adapter(str(sd1_adapter), "me/esd-red", False, "").startswith("pushed to ")
    rows, names = app.add_hub("me/esd-red", "0.5", "", [], {})
    assert rows == [["me/esd-red", 0.5, "red"]] and file_sha256(names["me/esd-red"]) == file_sha256(sd1_adapter)


def test_pushing_needs_something_and_a_token_when_none_is_lent(app, sd1_adapter):
    with pytest.raises(gr.Error, match="nothing to push yet: erase a concept first"):
        app.push_adapter(None, "me/esd-red", False, "")
    with pytest.raises(gr.Error, match="nothing to push yet: merge the stack first"):
        app.push_merged(None, "me/merged", False, "")
    app.lend_token = False
    with pytest.raises(gr.Error, match="paste a Hugging Face write token"):
        app.push_adapter(str(sd1_adapter), "me/esd-red", False, "")


def test_merge_offers_a_zipped_pipeline_and_a_single_file_and_pushes_it(app, hub, tiny_dirs, stack):
    rows, names = stack
    files, folder, status = app.merge(str(tiny_dirs["sd1"]), rows, names, "fp16", True)
    archive, single = map(Path, files)
    assert (Path(folder) / "model_index.json").is_file() and single.suffix == ".safetensors"
    assert "model_index.json" in zipfile.ZipFile(archive).namelist()
    assert status.startswith("fused 1 adapter(s)")
    app.hub_endpoint = hub.url
    assert app.push_merged(folder, "me/tiny-no-red", False, "").startswith("pushed to ")
    assert "model_index.json" in hub.files("me/tiny-no-red")


def test_evaluate_gives_the_report_table_and_grid(app, tmp_path):
    red = tmp_path / "red.safetensors"
    esd_lora.erase("bundled", "red", iterations=2, bank_size=0, ddim_steps=10, progress=False, out=red, device="cpu")
    rows, names = app.add_erased(str(red), 1.0, [], {})
    table, grid, note = app.evaluate(rows, names, 2, ["red"])
    assert [row[:3] for row in table] == [["red", "colour", "train"], ["red", "colour", "held-out"]]
    assert all(0 <= v <= 100 for row in table for v in row[3:]) and grid.size[0] > 0
    assert note == "Base rates measured here: 2 images per concept and split."  # no stored measurement at n=2


@pytest.mark.parametrize("fresh", [False, True])
def test_evaluate_says_where_the_base_rates_come_from(app, monkeypatch, fresh):
    """The tab's default (8 images, every concept) has a stored measurement; the note says so, and the checkbox
    asks for a fresh one."""
    asked = {}

    def fake_evaluate(pipe, *, adapters, n, concepts, fresh_base):
        asked.update(n=n, concepts=concepts, fresh_base=fresh_base)
        settings = {} if fresh_base else {"base_rates": "stored in base/base_rates.json (these weights and settings)"}
        return SimpleNamespace(rows=[], settings=settings, grid=lambda: None)

    # esd_lora.evaluate is the function; the app imports it from the module when asked
    monkeypatch.setattr(importlib.import_module("esd_lora.evaluate"), "evaluate", fake_evaluate)
    monkeypatch.setattr(app, "pipeline", lambda base: None)
    _, _, note = app.evaluate([], {}, None, [], fresh)
    assert asked == {"n": 8, "concepts": None, "fresh_base": fresh}
    assert note == ("Base rates measured here: 8 images per concept and split." if fresh else
                    "Base rates stored in base/base_rates.json (these weights and settings): only the grid's base "
                    "images were generated. Tick *Measure the base again* to generate all of them.")


def test_catalog_lists_the_bundled_adapters(tmp_path, app, sd1_adapter):
    folder = tmp_path / "adapters"
    folder.mkdir()
    assert read_catalog(folder) == {}  # no index.json: a plain pip install has no catalog
    (folder / "esd-red.safetensors").write_bytes(sd1_adapter.read_bytes())
    entry = {"name": "esd-red", "file": "esd-red.safetensors", "concepts": ["red"], "method": "esd-x",
             "sha256": file_sha256(sd1_adapter)}
    (folder / "index.json").write_text(json.dumps({"base": "bundled", "adapters": [entry]}))
    app.catalog = read_catalog(folder)
    rows, names = app.add_catalog("esd-red", 0.8, [], {})
    assert rows == [["esd-red", 0.8, "red"]] and names == {"esd-red": str(folder / "esd-red.safetensors")}
    with pytest.raises(gr.Error, match=r"choose an adapter of the catalog \(esd-red\)"):
        app.add_catalog(None, 1.0, rows, names)
    (folder / "index.json").write_text("{not json")
    with pytest.raises(CatalogError):
        App(workdir=tmp_path / "work", catalog=folder)


def test_display_scales_small_images_with_nearest_neighbour():
    from PIL import Image

    image = Image.new("RGB", (32, 32), (200, 10, 10))
    image.putpixel((0, 0), (0, 0, 0))
    strip = display([image, image])
    assert strip.size == (512, 256) and strip.getpixel((7, 7)) == (0, 0, 0) and strip.getpixel((8, 8)) != (0, 0, 0)


def test_model_events_share_one_queue_slot(app):
    demo = build_app(app)
    queued = {f.name: (f.concurrency_id, f.concurrency_limit) for f in demo.fns.values()}
    for name in ("erase", "compare", "merge", "evaluate"):
        assert queued[name] == (MODEL_QUEUE, 1)
    assert queued["cancel"][0] != MODEL_QUEUE  # cancelling never waits behind the training it cancels


def test_without_gradio_the_command_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "esd_lora.app")
    assert main(["app"]) == 1
    assert capsys.readouterr().err.strip() == "error: the web app needs gradio: pip install 'esd-lora[app]'"


def test_cli_app_command(capsys):
    args = build_parser().parse_args(["app"])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["app", "--port", str(busy.getsockname()[1])]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot serve on 127.0.0.1:") and "pass another --port" in err
