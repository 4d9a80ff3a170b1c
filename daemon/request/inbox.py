"""Claim-check input files: opened inside the inbox, then read through that one descriptor.

Checking a path and opening it later is a race: in between, whoever writes the inbox can
swap the entry for a symlink out of it (its content would be coded, or quoted in an error)
or for a FIFO (open() would wait for a writer forever, holding a worker thread). So the
file is opened first and what was actually opened is checked:

- opened with O_NONBLOCK, relative to a descriptor of the inbox: a FIFO cannot block;
- its real path, read back from /proc/self/fd, must lie inside the inbox's real path, so
  symlinks that stay inside keep working; without /proc, each component is opened with
  O_NOFOLLOW instead, so no symlink is followed at all;
- fstat must say it is a regular file; only then is O_NONBLOCK cleared for reading.

Nothing reopens it by path afterwards. Lines are read with a bound (MAX_LINE_BYTES), so
memory never grows with a line's length, nor with the file's size. Blocking IO: call all
of this inside `asyncio.to_thread`, never on the event loop.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .claimcheck import ClaimCheckError
from .records import Records, read_csv, read_jsonl

_BUFFER = 1 << 20
_PROC_FD = "/proc/self/fd"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: a FIFO's open returns at once instead of waiting for a writer.
# O_NOCTTY: a terminal device could never become our controlling terminal.
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class InputFile:
    """An opened, verified input file; read it with read_records(). A context manager:
    leaving it closes the descriptor. `name` is the producer's, for messages."""

    def __init__(self, name: str, file: BinaryIO, is_csv: bool) -> None:
        self.name, self.file, self.is_csv = name, file, is_csv

    def close(self) -> None:
        # A buffered file's close waits for a read in progress in another thread, and
        # later reads fail: a closed descriptor's number, reused, is never read.
        self.file.close()

    def __enter__(self) -> "InputFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_input(inbox_dir: Path, name: str) -> InputFile:
    """Open inputFile `name` (relative to `inbox_dir`), checked as opened.

    ClaimCheckError `path_not_allowed` when the name or what it resolves to leaves the
    inbox (absolute, '..', a symlink out); `input_not_found` when it is missing or not a
    regular file. Messages name `name` as written, never the inbox's path.
    """
    parts = _relative_parts(name)
    root = _open_inbox(inbox_dir, name)
    try:
        root_real = _fd_path(root)
        if root_real is None:
            fd = _open_without_symlinks(root, parts, name)
        else:
            fd = _open_inside(root, root_real, name)
    finally:
        os.close(root)
    # '.csv' by the name as written: the opened file's path may have changed since (or
    # read back as "... (deleted)")
    return _adopt(fd, name, is_csv=PurePosixPath(parts[-1]).suffix.lower() == ".csv")


def check_input(inbox_dir: Path, name: str) -> None:
    """Refuse now what open_input would refuse, for an early reply. Whoever reads the file
    later opens it again with open_input, and that open is checked on its own."""
    open_input(inbox_dir, name).close()


def read_records(opened: InputFile) -> Records:
    """(raw, None) per record, or (raw, error) for a malformed one, in file order: raw is
    the line's text, or the parsed object when only its field types are wrong (so its
    recordId can be echoed). Error messages start with the 1-based file line number.

    CSV (a '.csv' file) has its header read now, in the caller's thread:
    ClaimCheckError('invalid_message') when it lacks occp_text or tasks_text, or is too
    long. Anything else is JSONL, blank lines skipped.
    """
    return read_csv(opened.file) if opened.is_csv else read_jsonl(opened.file)


def read_local_records(path: Path) -> Records:
    """read_records() of a file the operator names on the command line (coderd submit),
    not an inbox name. The file is closed when the records are exhausted or dropped."""
    try:
        fd = os.open(path, _FILE_FLAGS)
    except OSError as exc:
        raise _open_error(exc, str(path)) from None
    opened = _adopt(fd, str(path), is_csv=Path(path).suffix.lower() == ".csv")
    try:
        records = read_records(opened)
    except BaseException:
        opened.close()
        raise
    return _closing(opened, records)


def _closing(opened: InputFile, records: Records) -> Records:
    with opened:
        yield from records


