"""Lab mode: faults armed over HTTP at named points in the service (docs/contract.md, "Lab mode").

Code marks a point with `await faults.before(point)` before its effect and `faults.after(point)`
once the effect is done; an effect with failure modes of its own (the lab's payment provider)
takes the armed fault with `faults.take(point)` and applies it itself. Modes:

* `error`: fail before the effect with a 503 problem.
* `delay`: sleep `delay_ms` before the effect (inside the scheduler slot, so it is service time).
* `crash`: kill the worker process on the spot; no response is possible.
* `timeout_after_effect`: let the effect happen, then answer 504 as if the call timed out, the
  case that makes a client retry something that already happened.

At most one fault is armed per point; it fires with `probability` and disarms after `count` firings.
With lab mode off nothing can be armed and every /admin/faults route is absent (404).

Faults live in each worker process: a POST arms the worker that took the connection (so a crash
fault kills one worker, and `count` counts its firings). A DELETE clears every worker: the worker
that takes it publishes on a Redis channel, and each worker follows that channel (`follow_clears`),
so a load test that stops leaves no fault armed anywhere, whichever worker its request reached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal, NoReturn

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis
from starlette.responses import JSONResponse, Response

from reference_impl.common.metrics import Metrics
from reference_impl.common.problem import PROBLEM_RESPONSES, Problem

log = logging.getLogger("saaslab.faults")

FaultMode = Literal["error", "delay", "crash", "timeout_after_effect"]
BEFORE_MODES = frozenset({"error", "delay", "crash"})
AFTER_MODES = frozenset({"timeout_after_effect"})
# Exit status of a worker killed by the crash fault, so a supervisor can tell it from a real crash.
CRASH_EXIT_CODE = 70


@dataclass
class Fault:
    point: str
    mode: FaultMode
    probability: float = 1.0
    count: int | None = None
    delay_ms: int = 0
    fired: int = 0


class Faults:
    def __init__(self, points: Mapping[str, str], metrics: Metrics, *, seed: int | None = None) -> None:
        self.points = dict(points)
        self.armed: dict[str, Fault] = {}
        self._metrics = metrics
        self._rng = random.Random(seed)

    def declare(self, points: Mapping[str, str]) -> None:
        """Add named points (with what a fault there does), as each pattern's service face lists them."""
        self.points.update(points)

    def arm(self, fault: Fault) -> None:
        if fault.point not in self.points:
            raise KeyError(fault.point)
        self.armed[fault.point] = fault

    def clear(self) -> None:
        self.armed.clear()

    def _fire(self, point: str, modes: frozenset[str]) -> Fault | None:
        fault = self.armed.get(point)
        if fault is None or fault.mode not in modes:
            return None
        if fault.probability < 1.0 and self._rng.random() >= fault.probability:
            return None
        fault.fired += 1
        if fault.count is not None and fault.fired >= fault.count:
            del self.armed[point]
        self._metrics.faults_fired.labels(point, fault.mode).inc()
        return fault

    async def before(self, point: str) -> None:
        if not self.armed:  # the common case, lab mode or not: nothing armed
            return
        fault = self._fire(point, BEFORE_MODES)
        if fault is None:
            return
        if fault.mode == "delay":
            await asyncio.sleep(fault.delay_ms / 1000)
        elif fault.mode == "error":
            raise Problem(503, "fault-injected", f"Lab-mode fault at point {point!r}.",
                          headers={"Retry-After": "1"})
        else:
            crash(point)

    def after(self, point: str) -> None:
        if self.armed and self._fire(point, AFTER_MODES) is not None:
            raise Problem(504, "timeout", "The operation did not complete in time.")

    def take(self, point: str) -> Fault | None:
        """Fire the fault armed at `point`, whatever its mode, and hand it to the caller to apply:
        for an effect with failure modes of its own (the lab's payment provider)."""
        if not self.armed:
            return None
        return self._fire(point, BEFORE_MODES | AFTER_MODES)


def crash(point: str) -> NoReturn:
    """The `crash` mode: the worker dies on the spot, no response, no cleanup."""
    log.warning("lab-mode crash fault at %r: exiting worker %d", point, os.getpid())
    os._exit(CRASH_EXIT_CODE)


class FaultIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    point: str
    mode: FaultMode
    probability: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    count: int | None = Field(default=None, ge=1)
    delay_ms: int = Field(default=0, ge=0, le=600_000)


CLEAR_ALL = "clear"
FOLLOW_RETRY_S = 1.0


def faults_channel(redis_prefix: str) -> str:
    return f"{redis_prefix}:lab:faults"


async def follow_clears(faults: Faults, redis_url: str, channel: str) -> None:
    """Clear this worker's faults whenever any worker is asked to (runs for the worker's life, lab mode only).

    Its own connection without a read timeout: a subscriber waits for messages, it does not answer requests."""
    while True:
        client = Redis.from_url(redis_url, socket_timeout=None, health_check_interval=0)
        try:
            async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        faults.clear()
        except (OSError, ConnectionError, TimeoutError) as e:
            log.warning("lab mode: lost the fault channel (%s); following it again in %g s", e, FOLLOW_RETRY_S)
        except Exception as e:  # a Redis error class; keep following rather than leave a worker deaf
            log.warning("lab mode: fault channel error (%s); following it again in %g s", e, FOLLOW_RETRY_S)
        finally:
            await client.aclose()
        await asyncio.sleep(FOLLOW_RETRY_S)


def faults_router(faults: Faults, require_admin: Callable[..., Awaitable[None]],
                  clear_everywhere: Callable[[], Awaitable[object]] | None = None) -> APIRouter:
    """/admin/faults; mount it only in lab mode, so that without it every such route is 404."""
    router = APIRouter(prefix="/admin/faults", tags=["lab"], dependencies=[Depends(require_admin)],
                       responses=PROBLEM_RESPONSES)

    @router.post("", status_code=201)
    async def arm_fault(body: FaultIn) -> JSONResponse:
        fault = Fault(**body.model_dump())
        try:
            faults.arm(fault)
        except KeyError:
            raise Problem(422, "unknown-fault-point",
                          f"No fault point {fault.point!r}; known points: {', '.join(faults.points)}.") from None
        return JSONResponse(asdict(fault), status_code=201)

    @router.get("")
    async def list_faults() -> dict[str, object]:
        # `worker`: which process answered, since faults are armed per worker.
        return {"points": faults.points, "armed": [asdict(f) for f in faults.armed.values()], "worker": os.getpid()}

    @router.delete("", status_code=204)
    async def clear_faults() -> Response:
        faults.clear()
        if clear_everywhere is not None:
            await clear_everywhere()
        return Response(status_code=204)

    return router
