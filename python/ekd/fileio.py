"""Atomic file writes and file hashes, shared by every step that writes results.

A file is written under a temporary name in the same folder, flushed to disk and renamed:
a killed process leaves the old file or the new one, never half a file. A write that fails
(disk full, a file-size limit, no permission) removes its temporary file and raises WriteError
naming the file; the previous version of the file, if any, is untouched.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import h5py
import torch

from .errors import EkdError, WriteError

# Errors whose cause is room on the disk (or the process's file-size limit), not the program.
NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def temporary_path(path: Path) -> Path:
    """The name `path` has while it is written: hidden, in the same folder (so the rename is
    atomic), and of this process (two processes never share one)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def failed_write(err: BaseException) -> bool:
    """Whether `err` is a write the system refused (to report as WriteError), rather than a bug
    or an interruption (to raise as it is). An EkdError (a WriteError from within) already says
    what happened."""
    if isinstance(err, EkdError):
        return False
    return isinstance(err, OSError) or _errno(err) is not None


def write_error(path: Path, err: BaseException, kept: str = "") -> WriteError:
    """The error to raise when writing `path` failed with `err`: the file, the system's reason,
    and what is left (`kept`; by default the previous `path`, when there is one)."""
    hint = " (disk full or file-size limit?)" if _errno(err) in NO_ROOM else ""
    name = Path(path).name
    if not kept:
        kept = f"the previous {name} is intact" if Path(path).exists() else f"{name} was not written"
    return WriteError(f"could not write {path}: {_reason(err)}{hint}; {kept}")


def _errno(err: BaseException) -> Optional[int]:
    """The system's error number of a failed write. h5py raises RuntimeError (a failed flush) or an
    OSError without errno, carrying HDF5's message with "errno = N" in it."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno
    found = re.search(r"errno = (\d+)", str(err))
    return int(found.group(1)) if found else None


def _reason(err: BaseException) -> str:
    """The system's words for the failure: HDF5's messages quote them among many others."""
    found = re.search(r"error message = '([^']*)'", str(err))
    if found:
        return found.group(1)
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return (str(err).splitlines() or [type(err).__name__])[0]


@contextmanager
def replacing(path: Path, temporary: Optional[Path] = None) -> Iterator[Path]:
    """Write `path` atomically: the block writes the temporary path it is given (`temporary`, or
    `temporary_path(path)`), which is then renamed onto `path`. When the block raises, the
    temporary file is removed (nothing half written is left to be trusted) and a failed write
    becomes WriteError."""
    path = Path(path)
    tmp = Path(temporary) if temporary is not None else temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if failed_write(err):
            raise write_error(path, err) from None
        raise


def move(source: Path, path: Path) -> None:
    """Rename a finished file onto `path` (atomic within one folder); a failure becomes WriteError
    and `source` stays, finished, for the next run."""
    try:
        os.replace(source, path)
    except OSError as err:
        raise write_error(path, err, f"{Path(source).name} is kept") from None


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        _to_disk(handle)


def atomic_write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)
        _to_disk(handle)


def _to_disk(handle: Any) -> None:
    """Flush and sync before the rename: after a crash the new name never points at a file
    whose contents were still in memory."""
    handle.flush()
    os.fsync(handle.fileno())


def atomic_torch_save(obj: Any, path: Path) -> None:
    # torch.save into a file replaces a failed write's OSError by a RuntimeError of its own
    # ("unexpected pos ...") that names neither the file nor the cause; serialised in memory
    # first, the plain write below reports the system's error.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


@contextmanager
def atomic_hdf5(path: Path, update: bool = False) -> Iterator[h5py.File]:
    """An HDF5 file written whole: built in memory (from `path`'s contents, when `update` and it
    exists) and then written atomically. HDF5 never writes to the disk itself, so a full disk
    cannot leave half-written HDF5 structures behind (nor h5py objects that fail again when
    freed): the plain write at the end fails with WriteError and `path` stays as it was. For
    files that fit in memory; the labels file, which may not, is written in place (labels.py)."""
    path = Path(path)
    existing = update and path.exists()
    buffer = io.BytesIO(path.read_bytes() if existing else b"")
    with h5py.File(buffer, "r+" if existing else "w") as h5:
        yield h5
    atomic_write_bytes(path, buffer.getbuffer())


def reserve_space(path: Path) -> None:
    """Claim the disk blocks of `path` up to its current length. HDF5 lengthens a file with a
    sparse truncate, which succeeds on a full disk; without the blocks, writes into it would
    fail later, in the middle of the work. Where the system has no posix_fallocate (macOS),
    the file stays sparse."""
    allocate = getattr(os, "posix_fallocate", None)
    size = os.path.getsize(path)
    if allocate is None or size == 0:
        return
    handle = os.open(path, os.O_RDWR)
    try:
        allocate(handle, 0, size)
    finally:
        os.close(handle)


def close_quietly(handle: Any) -> None:
    """Close a file whose write failed. Closing flushes again, which fails again (h5py raises,
    or leaves the file open); the first error is the one to report."""
    try:
        handle.close()
    except Exception:
        pass


@contextmanager
def closed_after(handle: Any) -> Iterator[Any]:
    """`with handle:` for a file whose closing writes (HDF5), closing quietly after a failure so
    that the block's error, not the close's, says what happened."""
    try:
        yield handle
        handle.close()
    except BaseException:
        close_quietly(handle)
        raise


@contextmanager
def kept_for_resume(handle: Any, path: Path, done: str = "the work it marks as done") -> Iterator[Any]:
    """Close `handle`, the resumable file at `path` (partial labels), after the block. A failed
    write becomes WriteError naming the file, and the file stays: its writer flushes the work
    before marking it done, so what it marks done (`done`) is there for --resume."""
    try:
        with closed_after(handle):
            yield handle
    except BaseException as err:
        if failed_write(err):
            raise write_error(path, err, f"{done} stays in it, for --resume") from None
        raise


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
