"""Jepsen-style operation histories, the input of every invariant checker.

Each operation is recorded twice: an `invoke` before it is attempted, then exactly one completion:
`ok` (it happened), `fail` (it certainly did not happen) or `info` (unknown: a timeout, a dropped
connection). Checkers are pure functions over a list of `Op` plus the final state read back
from the stores, so the same checker runs on a SimPy history, a live Locust history and in pytest.

On disk a history is JSON lines, one `Op` per line, appended by any number of processes.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

OpType = Literal["invoke", "ok", "fail", "info"]


@dataclass(frozen=True, slots=True)
class Op:
    """One history event. `process` names the client; `index` pairs a completion with its invoke."""

    type: OpType
    process: str
    index: int
    f: str
    value: dict[str, Any] = field(default_factory=dict)
    time_us: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, line: str) -> Op:
        return cls(**json.loads(line))


class History:
    """An append-only recorder. Thread-safe; `path` makes it stream to a JSON-lines file."""

    def __init__(self, path: Path | None = None, process: str | None = None) -> None:
        self.ops: list[Op] = []
        self.process = process or f"p{os.getpid()}"
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", buffering=1)

    def invoke(self, f: str, value: dict[str, Any] | None = None, *, process: str | None = None,
               time_us: int | None = None) -> Op:
        return self._append("invoke", f, value or {}, process, None, time_us)

    def complete(self, invoked: Op, type: OpType, value: dict[str, Any] | None = None,
                 time_us: int | None = None) -> Op:
        """Record `ok`, `fail` or `info` for an earlier invoke; the value merges over the invoke's."""
        merged = {**invoked.value, **(value or {})}
        return self._append(type, invoked.f, merged, invoked.process, invoked.index, time_us)

    def _append(self, type: OpType, f: str, value: dict[str, Any], process: str | None,
                index: int | None, time_us: int | None) -> Op:
        with self._lock:
            op = Op(type=type, process=process or self.process,
                    index=next(self._counter) if index is None else index, f=f, value=value,
                    time_us=time.time_ns() // 1000 if time_us is None else time_us)
            self.ops.append(op)
            if self._file is not None:
                self._file.write(op.to_json() + "\n")
        return op

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def load(path: Path) -> list[Op]:
    with path.open() as f:
        return [Op.from_json(line) for line in f if line.strip()]


def save(path: Path, ops: Iterable[Op]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for op in ops:
            f.write(op.to_json() + "\n")


def pairs(ops: Iterable[Op]) -> Iterator[tuple[Op, Op | None]]:
    """Each invoke with its completion (None when the history ends before it completed)."""
    pending: dict[tuple[str, int], Op] = {}
    done: list[tuple[Op, Op | None]] = []
    for op in ops:
        key = (op.process, op.index)
        if op.type == "invoke":
            pending[key] = op
        elif key in pending:
            done.append((pending.pop(key), op))
    yield from done
    for inv in pending.values():
        yield inv, None


@dataclass
class CheckResult:
    """The verdict of one invariant: `valid` plus counts and up to a few witnesses."""

    name: str
    valid: bool
    checked: int
    violations: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
