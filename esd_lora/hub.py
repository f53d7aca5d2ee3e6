"""Share erasures on the Hugging Face Hub: push, pull, search, and ``hub:`` adapter sources.

Every Hub call goes through huggingface_hub. Conventions:

* The endpoint is ``--endpoint`` (``endpoint=``), else ``HF_ENDPOINT`` read at call time (huggingface_hub reads
  it once, at import, so it is always passed explicitly), else the public Hub.
* The token is ``token=``, else whatever huggingface_hub finds (``HF_TOKEN``, ``hf auth login``).
* Downloads are pinned: the revision is resolved to a commit sha first (and recorded in the cache's ``refs/``),
  then that commit is downloaded through the Hub cache, checked against the sha256 the Hub advertises and read as
  an esd-lora adapter. With ``HF_HUB_OFFLINE=1`` the cached copy is used, and a line on stderr says so.
* Repo ids and revisions are validated before any request; every Hub failure becomes a one-line typed error
  (:mod:`esd_lora.errors`) that says what to do.

An adapter goes up as ``pytorch_lora_weights.safetensors`` (so stock ``pipe.load_lora_weights(repo_id)`` finds
it) with a model card, and the evaluation's ``report.json`` and ``grid.png`` when there is one. Uploads compare
each file with the remote one first and commit only what changed: pushing the same thing twice commits nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError,
                                    LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                    RevisionNotFoundError, RevisionResolutionError)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import validate_repo_id
from huggingface_hub.utils._runtime import is_xet_available
from huggingface_hub.utils.sha import git_hash

from .adapter import Adapter, file_sha256, load_adapter
from .cards import ADAPTER_FILE, DEFAULT_LICENSE, adapter_card
from .config import positive_int
from .errors import (ConfigError, EsdLoraError, HubAuthError, HubConnectionError, HubError, HubIntegrityError,
                     HubNotFoundError, HubOfflineError, HubPermissionError, HubServerError, InvalidRepoIdError)
from .outputs import atomic_path, check_output

HUB_PREFIX = "hub:"
TAG = "esd-lora"  # every adapter pushed by esd-lora carries it; search lists by it
REPORT_FILE = "report.json"
GRID_FILE = "grid.png"
_BARE_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[^\s:]+)?")
_REVISION = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)*")


# --- names: endpoints, repo ids, sources ------------------------------------------------------------------------

def hub_endpoint(endpoint: str | None = None) -> str:
    """``endpoint``, else ``HF_ENDPOINT`` as set now, else huggingface_hub's default (the public Hub)."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub itself only looks at import time)."""
    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid ``OWNER/NAME`` (or ``NAME``); path tricks are refused before any request."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise InvalidRepoIdError(f"{repo_id!r} is not a Hub repo id: write OWNER/NAME with letters, digits, '-', "
                                 "'_' or '.' (no '..', '--', slashes at the ends or backslashes), e.g. "
                                 "esd-lora/esd-red") from None
    return repo_id


def check_revision(revision: str) -> str:
    """A branch, tag or commit name without path tricks (no '..', backslashes, empty parts)."""
    if not _REVISION.fullmatch(revision) or ".." in revision or revision.endswith(".lock"):
        raise InvalidRepoIdError(f"{revision!r} is not a valid revision: give a branch, tag or commit sha such as "
                                 "main, v1 or refs/pr/1")
    return revision


def parse_hub_source(source: str) -> tuple[str, str | None]:
    """``hub:OWNER/NAME[@REVISION]`` (or the same without ``hub:``) as ``(repo_id, revision or None)``."""
    repo_id, sep, revision = str(source).removeprefix(HUB_PREFIX).partition("@")
    check_repo_id(repo_id)
    return repo_id, check_revision(revision) if sep else None


def is_hub_source(source: str) -> bool:
    """``hub:...``, or a bare ``OWNER/NAME[@REV]`` that is not a local path (a local path always wins)."""
    source = str(source)
    if os.path.exists(source):
        return False
    return source.startswith(HUB_PREFIX) or (bool(_BARE_REPO.fullmatch(source))
                                              and not source.endswith(".safetensors"))


