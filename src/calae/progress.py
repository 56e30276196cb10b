"""No command stays silent for long: a heartbeat line when nothing was printed for a while.

``Heartbeat`` wraps ``sys.stdout`` and ``sys.stderr`` to note when anything was last written (progress
bars included) and, from a daemon thread, prints ``calae CMD: still STAGE (T so far)`` to stderr after
``every`` seconds without output. Commands name what they are doing with ``stage("encoding 1000
images")``, which also prints that line at once. A single slow step (a 256 px network on a CPU), a
metric over thousands of images or a t-SNE can then not leave a user wondering whether it hangs.
"""
from __future__ import annotations

import sys
import threading
import time

EVERY_S = 8.0

_current: "Heartbeat | None" = None


class _Tracked:
    """A text stream that records the time of its last write; everything else is the stream's."""

    def __init__(self, stream, beat: "Heartbeat"):
        self._stream, self._beat = stream, beat

    def write(self, s):
        if s:
            self._beat.last = time.monotonic()
        return self._stream.write(s)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class Heartbeat:
    def __init__(self, prog: str, every: float = EVERY_S):
        self.prog, self.every = prog, every
        self.stage_name = "working"
        self.started = self.last = self.stage_started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="calae-heartbeat")
        self._saved = None

    def __enter__(self) -> "Heartbeat":
        global _current
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tracked(sys.stdout, self), _Tracked(sys.stderr, self)
        _current = self
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        global _current
        self._stop.set()
        self._thread.join(timeout=1.0)
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
        _current = None

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            if now - self.last >= self.every:
                self._say(f"still {self.stage_name} ({_since(now - self.stage_started)} so far)")

    def _say(self, text: str) -> None:
        line = f"{self.prog}: {text}"
        try:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)  # above an active progress bar, which is redrawn below it
        except Exception:
            print(line, file=sys.stderr, flush=True)
        self.last = time.monotonic()

    def set_stage(self, name: str, announce: bool = True) -> None:
        self.stage_name, self.stage_started = name, time.monotonic()
        if announce:
            self._say(f"{name} ...")


def quiet() -> None:
    """No more heartbeat lines (a server waiting for requests is not working)."""
    if _current is not None:
        _current.every = float("inf")


def _since(s: float) -> str:
    s = int(s)
    return f"{s} s" if s < 90 else f"{s // 60} min {s % 60:02d} s"


def stage(name: str, announce: bool = True) -> None:
    """Name what the command is doing now (printed at once unless ``announce=False``, and in every
    heartbeat line); a no-op outside a Heartbeat (library use)."""
    if _current is not None:
        _current.set_stage(name, announce)


__all__ = ["Heartbeat", "stage", "quiet", "EVERY_S"]
