"""The background tasks of one saga design instance (orchestration's and twopc's drivers, choreography's
pump and deliveries), and the crash rule the in-process crash tests rely on: one task's `SimulatedCrash`
ends every task of the instance, as the death of the process would."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from reference_impl.sagas.designs import SimulatedCrash

log = logging.getLogger("saaslab.sagas")


def wall_clock_us() -> int:
    return time.time_ns() // 1000


async def recover_forever(recover: Callable[[], Awaitable[object]], interval_s: float, design: str) -> None:
    """A design's recovery loop (designs.py, `open`): `recover` every `interval_s`, for the life of the instance."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await recover()
        except Exception as exc:  # a database may be down: try again next time
            log.warning("%s recovery failed: %r", design, exc)


class TaskSet:
    """Named tasks (a saga id, a consumer); a name runs at most once at a time."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.crashed: SimulatedCrash | None = None

    def __contains__(self, name: str) -> bool:
        return name in self.tasks

    def spawn(self, name: str, work: Coroutine[Any, Any, Any]) -> bool:
        """Run `work` as `name`; False (and `work` closed unrun) if `name` runs already or the instance crashed."""
        if name in self.tasks or self.crashed is not None:
            work.close()
            return False
        task = asyncio.ensure_future(work)
        self.tasks[name] = task
        task.add_done_callback(lambda t: self._done(name, t))
        return True

    def _done(self, name: str, task: asyncio.Task[Any]) -> None:
        if self.tasks.get(name) is task:
            del self.tasks[name]
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, SimulatedCrash):
            self.crashed = exc
            self.cancel()
        elif exc is not None:
            log.error("saga task %s failed: %r (recovery will pick its work up)", name, exc)

    def cancel(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()

    async def settle(self, timeout_s: float) -> bool:
        """Wait until no task runs; True if that happened within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.tasks:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.wait(list(self.tasks.values()), timeout=left)
        return True

    async def close(self, loop: asyncio.Task[Any] | None = None, timeout_s: float = 5.0) -> None:
        """A design's `close`: stop `loop` (its recovery loop, if any) and every task; work in flight is left
        to recovery, as a crash would leave it."""
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError, SimulatedCrash):
                await loop
        self.cancel()
        with contextlib.suppress(Exception):
            await self.settle(timeout_s)