# --- opening -----------------------------------------------------------------------------

def _outside(name: str) -> ClaimCheckError:
    return ClaimCheckError("path_not_allowed", f"file {name!r} is outside its directory")


def _relative_parts(name: str) -> list[str]:
    """`name`'s components with '.' and '..' applied; refused before anything is opened
    when it is empty, absolute, or climbs out of the inbox."""
    if not isinstance(name, str) or not name.strip():
        raise ClaimCheckError("path_not_allowed", "file name is empty")
    if "\x00" in name:
        raise ClaimCheckError("path_not_allowed", f"file {name!r} contains a NUL character")
    if PurePosixPath(name).is_absolute() or Path(name).is_absolute():
        raise ClaimCheckError("path_not_allowed", f"file {name!r} is absolute; it must be relative to its directory")
    parts: list[str] = []
    for part in name.split("/"):
        if part == "..":
            if not parts:
                raise _outside(name)
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    if not parts:  # the inbox itself
        raise _outside(name)
    return parts


def _open_inbox(inbox_dir: Path, name: str) -> int:
    try:
        return os.open(inbox_dir, _DIR_FLAGS)
    except OSError:  # no inbox yet: nothing in it exists
        raise ClaimCheckError("input_not_found", f"file {name!r} does not exist") from None


def _fd_path(fd: int) -> str | None:
    """What `fd` refers to, as a real path (Linux /proc); None where /proc is missing."""
    try:
        return os.readlink(f"{_PROC_FD}/{fd}")
    except OSError:
        return None


def _inside(path: str, root: str) -> bool:
    return path != root and PurePosixPath(path).is_relative_to(root)


def _open_inside(root: int, root_real: str, name: str) -> int:
    """Open (symlinks followed by the kernel), then check where the descriptor points."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=root)
    except OSError as exc:
        # Whatever the errno, a name resolving out of the inbox is path_not_allowed: a
        # producer cannot learn whether files outside exist.
        leaves = not _inside(os.path.realpath(os.path.join(root_real, name)), root_real)
        raise (_outside(name) if leaves else _open_error(exc, name)) from None
    real = _fd_path(fd)
    if real is None or not _inside(real, root_real):
        os.close(fd)
        raise _outside(name)
    return fd


def _open_without_symlinks(root: int, parts: list[str], name: str) -> int:
    """Without /proc the opened file's path cannot be read back, so no symlink is
    followed: each component is opened with O_NOFOLLOW from the one before it ('..' was
    applied to `parts` already)."""
    current, part = root, parts[0]
    try:
        for part in parts[:-1]:
            below = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=current)
            if current != root:
                os.close(current)
            current = below
        part = parts[-1]
        return os.open(part, _FILE_FLAGS | os.O_NOFOLLOW, dir_fd=current)
    except OSError as exc:
        if _is_symlink(part, current):  # ELOOP, or ENOTDIR for a directory's link
            raise ClaimCheckError("path_not_allowed", f"file {name!r} goes through a symbolic link, which is "
                                                      "not followed here") from None
        raise _open_error(exc, name) from None
    finally:
        if current != root:
            os.close(current)


def _is_symlink(part: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(part, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _open_error(exc: OSError, name: str) -> ClaimCheckError:
    if exc.errno == errno.ELOOP:
        return ClaimCheckError("path_not_allowed", f"file {name!r} cannot be resolved: a symbolic link loop")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return ClaimCheckError("input_not_found", f"file {name!r} does not exist")
    if exc.errno == errno.ENXIO:  # a socket
        return _not_regular(name)
    return ClaimCheckError("input_not_found", f"file {name!r} cannot be opened: {exc.strerror}")


def _not_regular(name: str) -> ClaimCheckError:
    return ClaimCheckError("input_not_found", f"file {name!r} is not a regular file")


def _adopt(fd: int, name: str, *, is_csv: bool) -> InputFile:
    """Take ownership of `fd`: a regular file only (not a FIFO, device or directory),
    made blocking again for reading."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_regular(name)
        os.set_blocking(fd, True)
        file = open(fd, "rb", buffering=_BUFFER)  # closes fd from now on
    except BaseException:
        os.close(fd)
        raise
    return InputFile(name, file, is_csv)
