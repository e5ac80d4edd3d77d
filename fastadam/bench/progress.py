"""Progress on stderr: every phase and case with the time elapsed and an estimate of what
remains (plain text; one line rewritten in place on a terminal)."""

from __future__ import annotations

import sys
import time


class Progress:
    """``step(label)`` before each unit of work of ``total``; ``done()`` at the end."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.enabled, self.count = total, enabled, 0
        self.started = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.count += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        done = self.count - 1
        remaining = f", ~{elapsed / done * (self.total - done):.0f} s left" if done else ""
        msg = f"[{self.count}/{self.total}] {label}  ({elapsed:.0f} s{remaining})"
        print(("\r" + msg.ljust(100)) if self.tty else msg, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            print(("\n" if self.tty else "") + f"measured in {elapsed:.0f} s", file=sys.stderr,
                  flush=True)


def parse_size(text: str) -> int:
    """An element count: ``4096``, ``1e6``, ``2**26``, or with a binary suffix ``4K``,
    ``16M``, ``1G`` (K = 1024). ValueError for anything else or below 1."""
    t = text.strip().replace("_", "")
    suffixes = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if t and t[-1].upper() in suffixes:
            value = float(t[:-1]) * suffixes[t[-1].upper()]
        elif "**" in t:
            base, power = t.split("**")
            value = float(int(base) ** int(power))
        else:
            value = float(t)
    except (ValueError, OverflowError):
        raise ValueError(f"not a size: {text!r} (try 4096, 1e6, 2**26, 16M or 1G)") from None
    if value != int(value) or value < 1:
        raise ValueError(f"not a whole number of elements >= 1: {text!r}")
    return int(value)
