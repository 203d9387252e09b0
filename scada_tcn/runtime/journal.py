"""The daemon's write-ahead journal: every engine input since the last state snapshot, durable before it is acked.

Why: the state file is saved every `state.save_interval_s`, but telemetry is acknowledged to the broker as soon
as it is processed. Without a journal, samples acknowledged after the last save would be neither in the restored
state nor redelivered after a crash. With it, a message is acknowledged only once the frame holding it is on disk
(fsync), and a restart replays the frames after the snapshot through the same engine calls, in the same order, so
every step gets the same score, byte for byte, as an uninterrupted run.

Format: a file of frames, appended one per processing-loop iteration:

    frame   := length u32 | crc32(payload) u32 | payload                  (little endian)
    payload := frame_no u64 | has_tick u8 | tick_ns i64 | n u32 | ids_len u32 | ids (UTF-8 JSON list of n turbine
               ids) | ts_ns i64[n] | values f64[n * C]                   (C = the bundle's channels; NaN = missing)

A frame holds the samples the engine ingested in that iteration, in order, and the wall-clock tick (closing
bins past their grace) when that iteration ran one, after the samples. `read()` yields the frames in order and
stops at the first torn or corrupt frame (a crash while writing: its messages were never acknowledged, so the
broker redelivers them; or zeros that a power cut left at the end of a file a write had extended). After a
snapshot the journal is emptied (`reset`); the snapshot records the number of the last frame it includes, so
frames of an older journal that survived a crash between the two are skipped.

Creating the file fsyncs its directory, so a new journal survives a power cut with its frames. A snapshot
written in the background: `rotate()` moves the frames so far to `<path>.prev` and starts a new file (the
directory is fsynced, so the new file survives a power cut), `drop_previous()` deletes them once the
snapshot that includes them is on disk. `read()` yields the frames of both files, the older first; a torn frame
in `.prev` ends the reading there (what follows would leave a gap).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from scada_tcn.runtime.channel_map import channel_map
from scada_tcn.runtime.state_file import fsync_dir
from scada_tcn.runtime.telemetry import Sample

__all__ = ["Frame", "Journal", "in_channels"]

_HEAD = struct.Struct("<II")
_FIXED = struct.Struct("<QBqII")


class Frame(NamedTuple):
    frame_no: int
    samples: list[Sample]
    tick_ns: int | None


class Journal:
    """Append-only frames of engine inputs in one file; see the module docstring."""

    def __init__(self, path: str | Path, n_channels: int) -> None:
        if n_channels < 1:
            raise ValueError(f"Journal: n_channels must be >= 1, got {n_channels}")
        self.path = Path(path)
        self.prev_path = self.path.with_name(self.path.name + ".prev")
        self.n_channels = int(n_channels)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fh = open(self.path, "ab")
        if created:  # the new file's directory entry must survive a power cut before a frame relies on it
            fsync_dir(self.path.parent)
        self.torn_tail = False  # set by read(): the file ended in a partial or corrupt frame

    def append(self, frame_no: int, samples: Sequence[Sample], tick_ns: int | None) -> None:
        """Write one frame and fsync it: when this returns, the inputs survive a crash."""
        n = len(samples)
        ids = json.dumps([s.turbine for s in samples], separators=(",", ":")).encode()
        ts = np.fromiter((s.ts_ns for s in samples), dtype="<i8", count=n)
        values = np.stack([s.values for s in samples]).astype("<f8") if n else np.zeros((0, self.n_channels))
        if values.shape != (n, self.n_channels):
            raise ValueError(f"Journal.append: samples must hold {self.n_channels} channel values each")
        fixed = _FIXED.pack(frame_no, tick_ns is not None, 0 if tick_ns is None else tick_ns, n, len(ids))
        payload = b"".join((fixed, ids, ts.tobytes(), values.tobytes()))
        self._fh.write(_HEAD.pack(len(payload), zlib.crc32(payload)) + payload)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def read(self, n_channels: int | None = None) -> Iterator[Frame]:
        """The frames on disk (`.prev`, then the current file), in order, up to the first torn or corrupt one;
        `n_channels`: the channels of the bundle that wrote them, when not this journal's (a model change after a
        crash: the caller maps their values)."""
        c = self.n_channels if n_channels is None else int(n_channels)
        if c < 1:
            raise ValueError(f"Journal.read: n_channels must be >= 1, got {c}")
        self.torn_tail = False
        for path in (self.prev_path, self.path):
            yield from self._read(path, c)
            if self.torn_tail:
                return

    def last_frame_no(self) -> int:
        """The number of the last frame on disk whose CRC holds (0: none), whatever channels its bundle had."""
        last = 0
        for path in (self.prev_path, self.path):
            for payload in self._payloads(path):
                if len(payload) < _FIXED.size:
                    return last
                last = max(last, _FIXED.unpack_from(payload, 0)[0])
            if self.torn_tail:
                return last
        return last

    def _read(self, path: Path, c: int) -> Iterator[Frame]:
        for payload in self._payloads(path):
            frame = self._decode(payload, c)
            if frame is None:  # its CRC holds but it is no frame of this journal: zeros a power cut left, say
                self.torn_tail = True
                return
            yield frame

    def _payloads(self, path: Path) -> Iterator[bytes]:
        """The payloads of `path`'s frames whose CRC holds, up to the first that does not (`torn_tail`)."""
        self.torn_tail = False
        data = path.read_bytes() if path.exists() else b""
        pos = 0
        while pos < len(data):
            if pos + _HEAD.size > len(data):
                self.torn_tail = True
                return
            length, crc = _HEAD.unpack_from(data, pos)
            payload = data[pos + _HEAD.size : pos + _HEAD.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                self.torn_tail = True
                return
            yield payload
            pos += _HEAD.size + length

    @staticmethod
    def _decode(payload: bytes, c: int) -> Frame | None:
        """A frame's payload -> the frame, or None when it is not one of this journal's frames (too short, sizes
        that do not add up for `c` channels, ids that are not a JSON list of n strings). The CRC alone cannot tell:
        an all-zero header is length 0, CRC 0, and crc32(b"") == 0."""
        if len(payload) < _FIXED.size:
            return None
        frame_no, has_tick, tick_ns, n, ids_len = _FIXED.unpack_from(payload, 0)
        if has_tick > 1 or len(payload) != _FIXED.size + ids_len + 8 * n * (1 + c):
            return None
        at = _FIXED.size
        try:
            ids = json.loads(payload[at : at + ids_len])
        except ValueError:
            return None
        if not isinstance(ids, list) or len(ids) != n or not all(isinstance(t, str) for t in ids):
            return None
        at += ids_len
        ts = np.frombuffer(payload, dtype="<i8", count=n, offset=at)
        at += 8 * n
        values = np.frombuffer(payload, dtype="<f8", count=n * c, offset=at).reshape(n, c)
        samples = [Sample(str(t), int(s), values[i].copy()) for i, (t, s) in enumerate(zip(ids, ts))]
        return Frame(int(frame_no), samples, int(tick_ns) if has_tick else None)

    def reset(self) -> None:
        """Empty the journal (after a snapshot that includes every frame in it), `.prev` too."""
        self._fh.close()
        with open(self.path, "wb") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        self._fh = open(self.path, "ab")
        self.drop_previous()

    def rotate(self) -> None:
        """Move the frames so far to `.prev` and append to a new file (a snapshot of them is being written)."""
        if self.prev_path.exists():
            raise RuntimeError(f"Journal.rotate: {self.prev_path} is still needed (its snapshot is not on disk)")
        self._fh.close()
        os.replace(self.path, self.prev_path)
        self._fh = open(self.path, "ab")
        fsync_dir(self.path.parent)

    def drop_previous(self) -> None:
        """Delete `.prev` (the snapshot that includes its frames is on disk)."""
        self.prev_path.unlink(missing_ok=True)

    def size(self) -> int:
        return sum(p.stat().st_size for p in (self.prev_path, self.path) if p.exists())

    def close(self) -> None:
        self._fh.close()


def in_channels(samples: list[Sample], written: Sequence[str], channels: Sequence[str]) -> tuple[list[Sample], int]:
    """Samples a bundle of channels `written` journalled, in the channels of another (a model change after a crash),
    each value moved by its channel's name (`channel_map`), NaN (missing) where the writer had no such channel; a
    sample is dropped when the two share no channel. Returns the samples and how many were dropped."""
    if tuple(written) == tuple(channels):
        return samples, 0
    by_name = channel_map(written, channels)
    if by_name is None:
        return [], len(samples)
    values = by_name.moved([s.values for s in samples] or np.zeros((0, len(written))), np.nan, np.float64)
    return [s._replace(values=v) for s, v in zip(samples, values)], 0
