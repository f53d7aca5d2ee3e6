"""Writing outputs safely: refuse what exists (unless asked), write to a temporary path, rename into place.

An interrupted write (a crash, Ctrl-C, a full disk) never leaves a half-written file or folder at the destination.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import OutputExistsError, OutputNotWritableError


def check_output(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse an output path that exists (unless ``overwrite``) or whose folder cannot be written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder: give a file name such as {path / 'erasure.safetensors'}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists: choose another --out or pass --overwrite")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputNotWritableError(f"cannot write {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputNotWritableError(f"cannot write {path}: no write permission on {parent}")
    return path


def _umask() -> int:
    """The process umask (read from /proc where it can be, without the set-and-restore race of os.umask)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, *, folder: bool) -> int:
    """The permissions ``path`` would have if written in place: those of the file it replaces, else what
    open() or mkdir() give under the umask. (mkstemp and mkdtemp create 0600 files and 0700 folders.)"""
    if not folder and path.is_file():
        return path.stat().st_mode & 0o7777
    return (0o777 if folder else 0o666) & ~_umask()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    The file gets the permissions an ordinary write would give it (the replaced file's, else the umask's)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _usual_mode(path, folder=False))
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_folder(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse an output folder that exists, unless ``overwrite``."""
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists: choose another --out or pass --overwrite")
    return out


def write_folder(out: str | os.PathLike, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Let ``write(tmp_folder)`` fill a temporary folder beside ``out``, then move it into place (with the
    permissions mkdir() would give it, not mkdtemp's 0700)."""
    out = check_folder(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        os.chmod(tmp, _usual_mode(out, folder=True))
        write(tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
