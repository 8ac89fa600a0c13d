"""Files: one JSONL reader with file:line errors, one atomic write, one file hash.

An atomic write goes to a temporary name in the same folder, is flushed and
fsynced, then renamed over the target (and the folder fsynced): a reader, or a
run that crashed mid-write, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from ponder.core.config import ConfigError


def read_jsonl(path: str | Path, what: str = "file", error: type[Exception] = ConfigError) -> list[tuple[str, Any]]:
    """("file:line", value) for every non-blank line; a line that is not UTF-8 or not JSON
    raises `error` naming the file and line (a truncated last line reads as corrupt)."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {str(p)!r} does not exist")
    out = []
    with p.open("rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{p}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{where}: not UTF-8 ({e})") from None
            if not line.strip():
                continue
            try:
                out.append((where, json.loads(line)))
            except json.JSONDecodeError as e:
                raise error(f"{where}: not valid JSON ({e.msg} at column {e.colno}); "
                            f"is the file truncated or corrupt?") from None
    return out


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new names, renames) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; nothing more can be done there
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """A file handle whose content replaces `path` only when the block ends without an error."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open(mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_writer(path) as f:
        f.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
