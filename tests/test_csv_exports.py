"""A user's own CSV export: scada-prepare and `scada-runtime replay` read it alike, or refuse it alike saying what
to fix. Found in review by building the exports users bring (a separator inside a free-text cell, separators at
line ends, blank lines, Excel serial dates, files cut short, comment lines, decimal commas, float32 Parquet), and
exports in other CSV dialects (';' or tab separators, decimal commas, a preamble before the header)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scada_tcn.runtime.bundle import TableFormat, TableIdentifiers
from scada_tcn.runtime.cells import first_text, is_number, parse_numbers
from scada_tcn.runtime.csv_table import CsvDialect
from scada_tcn.runtime.daemon_config import CsvMappingCfg, MappingCfg, daemon_config_from_dict
from scada_tcn.runtime.errors import ConfigError, InputError
from scada_tcn.runtime.ids import turbine_id_problem
from scada_tcn.runtime.replay import LeftOut, table_chunks
from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.data.tables import load_raw_table, parse_timestamps, table_format

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "config.yaml"
CHANNELS = ("wind_speed", "power", "rotor_speed", "gen_speed", "pitch", "wind_dir", "nacelle_dir", "ambient_temp",
            "nacelle_temp", "gearbox_oil_temp", "gearbox_bearing_temp", "gen_bearing_temp", "status")  # fmt: skip
HEADER = ",".join(("turbine_id", "timestamp", *CHANNELS))
TABLE = TableFormat({c: c for c in CHANNELS}, "turbine_id", "timestamp", None)  # as the training table


def _rows(n: int = 6, turbines: tuple[str, ...] = ("WT01", "WT02")) -> list[str]:
    """Data lines (no header): every turbine every 10 minutes from 2024-01-01, distinct values per cell."""
    out = []
    for t, tid in enumerate(turbines):
        for i in range(n):
            cells = [f"{(t * 100 + i * 13 + j) % 97 + 0.37 * j:.2f}" for j in range(len(CHANNELS))]
            out.append(",".join([tid, f"{1704067200 + 600 * i}", *cells]))
    return out


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _prepare(path: Path):
    """scada-prepare's reader on `path` (every channel mapped to the column of its name)."""
    return load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={path}"]).data)


def _replay(path: Path, rows: int = 5):
    """replay's reader on `path`: (ids, ts_ns, values) of all its chunks."""
    parts = list(table_chunks(path, CHANNELS, MappingCfg(), TABLE, rows))
    return ([i for p in parts for i in p[0]], np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))  # fmt: skip


def _both(path: Path) -> tuple:
    """What both readers read, after checking they agree."""
    t = _prepare(path)
    ids, ts, values = _replay(path)
    assert list(t.turbine_ids) == ids and t.ts_ns.tolist() == ts.tolist()
    np.testing.assert_array_equal(t.values, values)
    return ids, ts, values


def test_a_separator_inside_an_unquoted_cell_is_refused_by_both_naming_the_line(tmp_path):
    """Free status text with a comma, unquoted: replay shifted every later cell of the row (the ambient
    temperature read the nacelle direction) and scada-prepare refused it without naming the file."""
    lines = [HEADER, *_rows()]
    lines[4] = lines[4].rsplit(",", 1)[0] + ",STOP, manual"
    path = _write(tmp_path / "a.csv", lines)
    for read in (_prepare, _replay):
        with pytest.raises(InputError, match=r"a\.csv: line 5 has 16 cells where the header has 15.*quote such"):
            read(path)


def test_separators_at_line_ends_and_blank_lines_read_as_the_clean_file(tmp_path):
    """A separator at the end of each data line (not the header) made pandas take the first column as the index:
    stamps read as turbine ids. Blank lines made replay refuse an empty turbine id."""
    clean = _both(_write(tmp_path / "clean.csv", [HEADER, *_rows()]))
    trailing = [HEADER, *(r + "," for r in _rows())]
    blanks = ["", HEADER, *_rows()[:3], "", "   ", *_rows()[3:], "", ""]
    for name, lines in (("trailing.csv", trailing), ("blanks.csv", blanks)):
        got = _both(_write(tmp_path / name, lines))
        assert got[0] == clean[0] and got[1].tolist() == clean[1].tolist(), name
        np.testing.assert_array_equal(got[2], clean[2])


def test_numeric_stamps_that_are_not_epoch_seconds_are_refused_by_both(tmp_path):
    """Excel serial days (45292.0069) were read as epoch seconds: replay put the whole table in one step of
    1970-01-01 and exited 0; epoch milliseconds were refused without saying so."""

    def table(stamps: list[str]) -> Path:
        return _write(tmp_path / "t.csv", [HEADER] + [r.split(",", 2)[0] + f",{s}," + r.split(",", 2)[2]
                                                      for r, s in zip(_rows(3, ("WT01",)), stamps)])  # fmt: skip

    excel = table(["45292.006944", "45292.013889", "45292.020833"])
    for read in (_prepare, _replay):
        with pytest.raises(InputError, match=r"45292\.006944.*lie before 1990: Excel serial dates"):
            read(excel)
    ms = table(["1704067200000", "1704067800000", "1704068400000"])
    with pytest.raises(InputError, match=r"may be epoch milliseconds: set data\.identifiers\.time_format: epoch_ms"):
        _prepare(ms)
    with pytest.raises(InputError, match=r"may be epoch milliseconds: set mapping\.time_format: epoch_ms"):
        _replay(ms)


def test_epoch_milliseconds_read_with_time_format_epoch_ms_as_the_epoch_seconds_table(tmp_path):
    """Epoch milliseconds (InfluxDB, ThingsBoard and many historians export them) were refused by both readers
    ("export epoch seconds"). `time_format: epoch_ms` reads every stamp as milliseconds, by one function in both
    readers: the same instants as the table in epoch seconds, fractions of a millisecond to the microsecond as the
    daemon reads them. Seconds under epoch_ms (1970), a stamp that is not a number and a missing stamp are refused
    by both, naming the setting."""
    rows = _rows()
    plain = _both(_write(tmp_path / "epoch.csv", [HEADER, *rows]))
    cut = [r.split(",", 2) for r in rows]
    ms_rows = [f"{a},{int(b) * 1000},{c}" for a, b, c in cut]
    ms_rows[1] = ms_rows[1].replace(",1704067800000,", ",1704067800000.0004,")  # 0.4 us: the same microsecond
    path = _write(tmp_path / "ms.csv", [HEADER, *ms_rows])
    epoch_ms = ["data.identifiers.time_format=epoch_ms"]
    layout = TABLE._replace(time_format="epoch_ms")
    t = load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={path}", *epoch_ms]).data)
    ((ids, ts, values, _),) = table_chunks(path, CHANNELS, MappingCfg(), layout, 100)
    assert t.ts_ns.tolist() == ts.tolist() == plain[1].tolist() and ids == plain[0]
    np.testing.assert_array_equal(values, plain[2])
    np.testing.assert_array_equal(t.values, plain[2])
    ((_, by_mapping, _, _),) = table_chunks(path, CHANNELS, MappingCfg(time_format="epoch_ms"), TABLE, 100)
    assert by_mapping.tolist() == plain[1].tolist()
    half = _write(tmp_path / "half.csv", [HEADER, f"{cut[0][0]},1704067200000.5,{cut[0][2]}"])
    ((_, ts, _, _),) = table_chunks(half, CHANNELS, MappingCfg(), layout, 100)
    assert ts.tolist() == [1704067200000500000] == _prepare_as(half, epoch_ms).ts_ns.tolist()
    text_said = r"1 stamps are not numbers, e\.g\. \['01\.01\.2024 00:00'\]; expected every stamp in epoch " + (
        r"milliseconds \({}"
    )
    cases = (
        (
            "secs.csv",
            "1704067200",
            r"lie before 1990: epoch seconds\? set data\.identifiers\.time_format: null",
            r"lie before 1990: epoch seconds\? set mapping\.time_format: ISO8601",
        ),  # null there is the bundle's
        (
            "text.csv",
            "01.01.2024 00:00",
            text_said.format(r"data\.identifiers\.time_format: epoch_ms\)"),
            text_said.format(r"mapping\.time_format, or the bundle's table_identifiers\.time_format where"),
        ),
        ("empty.csv", "", r"1 empty \(or infinite\) timestamps", r"1 empty \(or infinite\) timestamps"),
    )
    for name, cell, prepare_said, replay_said in cases:
        bad = _write(tmp_path / name, [HEADER, *ms_rows[:2], f"{cut[2][0]},{cell},{cut[2][2]}"])
        with pytest.raises(InputError, match=prepare_said):
            _prepare_as(bad, epoch_ms)
        with pytest.raises(InputError, match=replay_said):
            list(table_chunks(bad, CHANNELS, MappingCfg(), layout, 100))
    with pytest.raises(InputError, match=r"epoch milliseconds: export epoch seconds\)"):  # the labels: no time_format
        parse_timestamps(pd.Series(["1704067200000"]), None, "labels.csv start")
    parquet = tmp_path / "ms.parquet"  # a Parquet column of pandas' nullable integers: a missing stamp is an empty one
    frame = pd.read_csv(path, dtype={c: float for c in CHANNELS})
    frame.assign(timestamp=frame["timestamp"].round().astype("Int64").mask(frame.index == 2)).to_parquet(parquet)
    with pytest.raises(InputError, match=r"column 'timestamp': 1 empty \(or infinite\) timestamps"):
        _prepare_as(parquet, [*epoch_ms, "data.format=parquet"])
    assert TABLE._replace(time_format="epoch_ms").describe([path]).endswith("stamps in column 'timestamp', epoch "
                                                                             "milliseconds")  # fmt: skip
    assert daemon_config_from_dict({"mapping": {"time_format": "epoch_ms"}}).mapping.time_format == "epoch_ms"
    with pytest.raises(ConfigError, match=r"or epoch_ms \(stamps in epoch milliseconds\), expected"):
        load_config(CONFIG, ["data.identifiers.time_format=epoch_us"])


