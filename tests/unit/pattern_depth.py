"""How many leading digits decide whether a regular expression matches a string of
digits of a given length: the proof behind ``ledger.numbers.NANP_BLOCK``.

A pattern of phonenumbers' metadata (digits, classes, groups, alternation, counted
repeats) is turned into an automaton over the ten digits. Without backreferences or
lookarounds, whether ``re`` finds a match is whether the automaton accepts, so the
outcome for a string is decided by its first ``k`` digits when every state reachable
after ``k`` digits accepts either every completion of the remaining length or none.
"""

from __future__ import annotations

from functools import cache
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]
from typing import Any

DIGITS = "0123456789"
State = frozenset[int]


class Automaton:
    """A pattern as a nondeterministic automaton with empty moves (Thompson's)."""

    def __init__(self, pattern: str, *, prefix: bool = False) -> None:
        """``prefix``: as ``re.match`` reads (a match of the string's start), not
        ``fullmatch``."""
        self._empty: list[list[int]] = []
        self._moves: list[list[tuple[frozenset[str], int]]] = []
        self._start = self._new()
        self._end = self._build(P.parse(pattern), self._start)
        if prefix:
            self._moves[self._end].append((frozenset(DIGITS), self._end))
        self.start = self._closure({self._start})

    def _new(self) -> int:
        self._empty.append([])
        self._moves.append([])
        return len(self._empty) - 1

    def _build(self, items: Any, at: int) -> int:
        for op, arg in items:
            if op in (C.LITERAL, C.IN, C.ANY):
                to = self._new()
                self._moves[at].append((_digits(op, arg), to))
                at = to
            elif op is C.SUBPATTERN:
                _, add_flags, del_flags, inner = arg
                if add_flags or del_flags:
                    raise ValueError(f"flags in a pattern: {arg}")
                at = self._build(inner, at)
            elif op is C.BRANCH:
                end = self._new()
                for branch in arg[1]:
                    start = self._new()
                    self._empty[at].append(start)
                    self._empty[self._build(branch, start)].append(end)
                at = end
            elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
                least, most, inner = arg
                for _ in range(least):
                    at = self._build(inner, at)
                if most is C.MAXREPEAT:
                    loop = self._new()
                    self._empty[at].append(loop)
                    self._empty[self._build(inner, loop)].append(loop)
                    at = loop
                else:
                    end = self._new()
                    self._empty[at].append(end)
                    for _ in range(most - least):
                        at = self._build(inner, at)
                        self._empty[at].append(end)
                    at = end
            else:
                raise ValueError(f"not a regular pattern the proof reads: {op} {arg}")
        return at

    def _closure(self, states: set[int]) -> State:
        seen, stack = set(states), list(states)
        while stack:
            for to in self._empty[stack.pop()]:
                if to not in seen:
                    seen.add(to)
                    stack.append(to)
        return frozenset(seen)

    def step(self, states: State, digit: str) -> State:
        return self._closure({to for s in states for ds, to in self._moves[s] if digit in ds})

    def accepts(self, text: str) -> bool:
        states = self.start
        for ch in text:
            states = self.step(states, ch)
        return self._end in states

    def depth(self, length: int, head: str = "") -> int:
        """The fewest leading digits that decide every string of ``length`` digits
        that starts with ``head``."""
        level = {self.start}
        for ch in head:
            level = {self.step(s, ch) for s in level}
        for k in range(len(head), length + 1):
            if all(self._completions(s, length - k) in (0, 10 ** (length - k)) for s in level):
                return k
            level = {self.step(s, d) for s in level for d in DIGITS}
        raise AssertionError("a whole string always decides")

    @cache  # noqa: B019 - the automata of a test run are few, and kept anyway
    def _completions(self, states: State, left: int) -> int:
        """How many strings of ``left`` digits take ``states`` to acceptance."""
        if left == 0:
            return int(self._end in states)
        return sum(self._completions(self.step(states, d), left - 1) for d in DIGITS)


def _digits(op: Any, arg: Any) -> frozenset[str]:
    if op is C.ANY:
        return frozenset(DIGITS)
    if op is C.LITERAL:
        return frozenset(DIGITS) & {chr(arg)}
    found, negate = set(), False
    for kind, value in arg:
        if kind is C.NEGATE:
            negate = True
        elif kind is C.LITERAL:
            found.add(chr(value))
        elif kind is C.RANGE:
            found.update(chr(c) for c in range(value[0], value[1] + 1))
        elif kind is C.CATEGORY and value is C.CATEGORY_DIGIT:
            found.update(DIGITS)
        else:
            raise ValueError(f"not a class the proof reads: {kind} {value}")
    return frozenset(set(DIGITS) - found if negate else set(DIGITS) & found)
