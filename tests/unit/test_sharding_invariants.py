"""The sharding checker (reference_impl/sharding/invariants.py) on worlds driven by the move's step machine:
the fenced mover passes every check, the unsafe mover is caught, and hand-built faults are named."""

from __future__ import annotations

import itertools

from reference_impl.sharding.core import Move, MovePolicy, RoutingCache, advance, make_router, start_move
from reference_impl.sharding.invariants import ShardWorld, check
from saaslab.history import History

TENANT = "t-moving"


class World:
    """Two shards in memory, a directory, writers with their own routing caches; one step at a time."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, list[str]]] = {0: {TENANT: ["old-0", "old-1"]}, 1: {}}
        self.router = make_router("directory", [0, 1]).with_placement(TENANT, 0)
        self.fenced: set[int] = set()
        self.captured: list[str] | None = None  # change capture on the source, from the copy on
        self.history = History()
        self.clock = itertools.count(1)
        self.keys = itertools.count()

    def write(self, cache: RoutingCache, writer: str) -> None:
        key = f"w-{next(self.keys)}"
        inv = self.history.invoke("write", {"tenant": TENANT, "key": key}, process=writer, time_us=next(self.clock))
        for _ in range(3):  # the service retries a write refused at the fence against the new placement
            placement = cache.get(TENANT) or cache.put(TENANT, self.router.placement(TENANT))
            if placement.shard in self.fenced:
                cache.invalidate(TENANT)
                continue
            self.rows[placement.shard].setdefault(TENANT, []).append(key)
            if placement.shard == 0 and self.captured is not None:
                self.captured.append(key)
            self.history.complete(inv, "ok", {"shard": placement.shard, "epoch": placement.epoch},
                                  time_us=next(self.clock))
            return
        self.history.complete(inv, "fail", {"status": 503}, time_us=next(self.clock))

    def read_back(self, key: str, cache: RoutingCache) -> None:
        inv = self.history.invoke("read", {"tenant": TENANT, "key": key}, time_us=next(self.clock))
        placement = self.router.placement(TENANT)
        cache.put(TENANT, placement)
        found = key in self.rows[placement.shard].get(TENANT, [])
        self.history.complete(inv, "ok", {"found": found, "shard": placement.shard, "epoch": placement.epoch},
                              time_us=next(self.clock))

    def move(self, mover: str) -> None:
        caches = [RoutingCache() for _ in range(8)]
        state = start_move(Move(TENANT, 0, 1), mover=mover, current_epoch=self.router.placement(TENANT).epoch,
                           now_us=0, policy=MovePolicy(fence_backlog=2, max_rounds=2))
        inv = self.history.invoke("move", {"tenant": TENANT, "source": 0, "target": 1}, time_us=next(self.clock))
        applied = 0
        source_rows = target_rows = None
        while not state.finished:
            for i, cache in enumerate(caches):  # 8 writers, one write each between steps
                self.write(cache, f"writer-{i}")
            rows = 0
            match state.step:
                case "copy":
                    self.captured = []
                    self.rows[1][TENANT] = list(self.rows[0][TENANT])
                    rows = len(self.rows[1][TENANT])
                case "catch_up" | "final_catch_up":
                    assert self.captured is not None
                    pending, applied = self.captured[applied:], len(self.captured)
                    self.rows[1][TENANT].extend(pending)
                    rows = len(pending)
                    if state.step == "final_catch_up":
                        source_rows, target_rows = len(self.rows[0][TENANT]), len(self.rows[1][TENANT])
                case "fence":
                    self.fenced.add(0)
                case "flip":
                    self.router = self.router.with_placement(TENANT, 1)
                case "clean":
                    self.rows[0].pop(TENANT, None)
            state = advance(state, next(self.clock), rows)
        done = {"epoch": state.epoch, "copied_rows": state.copied_rows}
        if source_rows is not None:
            done |= {"source_rows": source_rows, "target_rows": target_rows}
        self.history.complete(inv, "ok", done, time_us=next(self.clock))
        for i, cache in enumerate(caches):  # writers whose caches still point at the source write once more
            self.write(cache, f"writer-{i}")
        reader = RoutingCache()
        for key in (f"w-{k}" for k in range(3)):
            self.read_back(key, reader)

    def final(self) -> ShardWorld:
        return ShardWorld.from_dict({"shards": self.rows,
                                     "directory": {TENANT: self.router.shard_for(TENANT)},
                                     "initial": {TENANT: 2}})


def verdicts(world: World) -> dict[str, bool]:
    return {r.name: r.valid for r in check(world.history.ops, world.final())}


def test_the_fenced_move_under_8_writers_keeps_every_acknowledged_write_once_on_the_target() -> None:
    world = World()
    world.move("fenced")
    results = {r.name: r for r in check(world.history.ops, world.final())}
    assert all(r.valid for r in results.values()), [r for r in results.values() if not r.valid]
    acked = [op for op in world.history.ops if op.f == "write" and op.type == "ok"]
    assert len(acked) == len(world.final().shards["1"][TENANT]) - 2 and TENANT not in world.final().shards["0"]


def test_the_unsafe_move_loses_writes_and_the_checker_says_so() -> None:
    world = World()
    world.move("unsafe")
    results = {r.name: r for r in check(world.history.ops, world.final())}
    assert not results["acknowledged_writes_once"].valid
    assert "lost" in results["acknowledged_writes_once"].detail
    assert not results["rows_conserved"].valid


def _op_pair(h: History, f: str, value: dict, done: dict, t: int) -> None:
    h.complete(h.invoke(f, value, time_us=t), "ok", done, time_us=t + 1)


def test_each_check_names_its_fault_on_hand_built_worlds() -> None:
    h = History()
    _op_pair(h, "write", {"tenant": "a", "key": "k1"}, {}, 10)
    _op_pair(h, "write", {"tenant": "a", "key": "k2"}, {}, 20)
    _op_pair(h, "read", {"tenant": "a", "key": "k1"}, {"found": False, "epoch": 2}, 30)
    _op_pair(h, "read", {"tenant": "a", "key": "k2"}, {"found": True, "epoch": 1}, 40)
    world = ShardWorld.from_dict({"shards": {0: {"a": ["k1"]}, 1: {"a": ["k2", "k2"]}}, "directory": {"a": 1}})
    bad = {r.name for r in check(h.ops, world) if not r.valid}
    assert bad == {"acknowledged_writes_once", "single_owner", "read_your_writes", "directory_agrees",
                   "rows_conserved"}


def test_unknown_writes_may_be_present_once_or_absent() -> None:
    h = History()
    h.complete(h.invoke("write", {"tenant": "a", "key": "maybe"}, time_us=1), "info", time_us=2)
    h.complete(h.invoke("write", {"tenant": "a", "key": "gone"}, time_us=3), "info", time_us=4)
    world = ShardWorld.from_dict({"shards": {0: {"a": ["maybe"]}}, "directory": {"a": 0}})
    assert all(r.valid for r in check(h.ops, world))