def _prepare_as(path: Path, overrides: list[str]):
    """scada-prepare's reader on `path` with config `overrides`."""
    return load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={path}", *overrides]).data)


def test_a_folder_of_per_turbine_exports_replays_as_the_joined_table(tmp_path):
    """scada-prepare took a folder of files and replay said the folder "does not exist"."""
    (tmp_path / "farm").mkdir()
    rows = _rows()
    _write(tmp_path / "farm" / "WT01.csv", [HEADER, *rows[:6]])
    with gzip.open(tmp_path / "farm" / "WT02.csv.gz", "wt") as fh:
        fh.write("\n".join([HEADER, *rows[6:]]) + "\n")
    joined = _both(_write(tmp_path / "all.csv", [HEADER, *rows]))
    folder = _both(tmp_path / "farm")
    assert folder[0] == joined[0] and folder[1].tolist() == joined[1].tolist()


def test_file_faults_are_refused_by_both_with_the_file_named_and_the_fix(tmp_path):
    """A gzip cut short made scada-prepare print only "Aborted." (an EOFError taken for Ctrl-D), a plain file named
    .gz a traceback; Latin-1 and comment lines gave pandas' bare text. A quote opened and never closed swallowed
    the rest of the file into one cell: replay read the rows before it and stopped without a word (a large file:
    a csv.Error traceback)."""
    good = "\n".join([HEADER, *_rows()]) + "\n"
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(good.encode())[:-40])
    plain = tmp_path / "plain.csv.gz"
    plain.write_text(good)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(good.replace("status", "status \xb0C").encode("latin-1"))
    comments = _write(tmp_path / "comments.csv", ["# Kelmarsh export", "# turbine 1", HEADER, *_rows()])
    twice = _write(tmp_path / "twice.csv", [HEADER + ",power", *(r + ",1" for r in _rows())])
    rows = _rows()
    quote = _write(tmp_path / "quote.csv", [HEADER, *rows[:3], rows[3].rsplit(",", 1)[0] + ',"Stop', *rows[4:]])
    huge = _write(tmp_path / "huge.csv", [HEADER, *rows[:3], rows[3].rsplit(",", 1)[0] + ',"Stop', *[rows[4]] * 20000])
    cases = ((cut, r"cut\.csv\.gz: not a UTF-8 CSV file \(gzip\).*the file may be cut short"),
             (plain, r"plain\.csv\.gz: not a UTF-8 CSV file \(gzip\)"),
             (latin, r"latin\.csv: not a UTF-8 CSV file.*save it as UTF-8"),
             (comments, r"comments\.csv: columns .* not found.*comment lines \('#'\): set (data|mapping)\.csv"
                        r"\.skip_lines to the number of lines before the header"),
             (twice, r"twice\.csv: columns \['power'\] are named more than once"),
             (quote, r"quote\.csv: a cell from line 5 spans lines \(a quote opened and never closed\?\)"),
             (huge, r"huge\.csv: not a readable CSV file .*a quote opened and never closed"))  # fmt: skip
    for path, match in cases:
        for read in (_prepare, _replay):
            with pytest.raises(InputError, match=match):
                read(path)


def test_scada_prepare_names_what_is_wrong_in_a_column(tmp_path):
    """Epoch stamps with one repeated header row (files joined with cat) were all called "unparseable"; a channel of
    decimal commas failed later as "scaled features with no present training value"."""
    rows = _rows()
    path = _write(tmp_path / "cat.csv", [HEADER, *rows[:6], HEADER, *rows[6:]])
    with pytest.raises(InputError, match=r"1 stamps are not epoch seconds like the rest, e.g. \['timestamp'\]"):
        _prepare(path)
    with pytest.raises(InputError, match=r"1 bad timestamps.*\['timestamp'\]"):
        _replay(path)
    commas = [HEADER, *(",".join(r.split(",")[:3] + [f'"{i},5"'] + r.split(",")[4:]) for i, r in enumerate(rows))]
    with pytest.raises(InputError, match=r"column 'power' \(channel power\): none of its cells is a number.*'0,5'.*"
                                         "decimal comma"):  # fmt: skip
        _prepare(_write(tmp_path / "commas.csv", commas))


def test_an_unknown_time_zone_is_refused_when_the_config_is_read():
    """A misspelt zone was a ZoneInfoNotFoundError traceback from scada-prepare and from replay."""
    with pytest.raises(ConfigError, match="mapping.naive_timezone: unknown time zone 'Europe/Pari'"):
        daemon_config_from_dict({"mapping": {"naive_timezone": "Europe/Pari"}})
    with pytest.raises(ConfigError, match="data.identifiers.naive_timezone: unknown time zone 'Europe/Pari'"):
        load_config(CONFIG, ["data.identifiers.naive_timezone=Europe/Pari"])


def test_a_table_in_the_training_layout_replays_with_no_mapping(tmp_path):
    """A user's export with its own id and time columns and local stamps without an offset: scada-prepare reads it
    through data.identifiers, and replay, given no mapping, through what the bundle records of them (the
    exporter's `TableIdentifiers` of the training config): the same rows, stamps and values. runtime.yaml's
    mapping still wins for each part it sets. Until the twenty-second session runtime.yaml had to restate the id
    and time columns and the zone; a zone restated wrong shifted every stamp (a train/serve skew)."""
    lines = [HEADER.replace("turbine_id", "WTG").replace("timestamp", "Zeit"), *_rows()]
    local = [lines[0]] + [  # epoch seconds -> wall-clock time in Paris (CET, +01:00 in January), no offset
        ",".join([cells[0], pd.Timestamp(int(cells[1]), unit="s", tz="UTC").tz_convert("Europe/Paris")
                  .strftime("%Y-%m-%d %H:%M:%S"), *cells[2:]]) for cells in (line.split(",") for line in lines[1:])
    ]  # fmt: skip
    path = _write(tmp_path / "local.csv", local)
    ids = ["data.identifiers.turbine_id_col=WTG", "data.identifiers.time_col=Zeit",
           "data.identifiers.naive_timezone=Europe/Paris"]  # fmt: skip
    cfg = load_config(CONFIG, [f"data.paths.raw_dir={path}", *ids])
    prepared = load_raw_table(cfg.data)
    recorded = TableIdentifiers(**dataclasses.asdict(cfg.data.identifiers))  # what scada-export writes
    training = TableFormat(dict(cfg.data.columns), recorded.turbine_id_col, recorded.time_col, recorded.naive_timezone)
    parts = list(table_chunks(path, CHANNELS, MappingCfg(), training, 5))
    assert [i for p in parts for i in p[0]] == list(prepared.turbine_ids)
    assert np.concatenate([p[1] for p in parts]).tolist() == prepared.ts_ns.tolist()
    assert prepared.ts_ns[0] == 1704067200 * 10**9  # 01:00 in Paris is midnight UTC
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), prepared.values)
    utc = MappingCfg(naive_timezone="UTC")  # runtime.yaml's zone wins: an hour later, the columns still the bundle's
    ((_, ts, _, _),) = table_chunks(path, CHANNELS, utc, training, 100)
    assert (ts - prepared.ts_ns).tolist() == [3600 * 10**9] * len(ts)
    with pytest.raises(InputError, match="columns \\['turbine_id'\\] not found.*unset, the training table's"):
        list(table_chunks(path, CHANNELS, MappingCfg(turbine_id_col="turbine_id"), training, 100))


