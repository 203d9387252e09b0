"""scada-prepare and scada-runtime replay on the real ENGIE La Haute Borne SCADA (../shared/data; skipped with the
reason when absent)."""

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.data.prepare import prepare
from tests.conftest import CONFIG, shared_data_or_skip


def test_prepare_la_haute_borne(tmp_path):
    shared_data_or_skip("engie_la_haute_borne", "la_haute_borne_scada_2017-08_2018-01_3turbines.csv.gz")
    cfg = load_config(CONFIG, ["data=la_haute_borne", f"data.paths.processed_dir={tmp_path}"])
    s = prepare(cfg)
    assert s["turbines"] == ["R80711", "R80721", "R80736"] and s["raw_rows"] == 63_214
    assert s["steps"] == 3 * 22_554  # every turbine on the full 10-min grid, gaps kept as missing steps
    # R80711 lacks 2017-11-19 -> 2017-12-13 in this copy: a month of missing steps, never interpolated
    X = np.load(tmp_path / "turbines" / "R80711" / "M_miss.npy")
    ts = np.load(tmp_path / "turbines" / "R80711" / "timestamps.npy")
    gap = (ts > pd.Timestamp("2017-11-20T00:00Z").value) & (ts < pd.Timestamp("2017-12-12T00:00Z").value)
    assert gap.sum() > 3000 and (X[gap] == 0).all()
    assert 0.05 < s["missing_fraction"]["power"] < 0.1
    assert all(s["windows"][k] > 5000 for k in ("train", "val", "test"))
    assert s["R"] == 3 and s["F"] == len(s["feature_names"]) == 29
    assert "gearbox_oil_above_ambient" in s["feature_names"] and "ambient_temp" not in s["feature_names"]


