"""Push, pull, search and hub: specs with the real huggingface_hub client against the fake Hub of hub_server.py."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import save_file

import esd_lora
from esd_lora.adapter import file_sha256, load_adapter
from esd_lora.cli import main
from esd_lora.errors import (ConfigError, HubAuthError, HubConnectionError, HubIntegrityError, HubNotFoundError,
                             HubOfflineError, HubPermissionError, HubServerError, InvalidRepoIdError,
                             NotAnEsdAdapterError)
from esd_lora.families import family_of, load_pipeline
from esd_lora.hub import ADAPTER_FILE, pull_adapter, push_adapter, resolve_adapter_source, search_adapters
from esd_lora.stack import AdapterSpec, parse_adapter_spec

pytest_plugins = ["hub_server"]  # the fake Hub fixture
TAGS = {"esd-lora", "concept-erasure", "lora", "diffusers", "text-to-image"}


@pytest.fixture
def report_dir(tmp_path):
    """A folder as 'esd-lora evaluate --out' writes it."""
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({
        "settings": {"base": "bundled", "n": 8, "steps": 25},
        "adapters": [], "rows": [{"concept": "red", "dimension": "color", "split": "train", "base": 0.875,
                                  "adapted": 0.125, "images": 8}]}))
    Image.new("RGB", (16, 8), "red").save(folder / "grid.png")
    (folder / "report.txt").write_text("red color train 88% 12%\n")
    return folder


def cache_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file() or p.is_symlink())


def unet_output(pipe, prompt="a red star"):
    x = torch.randn(1, *family_of(pipe).latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return pipe.unet(x, 400, **family_of(pipe).encode([prompt]).unet_kwargs()).sample


def test_push_uploads_adapter_card_and_evaluation_with_lfs(hub, sd1_adapter, report_dir):
    url = push_adapter(sd1_adapter, "me/no-red", endpoint=hub.url, report=report_dir)

    sha = hub.repos["me/no-red"].branches["main"]
    assert url == f"{hub.url}/me/no-red/commit/{sha}"
    files = hub.files("me/no-red")
    assert files[ADAPTER_FILE] == sd1_adapter.read_bytes()
    assert file_sha256(sd1_adapter) in hub.lfs  # went through the LFS batch / upload / verify steps
    assert files["report.json"] == (report_dir / "report.json").read_bytes()
    assert files["grid.png"] == (report_dir / "grid.png").read_bytes()
    assert "report.txt" not in files
    card = ModelCard(files["README.md"].decode())
    assert TAGS <= set(card.data.tags)
    assert card.data.library_name == "diffusers" and card.data.license == "mit"
    assert card.data.esd_lora["concepts"] == ["red"] and card.data.esd_lora["method"] == "esd-x"
    assert card.data.esd_lora["sha256"] == file_sha256(sd1_adapter)
    assert "| red | color | train | 88% | 12% | -75 pts |" in card.text
    assert "](grid.png)" in card.text and "](report.json)" in card.text
    assert 'pipe.load_lora_weights("me/no-red")' in card.text and "--adapter hub:me/no-red" in card.text


@pytest.mark.parametrize("options, row", [
    ({}, "| preservation | - |"),
    ({"preserve": ["blue"], "preserve_weight": 4.0}, "| preservation | weight 4, at x_t of the erased concept |"),
    ({"preserve": ["blue"], "preserve_at": "own"},
     "| preservation | weight 1, at x_t of the preserved prompts' own trajectories |"),
    ({}, "| key / value preservation | - |"),
    ({"preserve": ["blue"], "preserve_text_weight": 10.0}, "| key / value preservation | weight 10 |"),
    ({"concept_contexts": {"red": ["a {} star", "{} shape"]}},
     "| contexts of one concept | red: a {} star, {} shape |"),
])
def test_the_card_says_how_the_preservation_term_was_applied(tiny_dirs, options, row):
    from esd_lora.cards import adapter_card

    adapter = esd_lora.erase(tiny_dirs["sd1"], "red", iterations=1, ddim_steps=2, progress=False, device="cpu",
                             **options)
    card = adapter_card(adapter, repo_id="me/no-red", sha256="0" * 64, license="mit")
    assert row in str(card)


def test_a_hub_without_xet_gets_the_upload_through_git_lfs(hub, sd1_adapter, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)  # huggingface_hub tries Xet first; the fake has none
    push_adapter(sd1_adapter, "me/no-red", endpoint=hub.url)
    assert "uploading with Git LFS instead" in capsys.readouterr().err
    assert hub.files("me/no-red")[ADAPTER_FILE] == sd1_adapter.read_bytes()
    assert file_sha256(sd1_adapter) in hub.lfs


def test_pushing_the_same_thing_twice_commits_nothing(hub, sd1_adapter):
    push_adapter(sd1_adapter, "me/no-red", endpoint=hub.url)
    commits = hub.commit_count("me/no-red")
    assert push_adapter(sd1_adapter, "me/no-red", endpoint=hub.url) == f"{hub.url}/me/no-red"
    assert hub.commit_count("me/no-red") == commits


def test_pull_downloads_through_the_cache_pinned_to_a_commit(hub, sd1_adapter, make_variant, tmp_path, capsys):
    push_adapter(sd1_adapter, "me/no-red", endpoint=hub.url)
    first = hub.repos["me/no-red"].branches["main"]
    path = pull_adapter("me/no-red", endpoint=hub.url)

    cache = path.parents[2]  # <cache>/models--me--no-red/snapshots/<commit>/file
    assert path.parent.name == first and path.read_bytes() == sd1_adapter.read_bytes()
    assert (cache / "refs" / "main").read_text() == first  # so that HF_HUB_OFFLINE=1 finds it later
    assert f"hub:me/no-red@main: commit {first}" in capsys.readouterr().err

    newer = make_variant()
    push_adapter(newer, "me/no-red", endpoint=hub.url)
    assert pull_adapter("me/no-red", endpoint=hub.url).read_bytes() == newer.read_bytes()
    pinned = pull_adapter(f"hub:me/no-red@{first}", endpoint=hub.url, out=tmp_path / "old.safetensors")
    assert pinned == tmp_path / "old.safetensors" and pinned.read_bytes() == sd1_adapter.read_bytes()


def test_push_to_a_branch_and_pull_it(hub, sd1_adapter, make_variant):
    push_adapter(sd1_adapter, "me/no-red", endpoint=hub.url)
    other = make_variant()
    push_adapter(other, "me/no-red", endpoint=hub.url, revision="dev")
    assert pull_adapter("me/no-red@dev", endpoint=hub.url).read_bytes() == other.read_bytes()
    assert pull_adapter("me/no-red", endpoint=hub.url).read_bytes() == sd1_adapter.read_bytes()


def test_offline_uses_the_cache_and_says_so(hub, sd1_adapter, monkeypatch, capsys):
    push_adapter(sd1_adapter, "me/no-red", endpoint=hub.url)
    online = pull_adapter("me/no-red", endpoint=hub.url)
    seen = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    assert pull_adapter("me/no-red", endpoint=hub.url) == online
    assert len(hub.requests) == seen
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("offline (HF_HUB_OFFLINE=1)")
    with pytest.raises(HubOfflineError, match="not in the Hub cache"):
        pull_adapter("me/never-pulled", endpoint=hub.url)
    with pytest.raises(HubOfflineError, match="unset HF_HUB_OFFLINE"):
        push_adapter(sd1_adapter, "me/other", endpoint=hub.url)
    assert len(hub.requests) == seen


def test_hub_specs_work_in_the_stack_and_equal_the_local_file(hub, sd1_adapter, tiny_dirs, monkeypatch):
    push_adapter(sd1_adapter, "me/no-red", endpoint=hub.url)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # read at call time, not at import
    pipe = load_pipeline(tiny_dirs["sd1"], device="cpu")
    outputs = {}
    for spec in (f"{sd1_adapter}:0.5", "hub:me/no-red:0.5", "me/no-red@main:0.5"):
        esd_lora.apply_adapters(pipe, [spec])
        outputs[spec] = unet_output(pipe)
        pipe.unload_lora_weights()
    assert parse_adapter_spec("hub:me/no-red@v1:-1") == AdapterSpec("hub:me/no-red@v1", -1.0)
    assert parse_adapter_spec("hub:me/no-red") == AdapterSpec("hub:me/no-red", 1.0)
    local, *hubbed = outputs.values()
    for other in hubbed:
        torch.testing.assert_close(other, local, atol=0, rtol=0)


def test_a_local_path_always_wins(hub, sd1_adapter, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "me").mkdir()
    (tmp_path / "me" / "no-red").write_bytes(sd1_adapter.read_bytes())
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    assert resolve_adapter_source("me/no-red") == Path("me/no-red")
    assert hub.requests == []


def test_search_lists_tagged_adapters_with_concepts_base_method_and_downloads(hub, sd1_adapter, make_variant):
    push_adapter(sd1_adapter, "me/no-red", endpoint=hub.url)
    push_adapter(make_variant(base_model="bundled"), "you/bundled-red", endpoint=hub.url)
    hub.create("me/plain-model")  # no esd-lora tag: not listed
    hub.commit("me/plain-model", {"README.md": b"---\ntags: [lora]\n---\n# plain\n"})
    pull_adapter("you/bundled-red", endpoint=hub.url)

    found = search_adapters(endpoint=hub.url)
    assert [f["repo_id"] for f in found] == ["you/bundled-red", "me/no-red"]  # most downloaded first
    assert found[0] == {"repo_id": "you/bundled-red", "concepts": ["red"], "method": "esd-x", "base": "bundled",
                        "downloads": 1, "url": f"{hub.url}/you/bundled-red"}
    assert found[1]["base"] == load_adapter(sd1_adapter).metadata.base_model
    assert [f["repo_id"] for f in search_adapters("no-red", endpoint=hub.url)] == ["me/no-red"]
    assert [f["repo_id"] for f in search_adapters(base="bundled", endpoint=hub.url)] == ["you/bundled-red"]
    assert search_adapters("nothing-like-this", endpoint=hub.url) == []
    # the limit counts results after the base filter, not repos listed before it
    assert [f["repo_id"] for f in search_adapters(endpoint=hub.url, limit=1)] == ["you/bundled-red"]
    only = search_adapters(base=found[1]["base"], endpoint=hub.url, limit=1)
    assert [f["repo_id"] for f in only] == ["me/no-red"]
    with pytest.raises(ConfigError, match="limit must be a positive integer"):
        search_adapters(endpoint=hub.url, limit=0)


def test_cli_info_and_export_take_hub_adapters(hub, sd1_adapter, tmp_path, capsys, monkeypatch):
    push_adapter(sd1_adapter, "me/no-red", endpoint=hub.url)
    assert main(["info", "hub:me/no-red", "--endpoint", hub.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["concepts"] == ["red"]

    monkeypatch.chdir(tmp_path)
    assert main(["export", "me/no-red", "--endpoint", hub.url]) == 0
    exported = tmp_path / "no-red-kohya.safetensors"  # named after the repo, in the current folder
    assert f"wrote {exported.name}" in capsys.readouterr().out
    from safetensors import safe_open

    with safe_open(str(exported), "pt") as f:
        assert any(k.startswith("lora_unet_") for k in f.keys())
    requests = len(hub.requests)
    assert main(["export", "me/no-red", "--endpoint", hub.url]) == 1  # exists: refused before any download
    assert "--overwrite" in capsys.readouterr().err and len(hub.requests) == requests
    assert main(["info", "hub:me/missing", "--endpoint", hub.url]) == 1
    assert "me/missing" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere" / "x.safetensors")]) == 1  # a local file: the input is named
    assert "x.safetensors does not exist: check the path" in capsys.readouterr().err


def test_cli_push_pull_search(hub, sd1_adapter, report_dir, tmp_path, capsys):
    assert main(["push", str(sd1_adapter), "me/no-red", "--endpoint", hub.url, "--report", str(report_dir),
                 "--private", "--license", "openrail"]) == 0
    assert f"{hub.url}/me/no-red/commit/" in capsys.readouterr().out
    assert hub.repos["me/no-red"].private
    assert ModelCard(hub.files("me/no-red")["README.md"].decode()).data.license == "openrail"

    out = tmp_path / "pulled.safetensors"
    assert main(["pull", "hub:me/no-red", "--endpoint", hub.url, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["config"]["concepts"] == ["red"]
    assert "commit" in captured.err and out.read_bytes() == sd1_adapter.read_bytes()
    assert main(["pull", "me/no-red", "--endpoint", hub.url, "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err

    hub.repos["me/no-red"].private = False  # the listing shows public repos
    assert main(["search", "red", "--endpoint", hub.url]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"searching {hub.url} ...\n"  # before the listing, which a dead endpoint retries
    lines = captured.out.splitlines()
    assert lines[0].split() == ["repo", "concepts", "method", "base", "downloads"]
    assert lines[1].split()[:3] == ["me/no-red", "red", "esd-x"]
    assert main(["search", "zebra", "--endpoint", hub.url]) == 0
    assert "no esd-lora adapters found" in capsys.readouterr().out


# --- faults -------------------------------------------------------------------------------------------------------

def _one_line(error: Exception) -> None:
    assert "\n" not in str(error) and str(error)


@pytest.fixture
def pushed(hub, sd1_adapter):
    push_adapter(sd1_adapter, "me/no-red", endpoint=hub.url)
    return hub


def test_401_bad_token(pushed, sd1_adapter):
    pushed.tokens = {"good": "write"}
    for call in (lambda: push_adapter(sd1_adapter, "me/no-red", endpoint=pushed.url, token="bad"),
                 lambda: pull_adapter("me/no-red", endpoint=pushed.url, token="bad")):
        with pytest.raises(HubAuthError, match="401.*HF_TOKEN") as info:
            call()
        _one_line(info.value)


def test_403_read_only_token_cannot_push(pushed, make_variant):
    pushed.tokens = {"reader": "read"}
    commits = pushed.commit_count("me/no-red")
    with pytest.raises(HubPermissionError, match="403.*write access") as info:
        push_adapter(make_variant(), "me/no-red", endpoint=pushed.url, token="reader")
    _one_line(info.value)
    assert pushed.commit_count("me/no-red") == commits
    assert pull_adapter("me/no-red", endpoint=pushed.url, token="reader").is_file()  # reading is allowed


@pytest.mark.parametrize("source, match", [
    ("me/missing", "repository me/missing was not found"),
    ("me/no-red@nope", "has no revision 'nope'"),
    ("me/card-only", f"has no {ADAPTER_FILE}"),
])
def test_404_repo_revision_file(pushed, source, match):
    pushed.create("me/card-only")
    pushed.commit("me/card-only", {"README.md": b"# nothing here\n"})
    with pytest.raises(HubNotFoundError, match=match) as info:
        pull_adapter(source, endpoint=pushed.url)
    _one_line(info.value)


def test_500_is_a_server_error(pushed, sd1_adapter):
    pushed.fail = (500, "")
    for call in (lambda: pull_adapter("me/no-red", endpoint=pushed.url),
                 lambda: push_adapter(sd1_adapter, "me/no-red", endpoint=pushed.url)):
        with pytest.raises(HubServerError, match="HTTP 500.*try again later") as info:
            call()
        _one_line(info.value)


def test_connection_refused(hub, sd1_adapter, refused_url):
    closed = refused_url
    for call in (lambda: pull_adapter("me/no-red", endpoint=closed),
                 lambda: push_adapter(sd1_adapter, "me/no-red", endpoint=closed)):
        with pytest.raises(HubConnectionError, match=f"cannot reach the Hub at {closed}") as info:
            call()
        _one_line(info.value)


def test_cli_reports_hub_errors_on_one_line(pushed, capsys):
    assert main(["pull", "me/missing", "--endpoint", pushed.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: repository me/missing was not found") and err.count("\n") == 1


def test_interrupted_download_leaves_nothing_half_written(pushed, tmp_path):
    pushed.interrupt = {ADAPTER_FILE}
    out = tmp_path / "out.safetensors"
    with pytest.raises(HubServerError):
        pull_adapter("me/no-red", endpoint=pushed.url, out=out)
    assert not out.exists() and os.listdir(tmp_path / "hf-cache") != []
    leftovers = [f for f in cache_files(tmp_path / "hf-cache") if "snapshots" in f or f.endswith(".incomplete")]
    assert leftovers == []
    pushed.interrupt = set()
    assert pull_adapter("me/no-red", endpoint=pushed.url, out=out) == out


def test_a_download_not_matching_the_advertised_sha256_is_refused_and_dropped(pushed, sd1_adapter, tmp_path):
    pushed.corrupt = {ADAPTER_FILE}
    out = tmp_path / "out.safetensors"
    with pytest.raises(HubIntegrityError, match="removed from the cache") as info:
        pull_adapter("me/no-red", endpoint=pushed.url, out=out)
    _one_line(info.value)
    assert not out.exists()
    assert [f for f in cache_files(tmp_path / "hf-cache") if "/blobs/" in f or "/snapshots/" in f] == []
    pushed.corrupt = set()
    assert pull_adapter("me/no-red", endpoint=pushed.url).read_bytes() == sd1_adapter.read_bytes()


def test_a_file_that_is_not_an_esd_lora_adapter_is_refused(hub, tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"unet.x.lora_A.weight": torch.zeros(2, 2)}, str(plain))
    hub.create("me/plain")
    hub.commit("me/plain", {ADAPTER_FILE: plain.read_bytes()})
    with pytest.raises(NotAnEsdAdapterError):
        pull_adapter("me/plain", endpoint=hub.url)
    requests = len(hub.requests)
    with pytest.raises(NotAnEsdAdapterError):
        push_adapter(plain, "me/plain", endpoint=hub.url)
    assert len(hub.requests) == requests


@pytest.mark.parametrize("repo_id", ["../me/x", "/abs/path", "me\\x", "me//x", "", "me/", "/", "me/../x",
                                     "me/x/../../y", "me/x@", "me/x@../main", "me/x@/main"])
def test_path_tricks_in_repo_ids_are_refused_before_any_request(hub, sd1_adapter, repo_id, capsys):
    if "@" not in repo_id:
        with pytest.raises(InvalidRepoIdError):
            push_adapter(sd1_adapter, repo_id, endpoint=hub.url)
    with pytest.raises(InvalidRepoIdError) as info:
        pull_adapter(f"hub:{repo_id}", endpoint=hub.url)
    _one_line(info.value)
    with pytest.raises(InvalidRepoIdError):
        esd_lora.stack.load_stack([parse_adapter_spec(f"hub:{repo_id}")])
    assert main(["pull", f"hub:{repo_id}", "--endpoint", hub.url]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert hub.requests == []


def test_merge_push_uploads_the_merged_folder_with_its_card(hub, sd1_adapter, tiny_dirs, tmp_path):
    from esd_lora.merge import merge

    with pytest.raises(InvalidRepoIdError):  # checked before minutes of merging
        merge(tiny_dirs["sd1"], [str(sd1_adapter)], tmp_path / "never", push="../x", endpoint=hub.url)
    assert not (tmp_path / "never").exists()
    out = merge(tiny_dirs["sd1"], [str(sd1_adapter)], tmp_path / "merged", push="me/merged", endpoint=hub.url)
    files = hub.files("me/merged")
    assert files["unet/diffusion_pytorch_model.safetensors"] == (
        out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert {"model_index.json", "erasures.json"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert 'from_pretrained("me/merged")' in card.text and "esd-lora" in card.data.tags


def test_stock_diffusers_loads_the_pushed_repo_to_the_same_output(hub, sd1_adapter, tiny_dirs, tmp_path):
    """``pipe.load_lora_weights(REPO_ID)`` in a fresh process (HF_ENDPOINT is read at import) = apply_adapters."""
    push_adapter(sd1_adapter, "me/no-red", endpoint=hub.url)
    pipe = load_pipeline(tiny_dirs["sd1"], device="cpu")
    esd_lora.apply_adapters(pipe, [str(sd1_adapter)])
    ours = unet_output(pipe)
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_hub import unet_output
        from diffusers import StableDiffusionPipeline
        pipe = StableDiffusionPipeline.from_pretrained({str(tiny_dirs["sd1"])!r}, safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.load_lora_weights("me/no-red")
        torch.save(unet_output(pipe), {str(tmp_path / "stock.pt")!r})
    """)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "stock-cache"),
           "HF_HUB_DISABLE_XET": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=300)
    torch.testing.assert_close(torch.load(tmp_path / "stock.pt"), ours, atol=1e-5, rtol=0)
    assert ("GET", f"/me/no-red/resolve/main/{ADAPTER_FILE}") in hub.requests