def resolve_adapter_source(source: str | os.PathLike, *, endpoint: str | None = None,
                           token: str | None = None) -> Path:
    """A local adapter path for ``source``: itself if it is a local path, else the pulled (cached) Hub file."""
    if is_hub_source(str(source)):
        return pull_adapter(str(source), endpoint=endpoint, token=token)
    return Path(source).expanduser()


# --- errors ---------------------------------------------------------------------------------------------------

@contextmanager
def hub_errors(action: str, endpoint: str, repo_id: str = "", revision: str | None = None) -> Iterator[None]:
    """Turn what huggingface_hub raises while doing ``action`` ("push to a/b") into one-line typed errors."""
    try:
        yield
    except EsdLoraError:
        raise
    except Exception as exc:
        error = _translate(exc, action, endpoint, repo_id, revision)
        if error is None:
            raise
        raise error from exc


def _translate(exc: BaseException, action: str, endpoint: str, repo_id: str,
               revision: str | None) -> HubError | None:
    """The typed error for the first recognisable exception in ``exc``'s chain (None if there is none)."""
    where = f"{repo_id}@{revision or 'main'}"
    chain, seen = [], exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for error in chain:
        if isinstance(error, GatedRepoError):
            return HubPermissionError(f"{repo_id} is gated on {endpoint}: accept its conditions on the repo page, "
                                      "then retry with a token of that account")
        if isinstance(error, RepositoryNotFoundError):
            return HubNotFoundError(f"repository {repo_id} was not found on {endpoint} (or it is private and your "
                                    "token cannot see it): check the id, --endpoint / HF_ENDPOINT and HF_TOKEN")
        if isinstance(error, RevisionNotFoundError):
            return HubNotFoundError(f"{repo_id} has no revision {revision or 'main'!r} on {endpoint}: check the "
                                    "branch, tag or commit after '@'")
        if isinstance(error, EntryNotFoundError) and not isinstance(error, LocalEntryNotFoundError):
            return HubNotFoundError(f"{where} has no {ADAPTER_FILE}: it is not an esd-lora adapter repo (push one "
                                    f"with 'esd-lora push FILE {repo_id}')")
        if isinstance(error, HfHubHTTPError) and error.response is not None:
            return _status_error(error.response.status_code, action, endpoint, error)
        if isinstance(error, httpx2.TransportError):
            return HubConnectionError(f"cannot reach the Hub at {endpoint} to {action} ({type(error).__name__}): "
                                      "check --endpoint / HF_ENDPOINT and your network, or set HF_HUB_OFFLINE=1 to "
                                      "use adapters already in the cache")
    if is_offline() and any(isinstance(e, (OfflineModeIsEnabled, RevisionResolutionError, LocalEntryNotFoundError))
                            for e in chain):
        return HubOfflineError(f"HF_HUB_OFFLINE is set and {where} is not in the Hub cache "
                               f"({constants.HF_HUB_CACHE}): pull it once while online, or unset HF_HUB_OFFLINE")
    return None


def _status_error(status: int, action: str, endpoint: str, error: HfHubHTTPError) -> HubError:
    if status == 401:
        return HubAuthError(f"the Hub at {endpoint} rejected the token (HTTP 401) when asked to {action}: set HF_TOKEN "
                            "to a valid token or log in with 'hf auth login'")
    if status == 403:
        return HubPermissionError(f"the Hub at {endpoint} does not let this token {action} (HTTP 403): use a token "
                                  "with write access to that namespace, or push to your own namespace")
    if status == 404:
        return HubNotFoundError(f"the Hub at {endpoint} found nothing when asked to {action} (HTTP 404): check the "
                                "repo id, revision and --endpoint")
    detail = (error.server_message or "").strip().splitlines()
    detail = f" ({detail[0]})" if detail else ""
    if status >= 500:
        return HubServerError(f"the Hub at {endpoint} failed with HTTP {status} when asked to {action}{detail}: try "
                              "again later, or set HF_HUB_OFFLINE=1 to use adapters already in the cache")
    return HubError(f"the Hub at {endpoint} refused to {action} with HTTP {status}{detail}: check the repo id, "
                    "revision and files, and that the endpoint is a Hugging Face Hub")


