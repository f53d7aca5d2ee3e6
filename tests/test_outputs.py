"""Atomic writes give files and folders the permissions an ordinary write would, not mkstemp's 0600 / 0700."""

import os
import stat

import pytest

from esd_lora.outputs import atomic_path, write_folder


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                         (0o002, 0o664, 0o775)], ids=["022", "077", "002"])
def test_new_files_and_folders_follow_the_umask(umask, tmp_path, mask, file_mode, folder_mode):
    umask(mask)
    with atomic_path(tmp_path / "erasure.safetensors") as tmp:
        tmp.write_bytes(b"weights")
    assert mode(tmp_path / "erasure.safetensors") == file_mode

    def fill(folder):
        (folder / "report.json").write_text("{}")

    out = write_folder(tmp_path / "report", fill)
    assert mode(out) == folder_mode and mode(out / "report.json") == file_mode


def test_a_replaced_file_keeps_its_permissions(umask, tmp_path):
    umask(0o022)
    path = tmp_path / "erasure.safetensors"
    path.write_bytes(b"old")
    path.chmod(0o640)
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o640


def test_a_failed_write_leaves_nothing(tmp_path):
    def half_written(folder):
        (folder / "report.json").write_text("{")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "erasure.safetensors") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        write_folder(tmp_path / "report", half_written)
    assert list(tmp_path.iterdir()) == []
