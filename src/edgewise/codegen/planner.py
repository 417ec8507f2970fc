"""Static memory planning: every int8 activation gets an offset in one arena, fixed at compile time.

Tensor lifetimes come from the op order. Placement is first-fit (lowest offset that overlaps no
placed buffer alive at the same time); the order in which buffers are placed decides the result, so
several orders are tried and the smallest arena kept. TFLite Micro's planner is the first of these
orders (largest first). The lower bound is the largest total of tensors alive at the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgewise.codegen.graph import IntGraph

ALIGN = 4


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int
    first: int  # op index that writes it (-1: the model input)
    last: int  # last op index that reads it

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass
class Plan:
    offsets: dict[str, int]  # buffer name -> arena offset
    aliases: dict[str, str]  # tensor -> the buffer it shares (reshape outputs)
    arena_bytes: int
    lower_bound_bytes: int
    strategy: str
    tried: dict[str, int]

    def offset(self, tensor: str) -> int:
        return self.offsets[self.aliases.get(tensor, tensor)]


def buffers(graph: IntGraph) -> tuple[list[Buffer], dict[str, str]]:
    """One buffer per int8 tensor, with reshape outputs folded into their input's buffer."""
    aliases: dict[str, str] = {}

    def root(t: str) -> str:
        while t in aliases:
            t = aliases[t]
        return t

    first: dict[str, int] = {graph.input: -1}
    last: dict[str, int] = {graph.input: -1}
    for i, op in enumerate(graph.ops):
        for t in op.inputs:
            last[root(t)] = i
        if op.kind == "reshape":
            aliases[op.output] = root(op.inputs[0])
        else:
            first[op.output] = i
            last.setdefault(op.output, i)
    end = len(graph.ops)
    last[root(graph.output)] = end  # the output is read by the caller after the last op
    flat = {t: root(t) for t in aliases}
    bufs = [Buffer(t, _align(graph.tensors[t].size), first[t], last[t]) for t in first]
    # Kernel scratch (a convolution's receptive-field column) lives only while its op runs.
    bufs += [Buffer(f"scratch{i}", _align(op.attrs["col"]), i, i) for i, op in enumerate(graph.ops) if "col" in op.attrs]
    return bufs, flat


def lower_bound(bufs: list[Buffer]) -> int:
    steps = range(min(b.first for b in bufs), max(b.last for b in bufs) + 1)
    return max(sum(b.size for b in bufs if b.first <= s <= b.last) for s in steps)


def _first_fit(order: list[Buffer]) -> tuple[dict[str, int], int]:
    placed: list[tuple[Buffer, int]] = []
    offsets: dict[str, int] = {}
    for b in order:
        busy = sorted((off, off + other.size) for other, off in placed if b.overlaps_in_time(other))
        offset = 0
        for start, stop in busy:
            if offset + b.size <= start:
                break
            offset = max(offset, stop)
        placed.append((b, offset))
        offsets[b.name] = offset
    return offsets, max((off + b.size for b, off in placed), default=0)


STRATEGIES = {
    "largest-first": lambda b: (-b.size, b.first),
    "longest-lived-first": lambda b: (-(b.last - b.first), -b.size),
    "earliest-first": lambda b: (b.first, -b.size),
    "largest-area-first": lambda b: (-(b.size * (b.last - b.first + 1)), b.first),
    "conflicts-first": None,  # filled in plan(): most time-overlapping neighbours first
}


def plan(graph: IntGraph) -> Plan:
    bufs, aliases = buffers(graph)
    tried: dict[str, int] = {}
    best: tuple[int, str, dict[str, int]] | None = None
    for name, key in STRATEGIES.items():
        if key is None:
            order = sorted(bufs, key=lambda b: (-sum(o.size for o in bufs if o is not b and b.overlaps_in_time(o)),
                                                -b.size))
        else:
            order = sorted(bufs, key=key)
        offsets, size = _first_fit(order)
        tried[name] = size
        if best is None or size < best[0]:
            best = (size, name, offsets)
    assert best is not None
    return Plan(best[2], aliases, best[0], lower_bound(bufs), best[1], tried)
