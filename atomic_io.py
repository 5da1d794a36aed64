"""Atomic file writes: the one way this package replaces a file.

Every write goes to a hidden temporary file in the target's folder, is flushed and fsynced, then renamed over
the target, and the folder is synced so the rename survives a power cut. A reader (or a rerun after a kill)
sees the old file or the complete new one, never a truncated one. On any error the temporary file is removed
and the target is untouched. The temporary file is created with mode 0o666 minus the umask, so the result has
the mode a plain ``open(path, "w")`` would give it (not the 0o600 of ``tempfile``).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]


def temporary_name(path: StrPath, suffix: str = "") -> str:
    """A unique hidden name beside ``path`` ending in ``.tmp`` + ``suffix``.

    Hidden and ``.tmp`` so that globs such as ``G_*.pth`` never match it; ``suffix`` is for writers that pick
    the format from the extension (e.g. ``".wav"``)."""
    folder, base = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{base}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")


@contextmanager
def atomic_path(path: StrPath, suffix: str = "", make_dirs: bool = True) -> Iterator[str]:
    """Yield a temporary path to write ``path``'s new content to by name; it replaces ``path`` on success.

    For writers that only take a file name (soundfile, onnx.save). The temporary file exists (empty, with the
    umask's mode) when the block starts, so the writer keeps that mode."""
    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    if make_dirs:
        os.makedirs(folder, exist_ok=True)
    tmp = temporary_name(target, suffix)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(folder)


@contextmanager
def atomic_write(
    path: StrPath, mode: str = "w", encoding: str | None = "utf-8", make_dirs: bool = True
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing (``"w"`` text or ``"wb"`` binary); it replaces ``path`` on success."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path, make_dirs=make_dirs) as tmp:
        if mode == "wb":
            handle = open(tmp, "wb")  # noqa: SIM115 - closed below, before the rename
        else:
            handle = open(tmp, "w", encoding=encoding, newline="")  # noqa: SIM115
        with handle:
            yield handle


def atomic_write_text(path: StrPath, text: str, make_dirs: bool = True) -> None:
    """Replace ``path`` with ``text`` (UTF-8), atomically."""
    with atomic_write(path, "w", make_dirs=make_dirs) as handle:
        handle.write(text)


def atomic_write_bytes(path: StrPath, data: bytes, make_dirs: bool = True) -> None:
    """Replace ``path`` with ``data``, atomically."""
    with atomic_write(path, "wb", make_dirs=make_dirs) as handle:
        handle.write(data)


def check_output_target(path: StrPath, make_dirs: bool = True) -> None:
    """Raise ``ValueError`` naming ``path`` and the fix if a file cannot be written there; writes nothing.

    For commands to call on their output arguments before any model is loaded or any work starts. Missing
    folders are fine when ``make_dirs`` (the writer creates them); the nearest existing folder must accept a
    new file, which is probed by creating and removing a hidden one (the only reliable test: permissions,
    read-only mounts and pseudo file systems such as /proc all show up)."""
    target = os.path.abspath(os.fspath(path))
    if os.path.isdir(target):
        raise ValueError(f"{path} is a folder; give a file name")
    folder = os.path.dirname(target)
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"cannot write {path}: {existing} is a file, not a folder")
    if existing != folder and not make_dirs:
        raise ValueError(f"cannot write {path}: folder {folder} does not exist (create it first)")
    probe = temporary_name(os.path.join(existing, "write-probe"))
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as error:
        raise ValueError(f"cannot write {path}: cannot create a file in {existing} ({error.strerror})") from None
    _remove_quietly(probe)


def fsync_dir(folder: StrPath) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        dir_fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        logger.debug("fsync of directory %s not supported", folder)
    finally:
        os.close(dir_fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