def test_a_float32_parquet_table_reads_as_its_csv_export(tmp_path):
    """scada-prepare read a float32 Parquet column as 4.449999809, the CSV that replay is told to convert it to
    (and a telemetry payload) as 4.45."""
    df = pd.read_csv(_write(tmp_path / "a.csv", [HEADER, *_rows()]), dtype={"turbine_id": str})
    df[list(CHANNELS)] = df[list(CHANNELS)].astype(np.float32)
    df.to_parquet(tmp_path / "a.parquet", index=False)
    df.to_csv(tmp_path / "b.csv", index=False)  # what replay's refusal of Parquet tells the user to run
    parquet = _prepare(tmp_path / "a.parquet")
    np.testing.assert_array_equal(parquet.values, _replay(tmp_path / "b.csv")[2])
    assert parquet.values[0, 0] == float(df.iloc[0, 2].astype(str))


def test_replay_refuses_a_channel_of_decimal_commas_as_scada_prepare_does(signal_run, tiny_run, tmp_path):
    """scada-prepare refuses a channel whose cells are all text. Replay read it as missing and scored the whole
    table (the thirteenth session's summary named the channel at the end). It reads the whole table before it
    scores a row, so it now gives the same refusal, with the column, a cell and the hint, and writes no record."""
    from scada_tcn.runtime.bundle import load_bundle
    from scada_tcn.runtime.engine import Engine
    from scada_tcn.runtime.replay import replay
    from scada_tcn.runtime.stream import StreamScorer
    from tests.mosquitto import read_slice, write_csv

    header, body = read_slice(tiny_run.synth_dir / "scada.csv", "2024-01-28T00:00:00Z", "2024-01-29T00:00:00Z")
    j = header.index("power")

    def comma(cell: str) -> str:  # 812.5 -> 812,5 and 0 -> 0,0: a decimal comma in every cell
        return cell and (cell.replace(".", ",") if "." in cell else cell + ",0")

    rows = [r[:j] + [comma(r[j])] + r[j + 1 :] for r in body]
    path = write_csv(tmp_path / "commas.csv", header, rows)
    bundle = load_bundle(signal_run[0])
    engine = Engine(bundle, StreamScorer.from_bundle(bundle), 0.0, 100, 512)
    out = tmp_path / "scores.jsonl"
    with pytest.raises(InputError) as replayed:
        replay(engine, path, MappingCfg(), out, chunk_rows=7)  # the text in every chunk
    with pytest.raises(InputError) as prepared:
        _prepare(path)
    text = [r[j] for r in rows if r[j]]
    said = f"column 'power' (channel power): none of its cells is a number ({len(text)} text cells, e.g. {text[0]!r})"
    for e, key in ((replayed.value, "mapping.csv.decimal"), (prepared.value, "data.csv.decimal")):
        assert said + f" (a decimal comma? set {key} to ',')" in str(e)
    assert "mapping.columns" in str(replayed.value) and "data.columns" in str(prepared.value)
    assert not out.exists() and len(engine.fleet) == 0  # refused before a row was fed: no output, no partial one
    assert not list(tmp_path.glob("*.partial"))
    engine = Engine(bundle, StreamScorer.from_bundle(bundle), 0.0, 100, 512)  # one number in the column: refused
    k = next(i for i, r in enumerate(rows) if r[j])  # too, since the thirtieth session: the commas would be lost
    rows[k][j] = "812.5"
    one = write_csv(tmp_path / "one.csv", header, rows)
    with pytest.raises(InputError, match=r"are numbers written with the decimal mark ',', but the table is read "
                                         r"with '\.' \(mapping\.csv\.decimal\)"):  # fmt: skip
        replay(engine, one, MappingCfg(), out, chunk_rows=7)
    with pytest.raises(InputError, match=r"are numbers written with the decimal mark ','.*\(data\.csv\.decimal\)"):
        _prepare(one)
    assert not out.exists()


def _dialect_lines(lines: list[str], delimiter: str, decimal: str, preamble: list[str]) -> list[str]:
    """`lines` (comma-separated, '.' decimals) as an exporter of another dialect writes them."""
    out = []
    for line in lines:
        cells = line.split(",")
        out.append(delimiter.join(c.replace(".", decimal) if re.fullmatch(r"[-+]?\d*\.\d+", c) else c for c in cells))
    return [*preamble, *out]


GREENBYTE = ["# This file was exported by Greenbyte at 2022-01-27 10:33:05. Please see https://www.greenbyte.com",
             "#", "# Turbine: Kelmarsh 1", "# Turbine type: Senvion MM92", "# Time zone: UTC",
             "# Time interval: 2016-01-01 00:00:00 - 2017-01-01 00:00:00 (366 days)", "#",
             '# Data that is missing or is erroneous has been marked with the value "NaN', "#"]  # fmt: skip


def _read_as(path: Path, delimiter: str, decimal: str, skip: int) -> tuple:
    """Both readers on `path` with the dialect set (data.csv; the bundle's table_csv for replay), checked alike."""
    cfg = load_config(CONFIG, [f"data.paths.raw_dir={path}", f"data.csv.delimiter={json.dumps(delimiter)}",
                               f"data.csv.decimal='{decimal}'", f"data.csv.skip_lines={skip}"])  # fmt: skip
    t = load_raw_table(cfg.data)
    training = TABLE._replace(dialect=CsvDialect(delimiter, decimal, skip, "mapping.csv"))
    parts = list(table_chunks(path, CHANNELS, MappingCfg(), training, 5))
    ids, ts, values = ([i for p in parts for i in p[0]], np.concatenate([p[1] for p in parts]),
                       np.concatenate([p[2] for p in parts]))  # fmt: skip
    assert list(t.turbine_ids) == ids and t.ts_ns.tolist() == ts.tolist()
    np.testing.assert_array_equal(t.values, values)
    return ids, ts, values


def test_exports_in_other_csv_dialects_read_as_the_plain_csv(tmp_path):
    """European SCADA exports are ';'-separated with decimal commas (ENGIE's own La Haute Borne download), others
    tab-separated, and Greenbyte's (Kelmarsh, Penmanshiel) open with lines of metadata before the header. Both
    readers refused them ("save it comma-separated", "remove them"): the user had to rewrite a year of files.
    data.csv (and, for replay, the bundle's table_csv) now reads each as the plain file: the same rows, stamps and
    values, bit for bit."""
    rows = [HEADER, *_rows()]
    plain = _both(_write(tmp_path / "plain.csv", rows))
    for name, delimiter, decimal, preamble in (
        ("semi.csv", ";", ",", []),
        ("tab.csv", "\t", ".", GREENBYTE),
        ("semi_pre.csv", ";", ",", GREENBYTE),
        ("pipe.csv", "|", ",", ["x"]),
    ):
        path = _write(tmp_path / name, _dialect_lines(rows, delimiter, decimal, preamble))
        got = _read_as(path, delimiter, decimal, len(preamble))
        assert got[0] == plain[0] and got[1].tolist() == plain[1].tolist(), name
        np.testing.assert_array_equal(got[2], plain[2])


