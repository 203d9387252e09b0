"""Per-step 0/1 flags from rules over the binned channels, evaluated identically offline and at the edge.

Rule grammar (no parentheses; `and` binds tighter than `or`; parsed by a small tokenizer, never eval):

    rule   := conj ("or" conj)*
    conj   := clause ("and" clause)*
    clause := CHANNEL OP NUMBER | CHANNEL        OP in <, <=, >, >=, ==, !=

A bare CHANNEL clause is true where the value is present and != 0 (so a rule may be just a channel name).
A clause on a missing (NaN) value is false, whatever the operator (`!=` included).

Contract: `compile_rules(spec)` validates every rule of `spec.flag_rules` once, in `spec.flag_names` order
(SpecError naming the rule and the problem: unknown channel, bad token, bad number, misplaced keyword).
`CompiledFlags.evaluate(values)` takes binned values (T, C) float in `spec.channels` order (T may be 1) and
returns (T, R) float32 of 0/1, vectorised over rows; each step uses only its own row (causal). Wrong shapes
raise InputError; caller arrays are never modified.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scada_tcn.runtime.errors import InputError, SpecError
from scada_tcn.runtime.spec import PipelineSpec

_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}
_TOKEN = re.compile(
    r"\s*(?:(?P<op><=|>=|==|!=|<|>)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)"
    r"|(?P<num>[-+]?[0-9.][0-9.eE+-]*)(?![A-Za-z_]))"  # a number glued to letters ("4and") is a bad token
)
_KEYWORDS = ("and", "or")

# A clause is (channel index, operator or None for a bare channel, number); a rule is OR of ANDs of clauses.
Clause = tuple[int, str | None, float]


@dataclass(frozen=True)
class CompiledFlags:
    """Validated flag rules, ready to evaluate on binned values (T, C)."""

    names: tuple[str, ...]
    channels: tuple[str, ...]
    rules: tuple[tuple[tuple[Clause, ...], ...], ...]  # per flag: OR over AND-groups of clauses

    def evaluate(self, values: np.ndarray) -> np.ndarray:
        """0/1 flags (T, R) float32 for binned values (T, C); a clause on NaN is false."""
        arr = np.asarray(values)
        if arr.ndim != 2 or arr.shape[1] != len(self.channels) or arr.dtype.kind not in "fiu":
            raise InputError(
                f"flags: values must be a numeric (T, {len(self.channels)}) array for channels "
                f"{list(self.channels)}, got dtype {arr.dtype} shape {arr.shape}"
            )
        arr = arr.astype(np.float64, copy=False)  # compare in float64 whatever the caller's dtype
        present = ~np.isnan(arr)
        out = np.zeros((arr.shape[0], len(self.names)), dtype=np.float32)
        for r, groups in enumerate(self.rules):
            hit = np.zeros(arr.shape[0], dtype=bool)
            for group in groups:
                g = np.ones(arr.shape[0], dtype=bool)
                for c, op, number in group:
                    g &= present[:, c] & (arr[:, c] != 0 if op is None else _OPS[op](arr[:, c], number))
                hit |= g
            out[:, r] = hit
        return out


def _tokenize(rule: str, flag: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos, text = 0, rule.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SpecError(f"flag {flag!r}: rule {rule!r}: bad token at {text[pos:].strip()!r}")
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def _number(text: str, flag: str, rule: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise SpecError(f"flag {flag!r}: rule {rule!r}: bad number {text!r}") from None
    if not math.isfinite(x):
        raise SpecError(f"flag {flag!r}: rule {rule!r}: number {text!r} must be finite")
    return x


def _parse(rule: str, flag: str, channels: tuple[str, ...]) -> tuple[tuple[Clause, ...], ...]:
    if not isinstance(rule, str) or not rule.strip():
        raise SpecError(f"flag {flag!r}: rule must be a non-empty string, got {rule!r}")
    tokens = _tokenize(rule, flag)
    groups: list[tuple[Clause, ...]] = []
    group: list[Clause] = []
    i = 0
    while True:
        kind, text = tokens[i] if i < len(tokens) else ("end", "")
        if kind != "name" or text in _KEYWORDS:
            raise SpecError(f"flag {flag!r}: rule {rule!r}: expected a channel name, got {text or 'end of rule'!r}")
        if text not in channels:
            raise SpecError(f"flag {flag!r}: rule {rule!r}: unknown channel {text!r}; known: {list(channels)}")
        c, i = channels.index(text), i + 1
        if i < len(tokens) and tokens[i][0] == "op":
            if i + 1 >= len(tokens) or tokens[i + 1][0] != "num":
                got = tokens[i + 1][1] if i + 1 < len(tokens) else "end of rule"
                raise SpecError(f"flag {flag!r}: rule {rule!r}: expected a number after {tokens[i][1]!r}, got {got!r}")
            group.append((c, tokens[i][1], _number(tokens[i + 1][1], flag, rule)))
            i += 2
        else:
            group.append((c, None, 0.0))
        if i == len(tokens):
            groups.append(tuple(group))
            return tuple(groups)
        kind, text = tokens[i]
        if kind != "name" or text not in _KEYWORDS:
            raise SpecError(f"flag {flag!r}: rule {rule!r}: expected 'and', 'or' or end of rule, got {text!r}")
        if text == "or":
            groups.append(tuple(group))
            group = []
        i += 1


def compile_rules(spec: PipelineSpec) -> CompiledFlags:
    """Parse and validate every flag rule of the spec once."""
    rules = tuple(_parse(spec.flag_rules[f], f, spec.channels) for f in spec.flag_names)
    return CompiledFlags(names=spec.flag_names, channels=spec.channels, rules=rules)
