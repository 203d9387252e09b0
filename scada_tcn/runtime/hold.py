"""Report-by-exception channels: a value sent holds until the next one, for at most the channel's `spec.hold_s`.

Many SCADA feeds publish a channel only when it changes: Sparkplug B data messages carry the metrics that changed,
OPC UA subscriptions and Kepware's IoT Gateway publish on data change, historians store values past a deadband. A
stopped turbine's power, rotor speed and pitch then send nothing for hours, and binning alone would score them as
missing exactly when the turbine stands still. A channel named in `spec.hold_s` is read as such a feed: a bin
where it has no value takes the channel's latest value before the bin (as a bin holding that one sample would: an
angle's circular mean, the value itself otherwise) while that value is at most `hold_s` seconds old at the bin's
end. The hold ends earlier at an `UNREAD` of the channel: a read the source said failed, an explicit null (the
source says it has no value; absent from a message, the channel says nothing), an impossible reading (outside
`spec.valid_range`, such as a logger's -9999), or the source's death (the daemon, for Sparkplug). A bin with a
value or an `UNREAD` keeps what binning made of its samples. Nothing holds a value older than `hold_s`, so a dead
link shows as missing once the hold has run out, and a hold never reaches back: a bin takes only values stamped at
or before its end (causal).

A held channel aggregated by `time` (`binning._time_weigh`) takes, in a bin with values, the time-weighted mean of
what held over it, the value from before the bin included (`held_before`), and in a bin where a value's hold runs
out, that value; the rules above give its other bins.

`UNREAD` is a NaN with a payload of its own, so it travels inside the float64 sample arrays (the daemon's journal
and state file keep the bits) and everything else reads it as missing; only `is_unread` tells it apart. `fill` has one
caller, `binning._hold`, with the events `binning` finds in each bin: the batch (`binning.bin_timeline`) and the
edge (`binning.aggregate_bins` with a `Carry`: `fleet.Fleet`, `open_bins.BinAccumulator`) hold alike, so a table
and a stream of the same samples give the same numbers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = ["NO_VALUE", "UNREAD", "Carry", "Events", "Latest", "fill", "held_before", "is_unread", "latest", "no_carry"]

_UNREAD_BITS = 0x7FF8_0000_5CAD_A0D1  # a quiet NaN: arithmetic and comparisons treat it as any NaN
UNREAD: float = struct.unpack("<d", struct.pack("<Q", _UNREAD_BITS))[0]
NO_VALUE = np.iinfo(np.int64).min  # a carry's stamp when the channel holds no value


def is_unread(values: np.ndarray) -> np.ndarray:
    """Bool mask of the `UNREAD` entries of a float64 array (any shape)."""
    return np.ascontiguousarray(values, dtype=np.float64).view(np.uint64) == np.uint64(_UNREAD_BITS)


class Events(NamedTuple):
    """Per bin and held channel, the latest thing the channel did in the bin: `offset` (n, H) int64, how long
    before the bin's end (-1: nothing); `value` (n, H) float64, the value then (NaN: an `UNREAD`, which ends the
    hold)."""

    offset: np.ndarray
    value: np.ndarray


class Carry(NamedTuple):
    """What the holds of many slots carry from one call of `fill` to the next: `ts` (slots, C) int64 and `val`
    (slots, C), per slot and channel the latest value in the bins so far (`NO_VALUE` and NaN: none), updated in
    place; `filled` (H,) int64, the bins each held channel gave a held value, counted up in place."""

    ts: np.ndarray
    val: np.ndarray
    filled: np.ndarray


def no_carry(n: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Carry arrays of `n` slots holding nothing: stamps (n, C) int64 `NO_VALUE`, values (n, C) NaN."""
    return np.full((n, channels), NO_VALUE, dtype=np.int64), np.full((n, channels), np.nan)


class _BySlot(NamedTuple):
    """Bins of any slots sorted so each slot's bins come together in time order: `o` the sort, `s` and `e` the
    sorted slots and ends, `seg` each bin's slot run, `head` and `last` the runs' first and last bins."""

    o: np.ndarray
    s: np.ndarray
    e: np.ndarray
    seg: np.ndarray
    head: np.ndarray
    last: np.ndarray


def _by_slot(slots: np.ndarray, ends: np.ndarray) -> _BySlot:
    o = np.argsort(slots, kind="stable")  # each slot's bins together, in time order
    s = slots[o]
    new = np.concatenate(([True], s[1:] != s[:-1]))
    head = np.flatnonzero(new)
    return _BySlot(o, s, ends[o], np.cumsum(new) - 1, head, np.append(head[1:], s.size) - 1)


