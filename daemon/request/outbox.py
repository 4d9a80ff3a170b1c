"""The outbox: where results are delivered as files — for `inputFile` requests, and for
replies too large to publish (claim checks).

An output is never written over another request's: each file written is recorded with
the identity of the request that wrote it (`state_dir/outputs/`), and an existing file
is replaced only by the same request delivered again. Whether the outbox can be written
is checked before any coding call is spent. Blocking IO, for `asyncio.to_thread`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path

from ..durable import temp_beside, write_atomically
from ..logs import get_logger
from .claimcheck import ClaimCheckError, resolve_inside

MAX_REPLY_BYTES = 16 << 20  # a larger reply is delivered as a file in the outbox (a claim check)
REPLY_DIRECTORY = "replies"
MAX_DEPTH = 8  # directories an outputFile may name, created as needed
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")

log = get_logger("coderd.outbox")


def reply_file_name(correlation_id: str) -> str:
    """Where an oversized reply goes: replies/<correlation_id>.coded.jsonl, or a digest of
    it when the id is not a plain file name."""
    safe = correlation_id if _SAFE_NAME.fullmatch(correlation_id) else hashlib.sha256(
        correlation_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{REPLY_DIRECTORY}/{safe}.coded.jsonl"


class Outbox:
    def __init__(self, outbox_dir: Path, state_dir: Path) -> None:
        self.root = Path(outbox_dir)
        self.owners = Path(state_dir) / "outputs"
        self._writing: dict[Path, str] = {}  # outputs being written now, by owner

    def claim(self, name: str, owner: str) -> Path:
        """The path to write `name` to, for the request `owner`; ClaimCheckError when it
        leaves the outbox, belongs to another request, or cannot be written."""
        if len(Path(name).parts) > MAX_DEPTH + 1:
            raise ClaimCheckError("path_not_allowed", f"file {name!r} is nested more than {MAX_DEPTH} directories deep")
        self._ensure_writable(self.root, name)
        target = resolve_inside(self.root, name, must_exist=False)
        busy = self._writing.get(target)
        if busy is not None and busy != owner:
            raise ClaimCheckError("output_exists", f"file {name!r} is being written for another request now")
        if target.exists() and self._owner_of(target) != owner:
            raise ClaimCheckError("output_exists", f"file {name!r} already exists in the outbox and was not written "
                                                   "for this request: remove it, or name another outputFile")
        self._ensure_writable(target.parent, name)
        self._writing[target] = owner
        return target

    def check_writable(self) -> None:
        """ClaimCheckError('output_not_writable') unless a reply could be delivered here."""
        self._ensure_writable(self.root / REPLY_DIRECTORY, REPLY_DIRECTORY)

    def written(self, target: Path, owner: str) -> None:
        """`target` is in place: remember whose it is (if state_dir will take it: the output
        is there either way; without the record, only this request cannot rewrite it)."""
        self._writing.pop(target, None)
        relative = str(target.relative_to(self.root.resolve()))
        try:
            self.owners.mkdir(parents=True, exist_ok=True)
            write_atomically(self._owner_path(target), json.dumps({"file": relative, "owner": owner}), mode=0o600)
        except OSError as exc:
            log.warning("output_owner_not_recorded", file=relative, error=os.strerror(exc.errno or 0))

    def release(self, target: Path) -> None:
        """Writing `target` was abandoned (the request failed or went back to the queue)."""
        self._writing.pop(target, None)

    def _owner_path(self, target: Path) -> Path:
        key = hashlib.sha256(str(target.relative_to(self.root.resolve())).encode("utf-8", "surrogatepass"))
        return self.owners / f"{key.hexdigest()[:40]}.json"

    def _owner_of(self, target: Path) -> str | None:
        try:
            return json.loads(self._owner_path(target).read_text()).get("owner")
        except (OSError, ValueError, AttributeError):
            return None

    def _ensure_writable(self, directory: Path, name: str) -> None:
        """Create the directory if needed and prove a file can be created in it."""
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            probe = temp_beside(directory / ".coderd-write-check")
            probe.touch(mode=0o600)
            probe.unlink()
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.EEXIST):
                raise ClaimCheckError("path_not_allowed", f"file {name!r} is below something that is not a "
                                                          "directory") from None
            raise ClaimCheckError("output_not_writable", f"the outbox cannot be written for {name!r}: "
                                                         f"{os.strerror(exc.errno or 0) or type(exc).__name__}") from None