def test_a_preamble_counts_in_line_numbers_and_a_wrong_dialect_is_named(tmp_path):
    """Line numbers in refusals count the skipped lines (the line an editor shows); a file read with the wrong
    separator, or with its preamble not skipped, is refused naming the setting that reads it."""
    lines = _dialect_lines([HEADER, *_rows()], ";", ",", GREENBYTE)
    lines[12] = lines[12] + ";STOP;manual"  # the third data line
    path = _write(tmp_path / "semi.csv", lines)
    with pytest.raises(InputError, match=r"semi\.csv: line 13 has 17 cells where the header has 15"):
        _read_as(path, ";", ",", len(GREENBYTE))
    semi = _write(tmp_path / "s.csv", _dialect_lines([HEADER, *_rows()], ";", ",", []))
    with pytest.raises(InputError, match=r"separated by ';' \(semicolon\): set data\.csv\.delimiter to ';'"):
        _prepare(semi)
    with pytest.raises(InputError, match=r"separated by ';' \(semicolon\): set mapping\.csv\.delimiter to ';'"):
        _replay(semi)
    tab = _write(tmp_path / "t.csv", _dialect_lines([HEADER, *_rows()], "\t", ".", GREENBYTE))
    with pytest.raises(InputError, match=r"comment lines \('#'\): set data\.csv\.skip_lines"):
        _prepare(tab)
    with pytest.raises(InputError, match=r"t\.csv: no header after the 22 lines skipped \(data\.csv\.skip_lines is 40"):
        _read_as(tab, "\t", ".", 40)


def test_decimal_commas_read_as_numbers_and_a_point_is_text_there():
    """With decimal ',' a '.' groups thousands: "1.234,5" and "1.5" are text (counted), not 1.2345 and 1.5, which
    would be 1,000 times off or a misread column; without it, "1,5" stays text as before."""
    cells = ["1,5", "-2,0e3", "1.234,5", "1.5", "", " 7 ", "inf", "x"]
    values, bad = parse_numbers(cells, ",")
    np.testing.assert_array_equal(values, [1.5, -2000.0, np.nan, np.nan, np.nan, 7.0, np.nan, np.nan])
    assert bad == 3 and [is_number(c, ",") for c in cells] == [True, True, False, False, False, True, True, False]
    values, bad = parse_numbers(cells)
    np.testing.assert_array_equal(values, [np.nan, np.nan, np.nan, 1.5, np.nan, 7.0, np.nan, np.nan])
    assert bad == 4 and first_text(cells, ",") == "1.234,5" and first_text(cells) == "1,5"


def test_a_dialect_that_cannot_be_read_is_refused_where_it_is_set(tmp_path):
    """A decimal comma in a comma-separated file cannot be told from the separator; other separators, decimal
    marks and negative line counts are typos. Each is refused naming its key, before a file is read."""
    for override, said in (("data.csv.decimal=','", "data.csv: decimal ',' needs another delimiter"),
                           ("data.csv.decimal=,", "override 'data.csv.decimal=,': its value is not a YAML value"),
                           ("data.csv.delimiter=|", "got '' (in YAML quote it: '|')"),
                           ("data.csv.delimiter=' '", "data.csv.delimiter: one of [',', ';', '\\t', '|'] expected"),
                           ("data.csv.skip_lines=-1", "data.csv.skip_lines: a whole number of lines"),
                           ("data.csv.sep=;", "sep")):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(said)):
            load_config(CONFIG, [override])
    for section, said in (({"delimiter": " "}, "mapping.csv.delimiter: one of"),
                          ({"decimal": ","}, None), ({"decimal": ",", "delimiter": ","}, "needs another delimiter"),
                          ({"skip_lines": 2000}, "mapping.csv.skip_lines: a whole number of lines from 0 to 1000"),
                          ({"sep": ";"}, "mapping.csv: unknown keys ['sep']")):  # fmt: skip
        if said is None:
            daemon_config_from_dict({"mapping": {"csv": section}})
            continue
        with pytest.raises(ConfigError, match=re.escape(said)):
            daemon_config_from_dict({"mapping": {"csv": section}})
    path = _write(tmp_path / "a.csv", [HEADER, *_rows()])
    commas = MappingCfg(csv=CsvMappingCfg(decimal=","))  # with the training table's ',' separator: refused
    with pytest.raises(InputError, match=r"mapping\.csv \(unset parts: the training table's.*: decimal ','"):
        list(table_chunks(path, CHANNELS, commas, TABLE, 5))


def test_a_replay_of_an_export_in_another_dialect_publishes_the_plain_tables_records(signal_run, tiny_run, tmp_path):
    """The whole replay, not only its reader: a day of the farm written ';'-separated with decimal commas and a
    Greenbyte preamble, replayed with runtime.yaml's mapping.csv, writes the plain CSV's records byte for byte."""
    from scada_tcn.runtime.bundle import load_bundle
    from scada_tcn.runtime.engine import Engine
    from scada_tcn.runtime.replay import replay
    from scada_tcn.runtime.stream import StreamScorer
    from tests.mosquitto import read_slice, write_csv

    header, body = read_slice(tiny_run.synth_dir / "scada.csv", "2024-01-28T00:00:00Z", "2024-01-29T00:00:00Z")
    plain = write_csv(tmp_path / "plain.csv", header, body)
    semi = _write(tmp_path / "semi.csv", _dialect_lines(plain.read_text().splitlines(), ";", ",", GREENBYTE))
    bundle = load_bundle(signal_run[0])
    mapping = MappingCfg(csv=CsvMappingCfg(delimiter=";", decimal=",", skip_lines=len(GREENBYTE)))
    outs = []
    for path, m in ((plain, MappingCfg()), (semi, mapping)):
        engine = Engine(bundle, StreamScorer.from_bundle(bundle), 0.0, 100, 512)
        outs.append(tmp_path / f"{path.stem}.jsonl")
        summary = replay(engine, path, m, outs[-1], chunk_rows=50)
        assert summary["scores"] > 100 and not any(summary["non_numeric"].values())
    assert outs[0].read_bytes() == outs[1].read_bytes()


def _greenbyte_folder(folder: Path, rows: list[str]) -> Path:
    """The farm as Greenbyte exports it (Kelmarsh, Penmanshiel): one file per turbine and period, named after the
    turbine, its 9 preamble lines, a header whose first name is '# Date and time', naive UTC stamps, no id
    column. Each turbine's rows are split over two files (two periods)."""
    folder.mkdir()
    names = HEADER.split(",")[2:]
    for n, tid in enumerate(sorted({r.split(",")[0] for r in rows})):
        mine = [r.split(",") for r in rows if r.split(",")[0] == tid]
        for k, part in enumerate((mine[:4], mine[4:])):
            body = [",".join([pd.Timestamp(int(c[1]), unit="s").strftime("%Y-%m-%d %H:%M:%S"), *c[2:]]) for c in part]
            name = f"Turbine_Data_Kelmarsh_{n + 1}_{2016 + k}-01-01_-_{2017 + k}-01-01_{228 + n}.csv"
            _write(folder / name, [*GREENBYTE, ",".join(["# Date and time", *names]), *body])
    return folder


def test_per_turbine_files_named_after_their_turbine_read_as_the_joined_table(tmp_path):
    """Greenbyte's exports have no turbine-id column: the turbine is in the file name. Both readers needed one
    (replay: "columns ['turbine_id'] not found"), so the user had to rewrite every file.
    data.identifiers.turbine_id_from_file takes the id from each file's name (the bundle records it for replay):
    the folder reads as the joined table, turbine by turbine, stamp by stamp, value by value."""
    rows = _rows()
    plain = _both(_write(tmp_path / "all.csv", [HEADER, *rows]))
    folder = _greenbyte_folder(tmp_path / "kelmarsh", rows)
    pattern = r"Turbine_Data_(Kelmarsh_\d+)_"
    ids = ["data.identifiers.turbine_id_col=null", f"data.identifiers.turbine_id_from_file='{pattern}'",
           "data.identifiers.time_col='# Date and time'", "data.identifiers.naive_timezone=UTC"]  # fmt: skip
    cfg = load_config(CONFIG, [f"data.paths.raw_dir={folder}", "data.csv.skip_lines=9", *ids])
    t = load_raw_table(cfg.data)
    training = TableFormat(TABLE.columns, None, "# Date and time", "UTC", CsvDialect(",", ".", 9), pattern)
    parts = list(table_chunks(folder, CHANNELS, MappingCfg(), training, 3))
    named = {"WT01": "Kelmarsh_1", "WT02": "Kelmarsh_2"}
    assert list(t.turbine_ids) == [i for p in parts for i in p[0]] == [named[i] for i in plain[0]]
    assert t.ts_ns.tolist() == np.concatenate([p[1] for p in parts]).tolist() == plain[1].tolist()
    np.testing.assert_array_equal(t.values, plain[2])
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), plain[2])
    assert table_format(cfg.data).describe(t.files) == (  # the prepare summary's first line
        "4 files; CSV separated by ',', decimal mark '.', 9 lines skipped before the header; turbine ids from the "
        f"file names by '{pattern}'; stamps in column '# Date and time', ISO-8601 or epoch seconds, naive ones in UTC"
    )
    (folder / "notes.csv").write_text("\n".join([*GREENBYTE, "# Date and time,x"]) + "\n")
    for read, key in (
        (lambda: load_raw_table(cfg.data), "data.identifiers.turbine_id_from_file"),
        (lambda: list(table_chunks(folder, CHANNELS, MappingCfg(), training, 3)), "mapping."),
    ):
        with pytest.raises(InputError, match=rf"notes\.csv: .*{re.escape(key)}.* finds no turbine id in the file name"):
            read()
    (folder / "notes.csv").unlink()
    by_column = MappingCfg(turbine_id_col="turbine_id")  # runtime.yaml's column wins over the pattern
    with pytest.raises(InputError, match=r"columns \['turbine_id'\] not found"):
        list(table_chunks(folder, CHANNELS, by_column, training, 3))