def _latest(b: _BySlot, events: Events, h: int, c: int, carry: Carry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin in `b`'s order, the latest thing held channel `h` (channel `c`) did up to the bin's end, in its bins
    so far or before them (the carry): its stamp and value (NaN: an `UNREAD`, or nothing), and whether the bin
    itself did something."""
    n = b.s.size
    off, val = events.offset[b.o, h], events.value[b.o, h]
    did = off >= 0
    # per bin, the bin of its slot whose event is the latest up to it (key % (n + 1) - 1; -1: the carry)
    key = np.where(did, b.seg * (n + 1) + np.arange(n) + 1, -1)
    key[b.head] = np.maximum(key[b.head], b.seg[b.head] * (n + 1))
    src = np.maximum.accumulate(key) % (n + 1) - 1
    from_bin = src >= 0
    src_ts = np.where(from_bin, b.e[np.maximum(src, 0)] - off[np.maximum(src, 0)], carry.ts[b.s, c])
    src_val = np.where(from_bin, val[np.maximum(src, 0)], carry.val[b.s, c])
    return src_ts, src_val, did


class Latest(NamedTuple):
    """`latest`'s result: the bins sorted by slot (`b`) and, per held channel, `_latest`'s arrays in that order."""

    b: _BySlot
    channels: list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def latest(ends: np.ndarray, slots: np.ndarray, events: Events, held: tuple[int, ...], carry: Carry) -> Latest:
    """Per bin and held channel, the latest thing the channel did up to the bin's end (`_latest`), for `fill` and
    `held_before`. ends (n,) the bins' end stamps (ns), slots (n,) their slots, each slot's bins in time order;
    events: `Events` of the held channels `held` (indices into the channels); carry: the slots' latest values
    before these bins (read, not moved on: `fill` does that)."""
    b = _by_slot(slots, ends)
    return Latest(b, [_latest(b, events, h, c, carry) for h, c in enumerate(held)])


def held_before(found: Latest, held: tuple[int, ...], which: tuple[int, ...], carry: Carry) -> tuple[np.ndarray, ...]:
    """Per bin (in the order `latest` was given them) and held channel `which` (indices into `held`), the latest
    thing the channel did before the bin began, in the slot's earlier bins or the carry: stamps (n, W) int64 and
    values (n, W) (NaN: an `UNREAD`, or nothing; its stamp is then meaningless). Call it before `fill`, which moves
    the carry on."""
    b = found.b
    n = b.s.size
    ts, val = np.full((n, len(which)), NO_VALUE, dtype=np.int64), np.full((n, len(which)), np.nan)
    for k, h in enumerate(which):
        src_ts, src_val, _ = found.channels[h]
        prev_ts, prev_val = np.roll(src_ts, 1), np.roll(src_val, 1)  # the bin before, in the slot's run
        prev_ts[b.head], prev_val[b.head] = carry.ts[b.s[b.head], held[h]], carry.val[b.s[b.head], held[h]]
        ts[b.o, k], val[b.o, k] = prev_ts, prev_val
    return ts, val


def fill(
    binned: np.ndarray,
    found: Latest,
    held: tuple[int, ...],
    hold_ns: np.ndarray,
    one_sample: Callable[[np.ndarray, int], np.ndarray],
    carry: Carry,
) -> None:
    """Hold report-by-exception channels into the bins where they did nothing, in place.

    binned (n, C): closed bins of any slots, each slot's in time order; found: `latest` of these bins, of the held
    channels `held` (indices into C), `hold_ns` (H,) how long each one's value holds; one_sample(values, c): what a
    bin holding one sample of channel c of each value gets; carry: the slots' latest values before these bins,
    updated to the latest after them, and the bins filled, counted up."""
    b = found.b
    if not b.s.size or not held:
        return
    seg_slots = b.s[b.head]
    for h, c in enumerate(held):
        src_ts, src_val, did = found.channels[h]
        ok = ~did & ~np.isnan(src_val)
        ok[ok] = b.e[ok] - src_ts[ok] <= hold_ns[h]  # a carried value's stamp is never NO_VALUE (its value is NaN)
        binned[b.o[ok], c] = one_sample(src_val[ok], c)
        carry.filled[h] += np.count_nonzero(ok)
        carry.ts[seg_slots, c] = src_ts[b.last]
        carry.val[seg_slots, c] = src_val[b.last]