LHB_FILE = ("engie_la_haute_borne", "la_haute_borne_scada_2017-08_2018-01_3turbines.csv.gz")
LHB_TINY = ["data=la_haute_borne", "data.windowing.L=24", "data.windowing.K=3", "data.windowing.stride=4",
            "features.rolling.windows=[3,6]", "model.tcn.D=16", "model.tcn.num_blocks=2",
            "model.heads.forecast.hidden=16", "train.batch_size=32", "train.epochs=1", "train.max_steps_per_epoch=8",
            "train.scheduler.warmup_steps=2", "device=cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def lhb_bundle(tmp_path_factory) -> Path:
    """A tiny per-signal model trained on La Haute Borne (data config's defaults), exported with its step graph."""
    shared_data_or_skip(*LHB_FILE)
    from scada_tcn.export.bundle_writer import export_bundle
    from scada_tcn.trainer.training.fit import fit

    root = tmp_path_factory.mktemp("lhb")
    cfg = load_config(CONFIG, [*LHB_TINY, f"data.paths.processed_dir={root / 'processed'}", f"output_dir={root}"])
    prepare(cfg)
    export_bundle(fit(cfg, log=lambda m: None), out_dir=root / "bundle")
    return root / "bundle"


def test_replay_of_la_haute_borne_as_published(lhb_bundle, tmp_path):
    """The published file as it is (gzip, turbine by turbine, local stamps with +02:00 / +01:00 offsets across the
    October DST change, a month missing on R80711) through `scada-runtime replay` with no mapping given: the
    bundle records the training table's id and time columns (Wind_turbine_name, Date_time), which runtime.yaml had
    to restate until the twenty-second session. Every 10-min step of each turbine's grid gets exactly one record
    (the 22,554 steps scada-prepare grids, none lost or doubled at the DST change), and the month with no data gets
    no score on R80711 while its peers are scored."""
    from scada_tcn.runtime.cli import main

    out = tmp_path / "scores.jsonl"
    args = ["replay", "--bundle", str(lhb_bundle), "--input", str(shared_data_or_skip(*LHB_FILE)), "--out", str(out)]
    assert main(args) == 0
    docs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    seqs: dict[str, list[int]] = {}
    for d in docs:
        seqs.setdefault(d["turbine"], []).append(d["seq"])
    assert sorted(seqs) == ["R80711", "R80721", "R80736"]
    first = pd.Timestamp("2017-08-09T08:10:00Z").value // 600_000_000_000  # 10:10 CEST, the file's first stamp
    for s in seqs.values():
        assert sorted(s) == list(range(first, first + 22_554))
    gap = [d for d in docs if "2017-11-20" <= d["ts"] < "2017-12-12"]
    mine = [d for d in gap if d["turbine"] == "R80711"]
    assert len(mine) == 3168 and all(d["status"] == "insufficient_data" and "score" not in d for d in mine)
    assert all(d["status"] == "ok" and d["score"] is not None for d in gap if d["turbine"] != "R80711")


def test_la_haute_borne_as_per_turbine_semicolon_day_first_files_reads_as_published(tmp_path):
    """The published file rewritten as a farm's own export might be: one gzipped file per turbine named after it (no
    id column), ';'-separated with decimal commas, lines before the header, day-first UTC stamps. Read with the
    settings that say so (data.csv, identifiers.turbine_id_from_file, identifiers.time_format) by scada-prepare's
    reader, and by replay's with the layout a bundle records: the published file's rows, stamps and values."""
    path = shared_data_or_skip(*LHB_FILE)
    import gzip
    import re

    from scada_tcn.runtime.bundle import TableFormat
    from scada_tcn.runtime.csv_table import CsvDialect
    from scada_tcn.runtime.daemon_config import MappingCfg
    from scada_tcn.runtime.replay import table_chunks
    from scada_tcn.trainer.data.tables import load_raw_table

    cfg = load_config(CONFIG, ["data=la_haute_borne"]).data
    df = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["Wind_turbine_name", "Date_time",
                                                                      *cfg.columns.values()])  # fmt: skip
    df["Date_time"] = pd.to_datetime(df["Date_time"], utc=True).dt.strftime("%d/%m/%Y %H:%M")
    point = re.compile(r"[-+]?\d*\.\d+")
    (tmp_path / "farm").mkdir()
    for tid, part in df.groupby("Wind_turbine_name"):
        part = part.drop(columns="Wind_turbine_name")
        with gzip.open(tmp_path / "farm" / f"LHB_{tid}_2017.csv.gz", "wt") as fh:
            fh.write("Export La Haute Borne;2018-01-15\nUnits: SI\n\n" + ";".join(part.columns) + "\n")
            fh.writelines(";".join(c.replace(".", ",") if point.fullmatch(c) else c for c in row) + "\n"
                          for row in part.itertuples(index=False))  # fmt: skip
    settings = ["data.csv.delimiter=';'", "data.csv.decimal=','", "data.csv.skip_lines=3",
                "data.identifiers.turbine_id_col=null", r"data.identifiers.turbine_id_from_file='LHB_(R\d+)_'",
                "data.identifiers.time_format='%d/%m/%Y %H:%M'", "data.identifiers.naive_timezone=UTC"]  # fmt: skip
    published = load_raw_table(cfg)
    cfg = load_config(CONFIG, ["data=la_haute_borne", f"data.paths.raw_dir={tmp_path / 'farm'}", *settings]).data
    own = load_raw_table(cfg)
    order = np.lexsort((published.ts_ns, published.turbine_ids.astype(str)))  # the files come turbine by turbine
    assert own.turbine_ids.tolist() == published.turbine_ids[order].tolist() and len(own.ts_ns) == 63_214
    assert own.ts_ns.tolist() == published.ts_ns[order].tolist()
    np.testing.assert_array_equal(own.values, published.values[order])
    ids = cfg.identifiers
    dialect, pattern = CsvDialect(";", ",", 3), ids.turbine_id_from_file
    layout = TableFormat(dict(cfg.columns), None, ids.time_col, "UTC", dialect, pattern, ids.time_format)
    parts = list(table_chunks(tmp_path / "farm", own.channels, MappingCfg(), layout, 20_000))
    assert [i for p in parts for i in p[0]] == own.turbine_ids.tolist()
    assert np.concatenate([p[1] for p in parts]).tolist() == own.ts_ns.tolist()
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), own.values)