def test_the_turbine_id_comes_from_one_place(tmp_path):
    """A column and a file-name pattern at once, neither, or a pattern that is not one: refused naming the keys."""
    for overrides, said in (([], None), (["data.identifiers.turbine_id_from_file=x"], "set turbine_id_col (a column"),
                            (["data.identifiers.turbine_id_col=null"], "set turbine_id_col (a column"),
                            (["data.identifiers.turbine_id_col=null", "data.identifiers.turbine_id_from_file='(a)(b)'"],
                             "turbine_id_from_file: '(a)(b)' has 2 groups")):  # fmt: skip
        if said is None:
            load_config(CONFIG, overrides)
            continue
        with pytest.raises(ConfigError, match=re.escape(said)):
            load_config(CONFIG, overrides)
    with pytest.raises(ConfigError, match="mapping: set turbine_id_col or turbine_id_from_file, not both"):
        daemon_config_from_dict({"mapping": {"turbine_id_col": "a", "turbine_id_from_file": "b"}})
    with pytest.raises(ConfigError, match=r"mapping.turbine_id_from_file: '\[' is not a regular expression"):
        daemon_config_from_dict({"mapping": {"turbine_id_from_file": "["}})


def test_day_first_stamps_read_with_a_time_format_as_the_epoch_table(tmp_path):
    """Day-first exports (`09.08.2017 10:10`, `09/08/2017`) were refused by both readers ("export ISO-8601"):
    a month and a day cannot be told apart without being told. data.identifiers.time_format (the bundle's, or
    runtime.yaml's mapping.time_format, for replay) reads every stamp by one strptime format, local times in
    the naive zone as before: the same instants as the epoch stamps, by one function in both readers. A stamp of
    another form, and an hour that a DST change repeats, are refused by both naming the key."""
    rows = _rows()
    plain = _both(_write(tmp_path / "epoch.csv", [HEADER, *rows]))

    def table(name: str, fmt: str, zone: str | None) -> Path:
        def stamp(cells: list[str]) -> str:
            t = pd.Timestamp(int(cells[1]), unit="s", tz="UTC")
            return (t if zone is None else t.tz_convert(zone)).strftime(fmt)

        return _write(tmp_path / name, [HEADER, *(",".join([c[0], stamp(c), *c[2:]]) for c in
                                                    (r.split(",") for r in rows))])  # fmt: skip

    for name, fmt, zone in (("paris.csv", "%d.%m.%Y %H:%M", "Europe/Paris"), ("utc.csv", "%d/%m/%Y %H:%M:%S", "UTC"),
                            ("offset.csv", "%d/%m/%Y %H:%M%z", None)):  # fmt: skip
        path = table(name, fmt, zone or "Europe/Paris")
        assert "+0100" in path.read_text() if zone is None else True
        ident = [f"data.identifiers.time_format='{fmt}'", f"data.identifiers.naive_timezone={zone or 'null'}"]
        t = load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={path}", *ident]).data)
        ((ids, ts, values, _),) = table_chunks(path, CHANNELS, MappingCfg(), TABLE._replace(
            naive_timezone=zone, time_format=fmt), 100)  # fmt: skip
        assert t.ts_ns.tolist() == ts.tolist() == plain[1].tolist(), name
        np.testing.assert_array_equal(values, plain[2])
    path = table("paris.csv", "%d.%m.%Y %H:%M", "Europe/Paris")
    text = path.read_text().replace("01.01.2024 01:10", "2024-01-01T00:10:00Z")
    path.write_text(text)
    fmt = ["data.identifiers.time_format='%d.%m.%Y %H:%M'", "data.identifiers.naive_timezone=Europe/Paris"]
    with pytest.raises(InputError, match=r"2 bad timestamps.*'2024-01-01T00:10:00Z'.*written as '%d\.%m\.%Y "
                                         r"%H:%M' \(data\.identifiers\.time_format\)"):  # fmt: skip
        load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={path}", *fmt]).data)
    layout = TABLE._replace(naive_timezone="Europe/Paris", time_format="%d.%m.%Y %H:%M")
    with pytest.raises(InputError, match=r"'2024-01-01T00:10:00Z'.*\(mapping\.time_format, or the bundle's table_"):
        list(table_chunks(path, CHANNELS, MappingCfg(), layout, 100))
    dst = _write(tmp_path / "dst.csv", [HEADER, rows[0].replace("1704067200", "29.10.2017 02:30")])
    assert load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={dst}", *fmt]).data).repeated_hour_dropped == [
        "WT01 29.10.2017 02:30"
    ]  # one row at a repeated time: no order places it (see the test below)
    with pytest.raises(InputError, match=r"1 rows at local times the DST change in Europe/Paris repeats.*'WT01 "
                                         r"29\.10\.2017 02:30'.*UTC offset"):  # fmt: skip
        list(table_chunks(dst, CHANNELS, MappingCfg(), layout, 100))
    skipped = _write(tmp_path / "skipped.csv", [HEADER, rows[0].replace("1704067200", "26.03.2017 02:30")])
    with pytest.raises(InputError, match=r"nonexistent_local_time.*DST change in Europe/Paris skips.*data\.ident.*"
                                         r"standard time all year.*Etc/GMT-1 for UTC\+1"):  # fmt: skip
        load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={skipped}", *fmt]).data)
    with pytest.raises(InputError, match=r"nonexistent_local_time.*DST change in Europe/Paris skips.*mapping\.naive"
                                         r".*Etc/GMT-1"):  # fmt: skip
        list(table_chunks(skipped, CHANNELS, MappingCfg(), layout, 100))
    with pytest.raises(ConfigError, match="data.identifiers.time_format: '%d.%m.%Y' does not hold the year"):
        load_config(CONFIG, ["data.identifiers.time_format='%d.%m.%Y'"])
    with pytest.raises(ConfigError, match="mapping.time_format: a strptime format"):
        daemon_config_from_dict({"mapping": {"time_format": "dd.mm.yyyy"}})
    iso = daemon_config_from_dict({"mapping": {"time_format": "ISO8601"}}).mapping  # back to the default reading
    ((_, ts, _, _),) = table_chunks(tmp_path / "epoch.csv", CHANNELS, iso, layout, 100)
    assert ts.tolist() == plain[1].tolist()


