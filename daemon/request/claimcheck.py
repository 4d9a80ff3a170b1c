"""Claim-check files: their error, and names in the outbox (resolved, refused if they
leave it). Input files are opened and read by inbox.py and records.py.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class ClaimCheckError(Exception):
    """A claim-check request that cannot be served; `code` is the reply's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def resolve_inside(base: Path, name: str, *, must_exist: bool, label: str = "file") -> Path:
    """The real path of `name` (relative to `base`), refused if it leaves `base`.

    Symlinks are followed, so a link inside `base` pointing out of it is refused. The
    returned path is the resolved one: open that, not base / name. Messages name `name`
    (as the producer wrote it), never the absolute base.
    """
    if not isinstance(name, str) or not name.strip():
        raise ClaimCheckError("path_not_allowed", f"{label} name is empty")
    if "\x00" in name:
        raise ClaimCheckError("path_not_allowed", f"{label} {name!r} contains a NUL character")
    if PurePosixPath(name).is_absolute() or Path(name).is_absolute():
        raise ClaimCheckError("path_not_allowed", f"{label} {name!r} is absolute; it must be relative to its directory")
    root = Path(base).resolve()
    try:
        target = (root / name).resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise ClaimCheckError("path_not_allowed", f"{label} {name!r} cannot be resolved: {exc.__class__.__name__}") from None
    if target == root or not target.is_relative_to(root):
        raise ClaimCheckError("path_not_allowed", f"{label} {name!r} is outside its directory")
    if must_exist:
        if not target.is_file():
            raise ClaimCheckError("input_not_found", f"{label} {name!r} does not exist or is not a regular file")
    elif target.exists() and not target.is_file():
        raise ClaimCheckError("path_not_allowed", f"{label} {name!r} exists and is not a regular file")
    return target


def default_output_name(input_name: str) -> str:
    """'census/sample.jsonl' -> 'census/sample.coded.jsonl'; 'noext' -> 'noext.coded.jsonl'.
    Call it with an input name that open_input accepted (it names a file)."""
    path = PurePosixPath(input_name)
    if not path.name or path.name in (".", ".."):
        raise ClaimCheckError("path_not_allowed", f"file {input_name!r} does not name a file")
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return str(path.with_name(f"{stem}.coded.jsonl"))

