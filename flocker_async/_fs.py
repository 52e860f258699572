"""
Files that must survive a crash: written to a temporary file in the same
directory, fsynced, renamed over the old one, and the directory fsynced, so
after a crash (or a full disk) the file holds the old content or the new,
never a mixture.  Used for keys, the desired state and the lab's state.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional, Union

from twisted.logger import Logger

__all__ = ["write_atomically", "read_if_exists", "remove_stale_temporaries"]

_log = Logger()

PathLike = Union[str, os.PathLike]

_TEMPORARY_SUFFIX = ".tmp"


def _temporary_prefix(path: str) -> str:
    return "." + os.path.basename(path) + "."


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: PathLike, data: bytes, mode: int = 0o600) -> None:
    """
    Replace the file at ``path`` with ``data`` (permissions ``mode``) so that
    a crash at any point leaves either the previous content or ``data``.
    On failure the temporary file is removed and the error raised.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(
        prefix=_temporary_prefix(path), suffix=_TEMPORARY_SUFFIX, dir=directory)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    # Without this the rename itself may be lost in a power cut.
    _fsync_directory(directory)


def read_if_exists(path: PathLike) -> Optional[bytes]:
    """The content of ``path``, or None if there is no such file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def remove_stale_temporaries(path: PathLike) -> int:
    """
    Remove the temporary files a crashed ``write_atomically(path, ...)``
    left beside ``path``; returns how many there were.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temporary_prefix(path)
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(prefix) and name.endswith(_TEMPORARY_SUFFIX):
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