def test_what_a_review_of_the_reading_options_found(tmp_path):
    """A review drove both readers with about 1,500 random files in the new dialects: they never differed, but
    these were a traceback, a silent gap, or a refusal that did not name the setting to fix."""
    header = "turbine_id;timestamp;" + ";".join(CHANNELS)
    empty = _write(tmp_path / "empty.csv", [header])  # a header and no rows, decimal commas: a numpy ValueError
    semi = ["data.csv.delimiter=';'", "data.csv.decimal=','"]
    assert len(load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={empty}", *semi]).data).ts_ns) == 0
    assert not list(table_chunks(empty, CHANNELS, MappingCfg(), TABLE._replace(dialect=CsvDialect(";", ",")), 10))
    for overrides, said in ((["data.identifiers.turbine_id_col=null", "data.identifiers.turbine_id_from_file=''"],
                             "data.identifiers.turbine_id_from_file: a regular expression expected, got ''"),
                            (["data.identifiers.time_format='%Y-%m-%d %H:%M %Z'"], "%Z is not supported"),
                            (["data.identifiers.time_format=ISO"], "(null: ISO-8601 or epoch seconds)")):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(said)):
            load_config(CONFIG, overrides)
    for section in ({"delimiter": ""}, {"decimal": ""}):  # YAML's bare | is ''; it was taken for unset
        with pytest.raises(ConfigError, match=r"mapping\.csv\.(delimiter|decimal)"):
            daemon_config_from_dict({"mapping": {"csv": section}})
    point = _write(tmp_path / "point.csv", [HEADER.replace(",", ";"), *(r.replace(",", ";") for r in _rows())])
    with pytest.raises(InputError, match=r"e\.g\. '\d+\.\d+'\) \(a decimal point\? set data\.csv\.decimal to '\.'\)"):
        _read_as(point, ";", ",", 0)
    day_first = _write(tmp_path / "day.csv", [HEADER, *(r.replace(r.split(",")[1], "09.08.2017 10:10") for r in
                                                        _rows(1))])  # fmt: skip
    with pytest.raises(InputError, match=r"day-first dates: set data\.identifiers\.time_format"):
        _prepare(day_first)
    with pytest.raises(InputError, match=r"day-first dates: set mapping\.time_format"):
        _replay(day_first)
    far = _write(tmp_path / "far.csv", [HEADER, *(r.replace(r.split(",")[1], "01.01.2300 00:00") for r in _rows(1))])
    layout = TABLE._replace(naive_timezone="UTC", time_format="%d.%m.%Y %H:%M")
    with pytest.raises(InputError, match=r"\[.out_of_range.\].*stamps must lie within") as e:
        list(table_chunks(far, CHANNELS, MappingCfg(), layout, 10))
    assert "written as" not in str(e.value)
    over = _write(tmp_path / "over.csv", ["# one line", HEADER, *_rows()])
    with pytest.raises(InputError, match=r"its header holds numbers: is data\.csv\.skip_lines \(now 2\) more"):
        _read_as(over, ",", ".", 2)
    assert turbine_id_problem("T1\n") is not None  # '$' matched before a final newline


def test_a_column_of_numbers_with_cells_of_the_other_decimal_mark_is_refused_by_both(signal_run, tiny_run, tmp_path):
    """A '.'-decimal export read with decimal ',' (or the reverse) kept its whole numbers and lost every fractional
    cell, silently but for a count. A column holding numbers and a cell that is a number with the other mark (not
    three digits after it, which thousands grouping could be) is refused by both readers, naming the setting, and
    replay writes no record."""
    from scada_tcn.runtime.bundle import load_bundle
    from scada_tcn.runtime.engine import Engine
    from scada_tcn.runtime.replay import replay
    from scada_tcn.runtime.stream import StreamScorer
    from tests.mosquitto import read_slice

    header, body = read_slice(tiny_run.synth_dir / "scada.csv", "2024-01-28T00:00:00Z", "2024-01-29T00:00:00Z")
    path = _write(tmp_path / "semi.csv", [";".join(header), *(";".join(r) for r in body)])  # '.' decimals
    said = (
        r"cells such as '-?\d+\.\d{1,2}' are numbers written with the decimal mark '\.', but the table is read with ','"
    )
    with pytest.raises(InputError, match=said + r" \(data\.csv\.decimal\)"):
        load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={path}", "data.csv.delimiter=';'",
                                            "data.csv.decimal=','"]).data)  # fmt: skip
    bundle = load_bundle(signal_run[0])
    engine = Engine(bundle, StreamScorer.from_bundle(bundle), 0.0, 100, 512)
    out = tmp_path / "scores.jsonl"
    with pytest.raises(InputError, match=said + r" \(mapping\.csv\.decimal\)"):
        replay(engine, path, MappingCfg(csv=CsvMappingCfg(delimiter=";", decimal=",")), out, chunk_rows=7)
    assert not out.exists() and len(engine.fleet) == 0
    rows = [f"WT01;{1704067200 + 600 * i};" + ";".join([cell] + ["7,5"] * (len(CHANNELS) - 1))
            for i, cell in enumerate(("1.234", "7,5"))]  # fmt: skip
    grouped = _write(tmp_path / "grouped.csv", [HEADER.replace(",", ";"), *rows])
    t = _read_as(grouped, ";", ",", 0)  # '1.234' may be thousands grouping: text (missing), counted, not refused
    assert np.isnan(t[2][0, 0]) and t[2][1, 0] == t[2][0, 1] == 7.5


def test_exports_in_other_text_encodings_read_as_the_plain_csv(tmp_path):
    """Windows exports are often cp1252 ('°C' in a header is one byte, 0xB0), some tools write UTF-16: both
    readers refused them ("not a UTF-8 CSV file; save it as UTF-8"). data.csv.encoding (the bundle's table_csv,
    runtime.yaml's mapping.csv.encoding) reads them as the plain table; a wrong one is refused naming the key."""
    rows = [HEADER + ",Gondeltemperatur (°C)", *(r + ",21.5" for r in _rows())]  # a column no channel maps
    plain = _both(_write(tmp_path / "plain.csv", [HEADER, *_rows()]))
    for name, encoding, delimiter in (("windows.csv", "cp1252", ";"), ("wide.csv", "utf-16", "\t")):
        path = tmp_path / name
        path.write_bytes(("\n".join(_dialect_lines(rows, delimiter, ",", [])) + "\n").encode(encoding))
        cfg = load_config(CONFIG, [f"data.paths.raw_dir={path}", f"data.csv.delimiter={json.dumps(delimiter)}",
                                   "data.csv.decimal=','", f"data.csv.encoding={encoding}"])  # fmt: skip
        t = load_raw_table(cfg.data)
        layout = TABLE._replace(dialect=CsvDialect(delimiter, ",", 0, "mapping.csv", encoding))
        ((ids, ts, values, _),) = table_chunks(path, CHANNELS, MappingCfg(), layout, 100)
        assert list(t.turbine_ids) == ids == plain[0] and t.ts_ns.tolist() == ts.tolist() == plain[1].tolist()
        np.testing.assert_array_equal(t.values, plain[2])
        np.testing.assert_array_equal(values, plain[2])
    windows = tmp_path / "windows.csv"
    with pytest.raises(InputError, match=r"windows\.csv: not a UTF-8 CSV file.*set data\.csv\.encoding to its "
                                         r"encoding \(Windows exports: cp1252\)"):  # fmt: skip
        load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={windows}", "data.csv.delimiter=';'",
                                            "data.csv.decimal=','"]).data)  # fmt: skip
    with pytest.raises(InputError, match=r"set mapping\.csv\.encoding"):
        list(table_chunks(windows, CHANNELS, MappingCfg(), TABLE._replace(dialect=CsvDialect(";", ",")), 100))
    with pytest.raises(ConfigError, match="data.csv.encoding: a text encoding such as"):
        load_config(CONFIG, ["data.csv.encoding=rot13"])
    with pytest.raises(ConfigError, match="mapping.csv.encoding: a text encoding such as"):
        daemon_config_from_dict({"mapping": {"csv": {"encoding": "nope"}}})


def _local_table(path: Path, rows: list[str], fmt: str, order: str = "turbine", zone: str = "Europe/Paris") -> Path:
    """`rows` (epoch-second stamps) written with local times of `zone` in the strptime format `fmt`, by turbine
    (each turbine's rows together) or by time (every turbine's row of a stamp together)."""
    cut = [r.split(",", 2) for r in rows]
    if order == "time":
        cut.sort(key=lambda c: int(c[1]))
    local = [pd.Timestamp(int(b), unit="s", tz="UTC").tz_convert(zone).strftime(fmt) for _, b, _ in cut]
    return _write(path, [HEADER, *(f"{a},{t},{c}" for (a, _, c), t in zip(cut, local))])


def _sorted(ids, ts, values) -> tuple:
    """A reader's rows by turbine and time (replay yields the rows of a repeated hour last)."""
    order = np.lexsort((ts, np.asarray(ids)))
    return [ids[i] for i in order.tolist()], np.asarray(ts)[order].tolist(), np.asarray(values)[order]