def refuse_offline(action: str) -> None:
    """Refuse an operation that needs the Hub (pushing, searching) while ``HF_HUB_OFFLINE`` is set."""
    if is_offline():
        raise HubOfflineError(f"HF_HUB_OFFLINE is set: cannot {action} without the Hub; unset HF_HUB_OFFLINE")


# --- pull -------------------------------------------------------------------------------------------------------

def pull_adapter(source: str, *, out: str | os.PathLike | None = None, endpoint: str | None = None,
                 token: str | None = None, overwrite: bool = False) -> Path:
    """Download the adapter of ``source`` (``hub:OWNER/NAME[@REV]`` or ``OWNER/NAME[@REV]``) and return its path.

    The revision is resolved to a commit sha, that commit's file is downloaded through the Hub cache, checked
    against the sha256 the Hub advertises (a mismatch is removed from the cache and refused) and read as an
    esd-lora adapter. One line on stderr names the commit. With ``out`` the file is also copied there
    (atomically; an existing file is refused unless ``overwrite``) and ``out`` is returned.
    """
    repo_id, revision = parse_hub_source(source)
    out = check_output(out, overwrite=overwrite) if out is not None else None
    endpoint = hub_endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(f"download {repo_id}", endpoint, repo_id, revision):
        if is_offline():
            resolved = api.resolve_revision(repo_id, revision=revision, local_files_only=True)
            path = Path(api.hf_hub_download(repo_id, ADAPTER_FILE, revision=resolved, local_files_only=True))
            note = "offline (HF_HUB_OFFLINE=1): using the cached "
        else:
            resolved = api.resolve_revision(repo_id, revision=revision)
            remote = api.get_paths_info(repo_id, [ADAPTER_FILE], revision=resolved.resolved)
            if not remote:
                raise HubNotFoundError(f"{repo_id}@{revision or 'main'} has no {ADAPTER_FILE}: it is not an "
                                       f"esd-lora adapter repo (push one with 'esd-lora push FILE {repo_id}')")
            path = Path(api.hf_hub_download(repo_id, ADAPTER_FILE, revision=resolved))
            _verify_download(path, remote[0], f"{repo_id}@{resolved.resolved[:12]}")
            note = ""
    load_adapter(path)  # an intact download that is not an esd-lora adapter is refused here
    print(f"{note}hub:{repo_id}@{revision or 'main'}: commit {resolved.resolved}", file=sys.stderr)
    if out is None:
        return path
    with atomic_path(out) as tmp:
        shutil.copyfile(path, tmp)
    return out


def _verify_download(path: Path, remote: RepoFile, where: str) -> None:
    """Refuse (and drop from the cache) a download whose hash differs from the one the Hub advertises."""
    if remote.lfs is not None:
        kind, expected, actual = "sha256", remote.lfs.sha256, file_sha256(path)
    else:
        kind, expected, actual = "git blob id", remote.blob_id, git_hash(path.read_bytes())
    if actual == expected:
        return
    blob = path.resolve()
    path.unlink()
    blob.unlink(missing_ok=True)
    raise HubIntegrityError(f"the {ADAPTER_FILE} downloaded from {where} has {kind} {actual[:16]}…, not the "
                            f"{expected[:16]}… the Hub advertises: the download was damaged and was removed from the "
                            "cache; pull again")


# --- push -------------------------------------------------------------------------------------------------------

@dataclass
class Upload:
    """What an upload changed: the files that differed from the repo, and the commit URL (None: no commit)."""

    repo_id: str
    changed: list[str]
    url: str | None


