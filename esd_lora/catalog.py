"""The adapter catalog (``adapters/``) and publishing it to a Hub namespace, one model repo per adapter.

``adapters/index.json``::

    {"base": "bundled", "base_fingerprint": "sha256:...",
     "adapters": [{"name": "esd-red", "file": "esd-red.safetensors", "concepts": ["red"], "method": "esd-x",
                   "sha256": "<hex>", "metrics": {...}, "report": "esd-red/report.json", "grid": "esd-red/grid.png"},
                  ...]}

Paths are relative to the catalog folder (``report`` and ``grid`` may be absent). Reading checks every file
against its sha256 and refuses paths that leave the folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from huggingface_hub import HfApi

from .adapter import file_sha256, load_adapter
from .errors import CatalogError, EsdLoraError, InvalidRepoIdError
from .hub import (DEFAULT_LICENSE, Upload, adapter_files, check_repo_id, hub_endpoint, hub_errors, refuse_offline,
                  upload_files)

INDEX = "index.json"
_REQUIRED = ("name", "file", "concepts", "method", "sha256")


@dataclass
class CatalogEntry:
    """One adapter of the catalog, its files as absolute paths."""

    name: str
    file: Path
    concepts: list[str]
    method: str
    sha256: str
    metrics: dict = field(default_factory=dict)
    report: Path | None = None
    grid: Path | None = None


@dataclass
class Catalog:
    folder: Path
    base: str | None
    base_fingerprint: str | None
    entries: list[CatalogEntry]


def load_catalog(folder: str | os.PathLike) -> Catalog:
    """Read and check ``folder/index.json``: required fields, paths inside the folder, files matching their sha256."""
    folder = Path(folder).expanduser()
    index = folder / INDEX
    if not index.is_file():
        raise CatalogError(f"{folder} has no {INDEX}: build the catalog with 'python scripts/build_catalog.py "
                           f"--out {folder}'")
    try:
        data = json.loads(index.read_text())
    except ValueError as exc:
        raise CatalogError(f"{index} is not valid JSON ({exc}): rebuild the catalog") from exc
    if not isinstance(data, dict) or not isinstance(data.get("adapters"), list):
        raise CatalogError(f"{index} has no 'adapters' list: rebuild the catalog")
    entries = [_entry(folder, item) for item in data["adapters"]]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise CatalogError(f"{index} lists an adapter name twice ({sorted(n for n in names if names.count(n) > 1)[0]})"
                           ": names become repo names and must be unique")
    return Catalog(folder, data.get("base"), data.get("base_fingerprint"), entries)


def _entry(folder: Path, item) -> CatalogEntry:
    index = folder / INDEX
    missing = [key for key in _REQUIRED if not isinstance(item, dict) or key not in item]
    if missing:
        raise CatalogError(f"an entry of {index} lacks {', '.join(missing)}: rebuild the catalog")
    name = str(item["name"])
    try:
        check_repo_id(name)
    except InvalidRepoIdError:
        raise CatalogError(f"{index} names an adapter {name!r}, which cannot be a repo name: use letters, digits, "
                           "'-', '_' and '.'") from None
    if "/" in name:
        raise CatalogError(f"{index} names an adapter {name!r}: a name has no '/' (the namespace comes from publish)")
    file = _inside(folder, item["file"])
    if file_sha256(file) != item["sha256"]:
        raise CatalogError(f"{file} does not match its sha256 in {index}: it changed after the catalog was built; "
                           "rebuild the catalog")
    return CatalogEntry(name=name, file=file, concepts=list(item["concepts"]), method=str(item["method"]),
                        sha256=str(item["sha256"]), metrics=dict(item.get("metrics") or {}),
                        report=_inside(folder, item["report"]) if item.get("report") else None,
                        grid=_inside(folder, item["grid"]) if item.get("grid") else None)


def _inside(folder: Path, relative: str) -> Path:
    """``folder/relative`` for an existing file, refusing absolute paths and paths that climb out of ``folder``."""
    relative = str(relative)
    parts = PureWindowsPath(relative).parts
    if os.path.isabs(relative) or PureWindowsPath(relative).anchor or ".." in parts or "\\" in relative:
        raise CatalogError(f"{folder / INDEX} names {relative!r}, which is not a path inside {folder}: catalog "
                           "paths are relative to the catalog folder")
    path = folder / relative
    if not path.is_file():
        raise CatalogError(f"{path}, listed in {folder / INDEX}, does not exist: rebuild the catalog")
    return path


def publish_catalog(folder: str | os.PathLike, namespace: str, *, dry_run: bool = False, private: bool = False,
                    endpoint: str | None = None, token: str | None = None,
                    license: str = DEFAULT_LICENSE) -> list[Upload]:
    """Push every adapter of the catalog to ``NAMESPACE/<name>``, committing only files that differ.

    A second run commits nothing; with ``dry_run`` nothing is created or committed and each :class:`Upload`
    lists what would change (``url`` None). The whole catalog is checked before the first request.
    """
    catalog = load_catalog(folder)
    if "/" in namespace:
        raise InvalidRepoIdError(f"namespace {namespace!r} must be a user or organisation name, without '/'")
    releases = []
    for entry in catalog.entries:
        repo_id = check_repo_id(f"{namespace}/{entry.name}")
        try:
            files = adapter_files(load_adapter(entry.file), repo_id, license=license, report_json=entry.report,
                                  grid=entry.grid, metrics=entry.metrics)
        except EsdLoraError as exc:
            raise CatalogError(f"catalog adapter {entry.name}: {exc}") from exc
        releases.append((entry.name, repo_id, files))
    refuse_offline(f"publish to {namespace}")
    endpoint = hub_endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    done = []
    for name, repo_id, files in releases:
        with hub_errors(f"publish {repo_id}", endpoint, repo_id):
            done.append(upload_files(api, repo_id, files, message=f"esd-lora catalog: {name}", private=private,
                                     dry_run=dry_run))
    return done
