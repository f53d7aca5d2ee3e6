"""publish.py: the catalog in adapters/ goes to one Hub repo per adapter, idempotently, against the fake Hub."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from esd_lora.adapter import file_sha256
from esd_lora.catalog import load_catalog
from esd_lora.errors import CatalogError
from esd_lora.hub import ADAPTER_FILE

pytest_plugins = ["hub_server"]  # the fake Hub fixture
_spec = importlib.util.spec_from_file_location("publish", Path(__file__).parents[1] / "publish.py")
publish = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(publish)


@pytest.fixture
def catalog(tmp_path, sd1_adapter, make_variant):
    """A two-adapter catalog as scripts/build_catalog.py writes it: esd-red with its evaluation, esd-blue without."""
    folder = tmp_path / "adapters"
    (folder / "esd-red").mkdir(parents=True)
    shutil.copyfile(sd1_adapter, folder / "esd-red.safetensors")
    make_variant(folder / "esd-blue.safetensors")
    (folder / "esd-red" / "report.json").write_text(json.dumps({
        "settings": {"n": 4, "steps": 25}, "adapters": [],
        "rows": [{"concept": "red", "dimension": "color", "split": "train", "base": 1.0, "adapted": 0.25,
                  "images": 4}]}))
    Image.new("RGB", (8, 8), "blue").save(folder / "esd-red" / "grid.png")
    entries = [{"name": name, "file": f"{name}.safetensors", "concepts": ["red"], "method": "esd-x",
                "sha256": file_sha256(folder / f"{name}.safetensors"), "metrics": {"erased_train": 0.25}}
               for name in ("esd-red", "esd-blue")]
    entries[0].update(report="esd-red/report.json", grid="esd-red/grid.png")
    write_index(folder, {"base": "bundled", "base_fingerprint": "sha256:0", "adapters": entries})
    return folder


def write_index(folder: Path, index: dict) -> None:
    (folder / "index.json").write_text(json.dumps(index, indent=2))


def read_index(folder: Path) -> dict:
    return json.loads((folder / "index.json").read_text())


def run(hub, catalog, *extra) -> int:
    return publish.main(["ns", "--adapters", str(catalog), "--endpoint", hub.url, *extra])


def test_publish_makes_one_repo_per_adapter_and_a_second_run_uploads_nothing(hub, catalog, capsys):
    assert run(hub, catalog) == 0
    out = capsys.readouterr().out
    assert "ns/esd-red: uploaded" in out and "ns/esd-blue: uploaded" in out
    red, blue = hub.files("ns/esd-red"), hub.files("ns/esd-blue")
    assert red[ADAPTER_FILE] == (catalog / "esd-red.safetensors").read_bytes()
    assert blue[ADAPTER_FILE] == (catalog / "esd-blue.safetensors").read_bytes()
    assert red["grid.png"] == (catalog / "esd-red" / "grid.png").read_bytes() and "report.json" in red
    assert "grid.png" not in blue and "report.json" not in blue
    card = ModelCard(red["README.md"].decode())
    assert "esd-lora" in card.data.tags and "| erased_train | 0.25 |" in card.text
    assert "| red | color | train | 100% | 25% | -75 pts |" in card.text
    commits = {repo: hub.commit_count(repo) for repo in ("ns/esd-red", "ns/esd-blue")}
    lfs_objects, seen = len(hub.lfs), len(hub.requests)

    assert run(hub, catalog) == 0
    assert capsys.readouterr().out.splitlines() == ["ns/esd-red: up to date", "ns/esd-blue: up to date",
                                                    "2 adapter(s): 0 changed, 2 up to date"]
    assert {repo: hub.commit_count(repo) for repo in commits} == commits
    assert len(hub.lfs) == lfs_objects
    assert sorted({path.split("/")[-2] for _, path in hub.requests[seen:]}) == ["paths-info", "repos"]


def test_dry_run_shows_what_would_change_and_changes_nothing(hub, catalog, capsys):
    assert run(hub, catalog, "--dry-run") == 0
    assert "ns/esd-red: would upload pytorch_lora_weights.safetensors, README.md, report.json, grid.png" in \
        capsys.readouterr().out
    assert hub.repos == {}

    assert run(hub, catalog) == 0
    index = read_index(catalog)
    index["adapters"][1]["metrics"]["erased_train"] = 0.125  # only esd-blue's card text changes
    write_index(catalog, index)
    capsys.readouterr()
    commits = hub.commit_count("ns/esd-blue")
    assert run(hub, catalog, "--dry-run") == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["ns/esd-red: up to date",
                                                        "ns/esd-blue: would upload README.md"]
    assert hub.commit_count("ns/esd-blue") == commits
    assert run(hub, catalog) == 0
    assert hub.commit_count("ns/esd-blue") == commits + 1
    assert "| erased_train | 0.125 |" in hub.files("ns/esd-blue")["README.md"].decode()


def test_private_creates_private_repos(hub, catalog):
    assert run(hub, catalog, "--private") == 0
    assert hub.repos["ns/esd-red"].private and hub.repos["ns/esd-blue"].private


@pytest.mark.parametrize("break_it, match", [
    (lambda folder: (folder / "index.json").unlink(), "has no index.json"),
    (lambda folder: (folder / "index.json").write_text("{not json"), "not valid JSON"),
    (lambda folder: (folder / "esd-blue.safetensors").write_bytes(b"changed"), "does not match its sha256"),
    (lambda folder: edit(folder, 0, file="../esd-red.safetensors"), "not a path inside"),
    (lambda folder: edit(folder, 0, file="/etc/passwd"), "not a path inside"),
    (lambda folder: edit(folder, 0, grid="esd-red/missing.png"), "does not exist"),
    (lambda folder: edit(folder, 1, name="esd-red"), "name twice"),
    (lambda folder: edit(folder, 1, name="../evil"), "cannot be a repo name"),
    (lambda folder: edit(folder, 1, name="a/b"), "has no '/'"),
    (lambda folder: edit(folder, 1, sha256=None), "lacks sha256"),
])
def test_a_broken_catalog_is_refused_before_any_request(hub, catalog, capsys, break_it, match):
    break_it(catalog)
    with pytest.raises(CatalogError, match=match):
        load_catalog(catalog)
    assert run(hub, catalog) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert hub.requests == []


def edit(folder: Path, which: int, **changes) -> None:
    index = read_index(folder)
    for key, value in changes.items():
        if value is None:
            index["adapters"][which].pop(key)
        else:
            index["adapters"][which][key] = value
    write_index(folder, index)


def test_a_namespace_with_a_slash_is_refused(hub, catalog, capsys):
    assert publish.main(["ns/x", "--adapters", str(catalog), "--endpoint", hub.url]) == 1
    assert "namespace" in capsys.readouterr().err and hub.requests == []