def adapter_files(adapter: Adapter, repo_id: str, *, license: str = DEFAULT_LICENSE,
                  report_json: Path | None = None, grid: Path | None = None,
                  metrics: dict | None = None) -> dict[str, Path | bytes]:
    """The files of a saved adapter's repo (``{path in repo: local path or bytes}``): weights, card, evaluation."""
    try:
        report = json.loads(report_json.read_text()) if report_json else None
    except ValueError as exc:
        raise ConfigError(f"{report_json} is not valid JSON ({exc}): re-run 'esd-lora evaluate --out DIR'") from exc
    card = adapter_card(adapter, repo_id=repo_id, sha256=adapter.sha256, license=license, report=report,
                        report_path=REPORT_FILE if report_json else None, grid=GRID_FILE if grid else None,
                        metrics=metrics)
    files: dict[str, Path | bytes] = {ADAPTER_FILE: adapter.path, "README.md": str(card).encode()}
    if report_json:
        files[REPORT_FILE] = report_json
    if grid:
        files[GRID_FILE] = grid
    return files


def upload_files(api: HfApi, repo_id: str, files: dict[str, Path | bytes], *, message: str, private: bool = False,
                 revision: str | None = None, dry_run: bool = False) -> Upload:
    """Commit the ``files`` that differ from the repo (creating repo and branch if needed); ``dry_run`` only compares.

    Call inside :func:`hub_errors`.
    """
    if not dry_run:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, constants.DEFAULT_REVISION):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
    changed = changed_files(api, repo_id, files, revision=revision)
    if dry_run or not changed:
        return Upload(repo_id, changed, None)
    try:
        info = api.create_commit(repo_id, [CommitOperationAdd(path_in_repo=name, path_or_fileobj=files[name])
                                           for name in changed], commit_message=message, revision=revision)
    except Exception as exc:  # noqa: BLE001 - only a refused Xet upload is retried, anything else is re-raised
        if not _xet_refused(exc):
            raise
        print(f"the Hub at {api.endpoint} takes no Xet uploads: uploading with Git LFS instead", file=sys.stderr)
        with ExitStack() as stack:  # file objects make huggingface_hub take its Git LFS path
            readers = {name: stack.enter_context(_reader(files[name])) for name in changed}
            operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=reader)
                          for name, reader in readers.items()]
            info = api.create_commit(repo_id, operations, commit_message=message, revision=revision)
    return Upload(repo_id, changed, info.commit_url)


def _reader(content: Path | bytes) -> io.BufferedIOBase:
    """A binary reader of a file or of bytes."""
    return open(content, "rb") if isinstance(content, Path) else io.BufferedReader(io.BytesIO(content))


def _xet_refused(exc: BaseException) -> bool:
    """Whether huggingface_hub's Xet upload failed because the server speaks no Xet (e.g. a private Hub that only
    has Git LFS): hf_xet then reports a failed request to the server's ``xet-write-token`` route."""
    return is_xet_available() and not isinstance(exc, HfHubHTTPError) and "xet" in str(exc).lower()


def changed_files(api: HfApi, repo_id: str, files: dict[str, Path | bytes], *,
                  revision: str | None = None) -> list[str]:
    """The names in ``files`` whose content differs from the repo's (every name for a missing repo or branch).

    LFS files compare by sha256, regular files by git blob id, both as the Hub's paths-info reports them.
    """
    try:
        remote = {entry.path: entry for entry in api.get_paths_info(repo_id, list(files), revision=revision)
                  if isinstance(entry, RepoFile)}
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        if isinstance(exc, GatedRepoError):
            raise
        return list(files)
    return [name for name, content in files.items() if not _same(content, remote.get(name))]


def _same(content: Path | bytes, remote: RepoFile | None) -> bool:
    if remote is None:
        return False
    if remote.lfs is not None:
        local = file_sha256(content) if isinstance(content, Path) else hashlib.sha256(content).hexdigest()
        return local == remote.lfs.sha256
    return git_hash(content.read_bytes() if isinstance(content, Path) else content) == remote.blob_id


