"""Durable file operations: the one atomic write and durable rename of the tree.

A file is replaced atomically by writing a temporary file beside it, syncing
it, renaming it over the target and syncing the directory, so that after a
crash the target holds either the old or the new contents, and the rename
itself is on disk.
"""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """Sync the directory that holds ``path`` (a rename, creation or deletion in it)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_rename(src: str, dst: str) -> None:
    """Rename ``src`` over ``dst``, then sync the directory."""
    os.replace(src, dst)
    fsync_dir(dst)


def durable_replace(src: str, dst: str) -> None:
    """Put a file written elsewhere (not synced) in place: sync it, rename it
    over ``dst``, sync the directory."""
    fsync_file(src)
    durable_rename(src, dst)


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` durably: ``path.tmp`` (created with ``mode``,
    less the umask), fsync, rename, fsync dir.  The temporary file is removed
    if the write fails."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        durable_rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
