"""SIGHUP from the first moment of a long-running command: neither death nor a lost reload.

SIGHUP's default action ends the process, and supervisors, log rotation and config
management send it whenever they like, including the half second a daemon spends starting
(imports, the configuration, the journal) before its event loop can take the signal. From
the first line of `uploader run` or `uploader enqueue` on, a SIGHUP is held here instead;
the reload handler, once in, reloads for it: the file may have changed after it was read.
"""

from __future__ import annotations

import signal
from types import FrameType

_held = False


def hold() -> None:
    """Hold SIGHUP until `take_held` (idempotent: both the entry point and the command call it)."""
    signal.signal(signal.SIGHUP, _remember)


def take_held() -> bool:
    """Whether a SIGHUP came since `hold` (or the last call); forgets it."""
    global _held
    held, _held = _held, False
    return held


def _remember(signum: int, frame: FrameType | None) -> None:
    global _held
    _held = True