def push_adapter(path: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
                 endpoint: str | None = None, token: str | None = None, report: str | os.PathLike | None = None,
                 license: str = DEFAULT_LICENSE) -> str:
    """Push an adapter file to the model repo ``repo_id`` (created if needed) and return the commit URL.

    The adapter goes up as ``pytorch_lora_weights.safetensors`` with a model card; ``report`` is a folder written
    by ``esd-lora evaluate --out`` whose ``report.json`` (and ``grid.png``) go up too and fill the card's
    evaluation. Files equal to the remote ones are not committed again; when nothing changed, the repo URL is
    returned. ``private`` applies when the repo is created.
    """
    check_repo_id(repo_id)
    if revision is not None:
        check_revision(revision)
    report_json, grid = _report_files(report)
    adapter = load_adapter(path)
    files = adapter_files(adapter, repo_id, license=license, report_json=report_json, grid=grid)
    refuse_offline(f"push to {repo_id}")
    endpoint = hub_endpoint(endpoint)
    concepts = ", ".join(adapter.metadata.config.concepts)
    with hub_errors(f"push to {repo_id}", endpoint, repo_id, revision):
        done = upload_files(HfApi(endpoint=endpoint, token=token), repo_id, files, private=private,
                            revision=revision, message=f"esd-lora: erasure of {concepts}")
    return done.url or f"{endpoint}/{repo_id}"


def _report_files(report: str | os.PathLike | None) -> tuple[Path | None, Path | None]:
    """``report.json`` (required) and ``grid.png`` (if present) of an evaluation folder."""
    if report is None:
        return None, None
    folder = Path(report).expanduser()
    if not (folder / REPORT_FILE).is_file():
        raise ConfigError(f"--report {folder} has no {REPORT_FILE}: give the folder written by "
                          "'esd-lora evaluate --adapter FILE --out DIR'")
    grid = folder / GRID_FILE
    return folder / REPORT_FILE, grid if grid.is_file() else None


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False, endpoint: str | None = None,
                token: str | None = None) -> str:
    """Upload a folder (a merged checkpoint with its README.md card) to the model repo ``repo_id``; the commit URL
    (the repo URL when every file was already there)."""
    check_repo_id(repo_id)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder: push the folder 'esd-lora merge --out' wrote")
    refuse_offline(f"push to {repo_id}")
    endpoint = hub_endpoint(endpoint)
    files = {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}
    with hub_errors(f"push to {repo_id}", endpoint, repo_id):
        done = upload_files(HfApi(endpoint=endpoint, token=token), repo_id, files, private=private,
                            message=f"esd-lora: {folder.name}")
    return done.url or f"{endpoint}/{repo_id}"


# --- search -----------------------------------------------------------------------------------------------------

def search_adapters(text: str | None = None, *, base: str | None = None, endpoint: str | None = None,
                    token: str | None = None, limit: int = 50) -> list[dict]:
    """Hub adapters tagged esd-lora (most downloaded first), optionally matching ``text`` and trained on ``base``.

    Each result: ``repo_id``, ``concepts``, ``method``, ``base``, ``downloads``, ``url``. At most ``limit``
    results, counted after the ``base`` filter (the listing is read page by page until that many match).
    """
    positive_int("limit", limit)
    refuse_offline("search the Hub")
    endpoint = hub_endpoint(endpoint)
    found = []
    with hub_errors("search adapters", endpoint):
        models = HfApi(endpoint=endpoint, token=token).list_models(
            filter=TAG, search=text or None, sort="downloads", limit=None if base else limit, cardData=True)
        for model in models:  # pages are fetched as the iteration goes
            data = model.card_data.to_dict() if model.card_data is not None else {}
            ours = data.get("esd_lora") or {}
            item = {"repo_id": model.id, "concepts": list(ours.get("concepts") or []),
                    "method": ours.get("method"), "base": ours.get("base_model") or data.get("base_model"),
                    "downloads": model.downloads or 0, "url": f"{endpoint}/{model.id}"}
            if base is None or item["base"] == base:
                found.append(item)
                if len(found) == limit:
                    break
    return found
