"""Files that survive a crash: written whole or not at all, and synced before anyone is told.

Every durable write in coderd goes through here (the quota ledger, the token cache, the
batch journal, spool files, output files), so "fsync the file, rename it over, fsync the
directory" is written once. Blocking IO: call from a thread when the file may be large.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import IO

BUFFER = 1 << 20


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_and_close(file: IO) -> None:
    """Flush, fsync and close an open file (closed even when the sync fails)."""
    try:
        file.flush()
        os.fsync(file.fileno())
    finally:
        file.close()


def temp_beside(path: Path, tag: str = "tmp") -> Path:
    """A hidden, unique name in `path`'s directory (replicas may share the directory)."""
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(6)}")


def write_atomically(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write a temporary file beside `path` and rename it over: readers never see half a
    file. The temporary file is created with `mode`, so a secret is never world-readable."""
    tmp = temp_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class AtomicFile:
    """`final` written completely or not at all: the `with` block writes a hidden temporary
    file beside it, which replaces `final` (synced, directory too) only if the block succeeds.

    Text by default; `binary=True` for bytes. `lines` counts write_line() calls.
    """

    def __init__(self, final: Path, *, binary: bool = False, encoding: str = "utf-8",
                 errors: str = "backslashreplace", newline: str | None = None) -> None:
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.temp = temp_beside(self.final, "partial")
        self.lines = 0
        self._open = (lambda: open(self.temp, "wb", buffering=BUFFER)) if binary else (
            # backslashreplace: a lone surrogate (from a JSON "\ud800" escape) becomes the
            # same escape again instead of failing the whole file.
            lambda: open(self.temp, "w", encoding=encoding, errors=errors, newline=newline, buffering=BUFFER))
        self.file: IO | None = None

    def __enter__(self) -> "AtomicFile":
        self.file = self._open()
        return self

    def write(self, data) -> None:
        self.file.write(data)

    def write_line(self, line: str) -> None:
        """One line of text; the newline is added here."""
        self.file.write(line)
        self.file.write("\n")
        self.lines += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        file, self.file = self.file, None
        try:
            if exc_type is None:
                sync_and_close(file)
                os.replace(self.temp, self.final)
                fsync_dir(self.final.parent)
            else:
                file.close()
        finally:
            self.temp.unlink(missing_ok=True)