def test_local_times_the_autumn_change_repeats_are_placed_by_each_turbines_row_order(tmp_path):
    """A local-time export over an autumn DST change writes 02:00-02:50 twice (Europe/Paris, 29 Oct 2017). Both
    readers refused the whole table ("export with a UTC offset"). Each turbine's rows are now read in file order:
    the first occurrence until its clock steps back, the second from there (`runtime.stamps.place_repeated`, one
    function for scada-prepare and replay): the same instants and values as the table in epoch seconds, whether
    the file runs turbine by turbine or time by time, ISO or day-first, chunks cutting the hour or not. Rows that
    order cannot place (a turbine that sent one of the two hours, or an export sorted by its local stamp text)
    are left out by both alike, counted and named."""
    start = 1509228000 - 2 * 86400  # 2017-10-26 22:00Z: 00:00 local, two days and two hours before the first 02:00
    rows = [",".join([tid, str(start + 600 * i), *(f"{(t * 7 + i * 3 + j) % 19 + 0.5:.2f}" for j in range(len(
        CHANNELS)))]) for t, tid in enumerate(("WT01", "WT02", "WT03")) for i in range(360)]  # fmt: skip
    plain = _sorted(*_both(_write(tmp_path / "epoch.csv", [HEADER, *rows])))
    paris = ["data.identifiers.naive_timezone=Europe/Paris"]

    def both(path: Path, fmt: str | None, chunk: int) -> tuple[tuple, tuple, list[str], list[str]]:
        ident = paris + ([f"data.identifiers.time_format='{fmt}'"] if fmt else [])
        t = load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={path}", *ident]).data)
        left_out = LeftOut()
        layout = TABLE._replace(naive_timezone="Europe/Paris", time_format=fmt)
        parts = list(table_chunks(path, CHANNELS, MappingCfg(), layout, chunk, left_out))
        replayed = ([i for p in parts for i in p[0]], np.concatenate([p[1] for p in parts]),
                    np.concatenate([p[2] for p in parts]))  # fmt: skip
        return (
            _sorted(t.turbine_ids.tolist(), t.ts_ns, t.values),
            _sorted(*replayed),
            t.repeated_hour_dropped,
            left_out.rows,
        )

    for fmt in (None, "%d.%m.%Y %H:%M"):
        for order in ("turbine", "time"):
            for chunk in (7, 1000):
                path = _local_table(tmp_path / f"{order}.csv", rows, fmt or "%Y-%m-%d %H:%M:%S", order)
                assert "29.10.2017 02:10" in path.read_text() or "2017-10-29 02:10:00" in path.read_text()
                prepared, replayed, dropped_p, dropped_r = both(path, fmt, chunk)
                assert dropped_p == dropped_r == []
                for got in (prepared, replayed):
                    assert got[0] == plain[0] and got[1] == plain[1], (fmt, order, chunk)
                    np.testing.assert_array_equal(got[2], plain[2])

    # WT02 sent only the first of the two hours; WT03's rows of the hour come sorted by their stamp text
    first_at, second_at = 1509235200, 1509238800  # 02:00 CEST (00:00Z), 02:00 CET (01:00Z) on 29 October
    gone = [r for r in rows if r.startswith("WT02") and second_at <= int(r.split(",")[1]) < second_at + 3600]
    kept = [r for r in rows if r not in gone]
    path = _local_table(tmp_path / "gaps.csv", kept, "%Y-%m-%d %H:%M:%S")
    lines = path.read_text().splitlines()
    wt03 = [i for i, line in enumerate(lines) if line.startswith("WT03,2017-10-29 02:")]
    lines[wt03[0] : wt03[-1] + 1] = sorted(lines[i] for i in wt03)  # 02:00, 02:00, 02:10, 02:10, ...
    _write(path, lines)
    prepared, replayed, dropped_p, dropped_r = both(path, None, 5)
    hour = [f"2017-10-29 02:{m}0:00" for m in range(6)]
    assert dropped_p == dropped_r == [f"WT02 {h}" for h in hour] + [f"WT03 {h}" for h in hour for _ in (0, 1)]
    left = [(i, t) for i, t in zip(*plain[:2])
            if not (i == "WT03" and first_at <= t // 10**9 < second_at + 3600)
            and not (i == "WT02" and first_at <= t // 10**9 < second_at + 3600)]  # fmt: skip
    for got in (prepared, replayed):
        assert list(zip(got[0], got[1])) == left
    summary = format_summary_of(tmp_path, path)
    assert "rows left out: 18 at local times the autumn DST change repeats" in summary and "WT02 2017-10-29" in summary
    said = r"18 rows at local times the DST change in Europe/Paris repeats, which their turbine's row order does not"
    with pytest.raises(InputError, match=said + r" place, e\.g\. \['WT02 2017-10-29 02:00:00'"):
        list(table_chunks(path, CHANNELS, MappingCfg(), TABLE._replace(naive_timezone="Europe/Paris"), 5))
    # clocks on standard time all year (no repeated hour, a skipped one kept): read as Europe/Paris, every row of
    # that hour is left out and the summer is an hour off; the summary says what to set, and a fixed offset reads it
    std = _local_table(tmp_path / "standard.csv", rows, "%Y-%m-%d %H:%M:%S", zone="Etc/GMT-1")
    summary = format_summary_of(tmp_path, std)
    assert "rows left out: 18 " in summary and "When no turbine holds that hour twice" in summary
    assert "Etc/GMT-1 for UTC+1" in summary
    fixed = load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={std}",
                                                "data.identifiers.naive_timezone=Etc/GMT-1"]).data)  # fmt: skip
    assert _sorted(fixed.turbine_ids.tolist(), fixed.ts_ns, fixed.values)[:2] == plain[:2]
    labels = pd.Series(["2017-10-29 01:50:00", "2017-10-29 02:10:00"])  # no turbines' order: still refused
    with pytest.raises(InputError, match=r"1 local times that a DST change in Europe/Paris repeats.*'2017-10-29 "
                                         r"02:10:00'.*UTC offset"):  # fmt: skip
        parse_timestamps(labels, "Europe/Paris", "labels start")


def format_summary_of(tmp_path: Path, raw: Path) -> str:
    """scada-prepare's printed summary of `raw` (local times in Europe/Paris)."""
    from scada_tcn.trainer.data.prepare import format_summary, prepare

    cfg = load_config(CONFIG, [f"data.paths.raw_dir={raw}", "data.identifiers.naive_timezone=Europe/Paris",
                               "data.labels.enabled=false", "model.heads.fault.enabled=false",
                               "data.splits.train_range=[2017-10-26T00:00Z,2017-10-30T00:00Z]",
                               "data.splits.val_range=[2017-10-30T00:00Z,2017-10-31T00:00Z]",
                               "data.splits.test_range=[2017-10-31T00:00Z,2017-11-01T00:00Z]",
                               f"data.paths.processed_dir={tmp_path / 'prepared'}"])  # fmt: skip
    return format_summary(prepare(cfg))


