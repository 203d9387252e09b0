"""runtime.journal: frames round-trip exactly, a torn or corrupt tail ends the read, reset empties it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from scada_tcn.runtime.journal import Journal
from scada_tcn.runtime.telemetry import Sample


def _samples(n: int, C: int = 3, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        v = rng.standard_normal(C)
        v[rng.random(C) < 0.3] = np.nan
        out.append(Sample(f"WT{i % 4:02d}", 1_700_000_000_000_000_000 + i * 600_000_000_000, v))
    return out


def _same(a: list[Sample], b: list[Sample]) -> bool:
    return len(a) == len(b) and all(
        x.turbine == y.turbine and x.ts_ns == y.ts_ns and np.array_equal(x.values, y.values, equal_nan=True)
        for x, y in zip(a, b)
    )


def test_frames_round_trip_bit_for_bit(tmp_path):
    j = Journal(tmp_path / "j", 3)
    frames = [(1, _samples(5), None), (2, [], 123), (3, _samples(2, seed=1), -5), (4, _samples(1, seed=2), None)]
    for no, s, tick in frames:
        j.append(no, s, tick)
    got = list(Journal(tmp_path / "j", 3).read())
    assert [f.frame_no for f in got] == [1, 2, 3, 4] and [f.tick_ns for f in got] == [None, 123, -5, None]
    assert all(_same(f.samples, s) for f, (_, s, _) in zip(got, frames))


def test_a_torn_or_corrupt_tail_ends_the_read(tmp_path):
    j = Journal(tmp_path / "j", 3)
    j.append(1, _samples(3), None)
    j.append(2, _samples(3, seed=1), 7)
    whole = (tmp_path / "j").read_bytes()
    for cut in (len(whole) - 1, len(whole) - 30, len(whole) - 70):
        (tmp_path / "j").write_bytes(whole[:cut])
        r = Journal(tmp_path / "j", 3)
        got = list(r.read())
        assert [f.frame_no for f in got] == [1] and r.torn_tail
    flipped = bytearray(whole)
    flipped[-3] ^= 0xFF  # a value of frame 2: its CRC no longer matches
    (tmp_path / "j").write_bytes(bytes(flipped))
    r = Journal(tmp_path / "j", 3)
    assert [f.frame_no for f in r.read()] == [1] and r.torn_tail


def test_reset_empties_and_appending_goes_on(tmp_path):
    j = Journal(tmp_path / "j", 3)
    j.append(1, _samples(2), None)
    j.reset()
    assert j.size() == 0 and list(j.read()) == []
    j.append(2, _samples(1), None)
    assert [f.frame_no for f in j.read()] == [2]
    with pytest.raises(ValueError, match="3 channel values"):
        j.append(3, [Sample("WT01", 0, np.zeros(2))], None)


def test_rotated_frames_are_read_first_until_dropped(tmp_path):
    """`rotate` (a snapshot being written in the background): the frames so far move to `.prev`, new frames go to a
    new file, and `read` yields both in order, from a fresh Journal too (a restart); a torn `.prev` ends the read
    there (no gap); `drop_previous` and `reset` remove it; a second rotation before the drop is refused."""
    j = Journal(tmp_path / "j", 3)
    j.append(1, _samples(2), None)
    j.append(2, [], 5)
    j.rotate()
    j.append(3, _samples(1, seed=3), None)
    assert (tmp_path / "j.prev").exists()
    assert [f.frame_no for f in Journal(tmp_path / "j", 3).read()] == [1, 2, 3]
    with pytest.raises(RuntimeError, match="still needed"):
        j.rotate()
    prev = (tmp_path / "j.prev").read_bytes()
    (tmp_path / "j.prev").write_bytes(prev[:-4])
    r = Journal(tmp_path / "j", 3)
    assert [f.frame_no for f in r.read()] == [1] and r.torn_tail
    (tmp_path / "j.prev").write_bytes(prev)
    j.drop_previous()
    assert [f.frame_no for f in j.read()] == [3]
    j.rotate()
    j.append(4, [], None)
    j.reset()
    assert not (tmp_path / "j.prev").exists() and j.size() == 0 and list(j.read()) == []


def test_a_new_journal_file_is_made_durable_before_its_first_frame(tmp_path, monkeypatch):
    """Creating the journal fsyncs its directory (else a power cut could lose the file with its fsynced frames);
    opening an existing one does not need to."""
    synced: list[str] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), fsync(fd))[1])
    j = Journal(tmp_path / "j", 3)
    assert synced == [str(tmp_path)]
    j.append(1, _samples(2), None)
    assert synced == [str(tmp_path), str(tmp_path / "j")]
    j.close()
    Journal(tmp_path / "j", 3).close()
    assert len(synced) == 2


def test_a_frame_of_another_bundles_channels_is_taken_by_channel_name():
    """`in_channels`: values moved to their channel's place by name, bit for bit (a failed read, a NaN with a
    payload, stays one), missing where the writer had no such channel; nothing shared, nothing taken."""
    from scada_tcn.runtime.hold import UNREAD
    from scada_tcn.runtime.journal import in_channels

    samples = [Sample("WT1", 1, np.array([1.0, UNREAD, 3.0])), Sample("WT2", 2, np.array([np.nan, 5.0, 6.0]))]
    same, dropped = in_channels(samples, ["a", "b", "c"], ["a", "b", "c"])
    assert same is samples and dropped == 0
    got, dropped = in_channels(samples, ["a", "b", "c"], ["new", "c", "b"])
    assert dropped == 0 and [(s.turbine, s.ts_ns) for s in got] == [("WT1", 1), ("WT2", 2)]
    bits = [s.values.view(np.int64).tolist() for s in got]
    want = [np.array(v).view(np.int64).tolist() for v in ([np.nan, 3.0, UNREAD], [np.nan, 6.0, 5.0])]
    assert bits == want
    assert in_channels(samples, ["a", "b", "c"], ["x", "y"]) == ([], 2)
