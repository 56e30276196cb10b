"""One writer per run folder: an OS-level lock on a file inside the folder.

``fcntl.flock`` on ``OUT/.calae.lock``: the kernel releases it when the holding process exits,
however it exits (``kill -9`` included), so a stale lock never blocks a rerun and no pid file has
to be trusted. The holder writes its pid into the file, so a refused second writer can say which
process holds the folder. Under torchrun only rank 0 (the only writer) takes it.

The lock holder is the only process that may write in the folder, so it is also the one that
removes temporary files orphaned by a killed writer (``clean_orphans``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..config import ConfigError

LOCK_NAME = ".calae.lock"
# our atomic writes' temporaries (.NAME.tmpPID), safetensors' own (.tmpXXXXXX), stats.jsonl's rewrite
_ORPHAN = re.compile(r"^(\.[^/]+\.tmp\d+|\.tmp[A-Za-z0-9]{6}|stats\.tmp)$")


class RunFolderLocked(ConfigError):
    """Another process is writing this run folder; the CLI prints it on one line (exit 2)."""


class RunLock:
    """``with RunLock(folder): ...`` or ``acquire()`` / ``release()``; the folder must exist."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        if self.fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: someone holds it
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise RunFolderLocked(f"{self.folder} is in use by another calae process (pid {holder}); wait for it "
                                  "to finish or stop it, or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def clean_orphans(folder: str | os.PathLike) -> list[str]:
    """Remove temporary files a killed writer left in ``folder`` (call it holding the lock).
    Returns the names removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        if _ORPHAN.match(e.name) and e.is_file(follow_symlinks=False):
            try:
                os.unlink(e.path)
                removed.append(e.name)
            except OSError:
                pass
    return removed


__all__ = ["RunLock", "RunFolderLocked", "clean_orphans", "LOCK_NAME"]