def test_a_local_time_export_over_the_autumn_change_replays_as_its_utc_export(tiny_run, tiny_bundle, tmp_path):
    """Ten days of the tiny farm moved onto the 2024 autumn change in Europe/Paris, exported turbine by turbine
    once with UTC offsets and once in local time (02:00-02:50 on 27 October written twice): `scada-runtime replay`
    writes the same score records, byte for byte, from both. It refused the local export before."""
    from scada_tcn.runtime.replay import replay_file

    df = pd.read_csv(tiny_run.synth_dir / "scada.csv", dtype=str)
    ts = pd.to_datetime(df["timestamp"], utc=True)
    df = df[(ts >= "2024-01-15") & (ts < "2024-01-25")].copy()
    moved = pd.to_datetime(df["timestamp"], utc=True) + (pd.Timestamp("2024-10-22T00:00Z") - pd.Timestamp(
        "2024-01-15T00:00Z"))  # fmt: skip
    df = df.assign(_t=moved).sort_values(["turbine_id", "_t"], kind="stable")
    utc, local = tmp_path / "utc.csv", tmp_path / "local.csv"
    df.assign(timestamp=df["_t"].dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")).drop(columns="_t").to_csv(utc, index=False)
    paris = df["_t"].dt.tz_convert("Europe/Paris").dt.strftime("%Y-%m-%d %H:%M:%S")
    df.assign(timestamp=paris).drop(columns="_t").to_csv(local, index=False)
    twice = (paris == "2024-10-27 02:30:00").groupby(df["turbine_id"]).sum()
    assert (twice == 2).sum() >= 2  # the farm's own gaps leave some turbines one of the two 02:30s
    got = {}
    for name, path, mapping in (("utc", utc, {}), ("local", local, {"naive_timezone": "Europe/Paris"})):
        summary = replay_file(tiny_bundle, path, tmp_path / f"{name}.jsonl", daemon_config_from_dict(
            {"mapping": mapping}))  # fmt: skip
        assert summary["repeated_hour_dropped"] == 0 and summary["rows"] == summary["read"] == len(df)
        got[name] = (tmp_path / f"{name}.jsonl").read_bytes()
    assert got["local"] == got["utc"] and got["utc"].count(b"\n") >= 4 * 1400


def test_rows_out_of_time_order_in_a_repeated_hour_are_left_out_not_placed_an_hour_off(tmp_path):
    """What a review found in the first version of the placement, which looked only for one step back: rows out of
    time order that step back once were placed an hour off (two exports concatenated with an overlap, a row
    appended late, a newest-first export), and the changes of 1950 and 2254 in one table fell into one group (an
    int64 overflow). Now a group must come together, repeats of a row (same stamp and values) are no evidence, and
    the turbine's rows before and after must bracket it; else its rows are left out, by both readers alike."""

    def table(name: str, stamps: list[str], values: list[int], zone: str = "Europe/Paris") -> list:
        rest = ",".join(["1.5"] * (len(CHANNELS) - 1))
        path = _write(tmp_path / f"{name}.csv", [HEADER, *(f"WT01,{t},{v}.0,{rest}" for t, v in zip(stamps, values))])
        t = load_raw_table(load_config(CONFIG, [f"data.paths.raw_dir={path}",
                                                f"data.identifiers.naive_timezone={zone}"]).data)  # fmt: skip
        left_out = LeftOut()
        parts = list(table_chunks(path, CHANNELS, MappingCfg(), TABLE._replace(naive_timezone=zone), 3, left_out))
        got = sorted(zip(t.values[:, 0].astype(int).tolist(), t.ts_ns.tolist()))
        replayed = sorted((int(v), ts) for p in parts for v, ts in zip(p[2][:, 0], p[1].tolist()))
        assert got == replayed and t.repeated_hour_dropped == left_out.rows, name
        return [pd.Timestamp(ts, tz="UTC").strftime("%H:%MZ") for _, ts in got], t.repeated_hour_dropped

    day = "2017-10-29 "
    before, after = day.replace("29", "28") + "23:50:00", day + "03:00:00"
    a = [day + f"02:{m}0:00" for m in range(4)]  # 02:00-02:30 of the first occurrence
    b = [day + f"02:{m}0:00" for m in (2, 3, 4)]  # another export's 02:20-02:40: its first two rows repeat a's
    placed, out = table("overlap", [before, *a, *b, after], [0, 1, 2, 3, 4, 3, 4, 5, 6])
    assert placed == ["21:50Z", "02:00Z"] and len(out) == 7  # no second occurrence: which hour is not known
    both = [day + f"02:{m}0:00" for m in range(6)]
    placed, out = table("overlap_both", [before, *both, *both[:4], *both[2:], after],
                        [0, *range(1, 7), *range(7, 11), 9, 10, 11, 12, 13])  # fmt: skip
    assert out == [] and placed == ["21:50Z", *(f"00:{m}0Z" for m in range(6)), "01:00Z", "01:10Z", "01:20Z",
                                    "01:20Z", "01:30Z", "01:30Z", "01:40Z", "01:50Z", "02:00Z"]  # fmt: skip
    placed, out = table("late_row", [before, *a[:3], after, day + "02:05:00"], [0, 1, 2, 3, 4, 5])
    assert placed == ["21:50Z", "02:00Z"] and len(out) == 4
    newest_first = [after, day + "02:30:00", day + "02:00:00", day + "01:30:00"]
    placed, out = table("newest_first", newest_first, [0, 1, 2, 3])
    assert placed == ["02:00Z", "23:30Z"] and out == ["WT01 2017-10-29 02:30:00", "WT01 2017-10-29 02:00:00"]
    two = [day + "02:00:00", day + "02:10:00"] * 2  # both hours in time order; some rows equal across them
    for name, values in (("stopped", [0, 1, 0, 2]), ("frozen", [0, 1, 2, 1])):  # found by a second review
        placed, out = table(name, [before, *two, after], [9, *values, 8])
        assert out == [], name  # the first mend left "stopped" out, and put "frozen"'s second 02:10 at 00:10Z
        assert sorted(placed) == ["00:00Z", "00:10Z", "01:00Z", "01:10Z", "02:00Z", "21:50Z"], name
    far = ["1950-09-24 01:10:00", "2254-11-05 01:10:00", "2254-11-05 01:20:00", "2254-11-05 01:05:00"]
    placed, out = table("far_apart", far, [0, 1, 2, 3], "America/New_York")
    assert out == ["WT01 1950-09-24 01:10:00"] and placed == ["05:10Z", "05:20Z", "06:05Z"]


def test_inject_and_replay_judge_a_local_export_as_scada_prepare_does(tiny_run, tiny_bundle, tmp_path, capsys):
    """Found in review: scada-inject still refused a local-time export with the repeated hour that scada-prepare
    read, and replay refused a channel whose only numbers were in rows it left out, which scada-prepare counted.
    WT02 here sent only the first of the two hours (its rows of it are left out), and its status cells hold the
    table's only numbers there: the three readers take the table alike."""
    from scada_tcn.runtime.cli import main as cli_main
    from scada_tcn.runtime.replay import replay_file
    from scada_tcn.trainer.sources.inject import inject_table

    df = pd.read_csv(tiny_run.synth_dir / "scada.csv", dtype=str, keep_default_na=False)
    ts = pd.to_datetime(df["timestamp"], utc=True)
    df = df[(ts >= "2024-01-15") & (ts < "2024-01-19")].copy()
    moved = pd.to_datetime(df["timestamp"], utc=True) + (pd.Timestamp("2024-10-25T00:00Z") - pd.Timestamp(
        "2024-01-15T00:00Z"))  # fmt: skip
    second = (moved >= "2024-10-27T01:00Z") & (moved < "2024-10-27T02:00Z")
    first = (moved >= "2024-10-27T00:00Z") & (moved < "2024-10-27T01:00Z")
    wt02 = df["turbine_id"] == "WT02"
    keep = ~(wt02 & second)
    df, moved, first, wt02 = df[keep], moved[keep], first[keep], wt02[keep]
    df["status"] = np.where(wt02 & first, "1", "-")
    df["timestamp"] = moved.dt.tz_convert("Europe/Paris").dt.strftime("%Y-%m-%d %H:%M:%S")
    local = tmp_path / "local.csv"
    df.to_csv(local, index=False)
    paris = [f"data.paths.raw_dir={local}", "data.identifiers.naive_timezone=Europe/Paris"]
    table = load_raw_table(tiny_run.cfg(*paris).data)
    want = [f"WT02 2024-10-27 02:{m}0:00" for m in range(6) if (wt02 & first).sum() > m]
    assert table.repeated_hour_dropped == want and len(want) >= 4
    summary = replay_file(tiny_bundle, local, tmp_path / "s.jsonl", daemon_config_from_dict(
        {"mapping": {"naive_timezone": "Europe/Paris"}}))  # fmt: skip
    assert summary["repeated_hour_dropped"] == len(want) and summary["rows"] == len(table.ts_ns)
    config = tmp_path / "runtime.yaml"
    config.write_text("mapping:\n  naive_timezone: Europe/Paris\n")
    assert cli_main(["replay", "--bundle", str(tiny_bundle), "--input", str(local), "--out",
                     str(tmp_path / "cli.jsonl"), "--config", str(config)]) == 0  # fmt: skip
    said = capsys.readouterr().err
    assert f"replay: {len(want)} rows left out at local times the autumn DST change repeats" in said
    assert "'WT02 2024-10-27 02:00:00'" in said and "Etc/GMT-1" in said
    paths = inject_table(tiny_run.cfg(*paris).data, "WT01", tmp_path / "inj", seed=1, hours=12,
                         start="2024-10-25T00:00:00+00:00", end="2024-10-29T00:00:00+00:00")  # fmt: skip
    injected = load_raw_table(tiny_run.cfg(f"data.paths.raw_dir={paths['scada']}", paris[1]).data)
    assert injected.ts_ns.tolist() == table.ts_ns.tolist() and injected.repeated_hour_dropped == want
    assert (injected.values != table.values)[injected.turbine_ids == "WT01"].any()
