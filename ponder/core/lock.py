"""One writer per run folder: `with run_lock(out_dir):` around a run that writes there.

Two processes on one `--out` would interleave their steps in metrics.jsonl and
overwrite each other's checkpoints with no warning. The lock is `fcntl.flock`
on `OUT/.lock`, which holds the owner's pid and start time for the refusal
message. The kernel drops a flock when its process dies, however it dies
(kill -9 included), so a killed run never leaves the folder stuck; the file
that remains is only a note, and is not what is locked.

A folder is locked per process, re-entrantly: a function holding OUT may call
another that locks OUT again. Different folders are independent, so a
pipeline holding DIR and its stages holding DIR/NAME never wait on each other.
A holder that empties its folder should use `clear_run_folder`, which keeps
the lock file: a deleted lock file would let another process lock a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ponder.core.config import ConfigError

LOCK_FILE = ".lock"

_held: dict[Path, list[int]] = {}  # folder -> the lock fds this process holds on it, one per nesting level
_guard = threading.Lock()


def holder(out_dir: str | Path) -> dict:
    """What the lock file says about its owner ({} when it says nothing readable)."""
    try:
        info = json.loads((Path(out_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _refusal(out: Path) -> ConfigError:
    info = {}
    for _ in range(20):  # the owner writes its pid right after taking the lock: give it a moment
        info = holder(out)
        if "pid" in info:
            break
        time.sleep(0.05)
    who = f"pid {info['pid']} (started {info.get('started', '?')})" if "pid" in info else "another process"
    return ConfigError(f"run folder {str(out)!r} is in use by {who}; wait for it or choose another --out")


def _acquire(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _refusal(out) from None
    note = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(note).encode())
    return fd


def _still_ours(out: Path, fd: int) -> bool:
    """Is `fd` the lock file that is in the folder now (not one deleted with the folder's contents)?"""
    try:
        return os.stat(out / LOCK_FILE).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def run_lock(out_dir: str | Path) -> Iterator[Path]:
    """Hold `out_dir` for this process, or raise ConfigError naming the pid that holds it."""
    out = Path(out_dir).resolve()
    with _guard:
        fds = _held.get(out, [])
        # nested: reuse this process's lock, unless the folder was emptied under it (then lock anew)
        fd = -1 if fds and _still_ours(out, fds[-1]) else _acquire(out)
        _held[out] = fds + [fd]
    try:
        yield out
    finally:
        with _guard:
            _held[out].pop()
            if not _held[out]:
                del _held[out]
        if fd >= 0:
            if _still_ours(out, fd):
                os.ftruncate(fd, 0)  # while still locked: the note never names a finished run
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def clear_run_folder(out_dir: str | Path) -> None:
    """Delete everything in a run folder except its lock file (see the module docstring)."""
    out = Path(out_dir)
    if not out.is_dir():
        return
    for p in out.iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
