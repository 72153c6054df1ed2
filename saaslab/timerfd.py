"""A one-shot timer on the monotonic clock that fires to within tens of microseconds (Linux timerfd).

The load generators' event loops (asyncio's and uvloop's, gevent's libev) sleep in whole
milliseconds: a request scheduled with them leaves up to a millisecond late, and sends bunch into
1 ms bursts that queue at the server. Both land in every latency an open model reports. A timerfd
armed at the absolute instant becomes readable when it fires, which wakes the loop's poll whatever
that poll's own timeout; the process's timer slack is cut to 1 µs so the kernel does not batch the
wakeup either. Where there is no timerfd, `open_timer()` returns None and callers
fall back to their loop's own sleep.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import time

_CLOCK_MONOTONIC, _TFD_NONBLOCK, _TFD_CLOEXEC, _TFD_TIMER_ABSTIME, _PR_SET_TIMERSLACK = 1, 0o4000, 0o2000000, 1, 29

AVAILABLE = sys.platform == "linux" and all(
    time.get_clock_info(c).implementation == "clock_gettime(CLOCK_MONOTONIC)" for c in ("monotonic", "perf_counter"))
"""Whether timers can be armed in `time.monotonic()` / `time.perf_counter()` seconds (the same clock here)."""


class TimerFd:
    """One timerfd: `arm_at(instant)`, wait until `fileno()` is readable, then `consume()`."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)

    def fileno(self) -> int:
        return self._fd

    def arm_at(self, instant: float) -> None:
        """Fire once at `instant`, in `time.monotonic()` seconds (an instant already past fires at once)."""
        sec, frac = divmod(max(instant, 1e-9), 1.0)
        spec = struct.pack("qqqq", 0, 0, int(sec), int(frac * 1e9))  # struct itimerspec {interval, value}
        if self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, spec, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def consume(self) -> bool:
        """Whether the timer has fired since it was armed (and clear it)."""
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_timer() -> TimerFd | None:
    """A timerfd, or None where there is none (callers fall back to their loop's sleep)."""
    if not AVAILABLE:
        return None
    try:
        return TimerFd()
    except (OSError, AttributeError):  # no timerfd_create in this libc
        return None
