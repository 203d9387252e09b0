"""scada-inject: faults land only in the chosen turbine and period, labels match, the seed fixes everything;
scada-evaluate --labels scores against such a labels file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scada_tcn.runtime.errors import InputError
from scada_tcn.trainer.sources.inject import inject_table, schedule
from tests.test_prepare import _cfg, _table


def test_injects_only_inside_the_labelled_intervals(tmp_path):
    cfg = _cfg(tmp_path, _table(days=30))
    paths = inject_table(cfg.data, "WT02", tmp_path / "inj", seed=3, hours=48)
    before = pd.read_csv(tmp_path / "scada.csv", dtype=str, keep_default_na=False)
    after = pd.read_csv(paths["scada"], dtype=str, keep_default_na=False)
    labels = pd.read_csv(paths["labels"])
    assert list(labels.fault) == [
        "gearbox_overheat",
        "yaw_misalignment",
        "pitch_stuck",
        "sensor_freeze",
        "underperformance",
    ]
    changed = (before != after).any(axis=1).to_numpy()
    assert changed.any() and set(after.turbine_id[changed]) == {"WT02"}
    t = pd.to_datetime(after.timestamp, utc=True)
    inside = np.zeros(len(after), bool)
    for a, b in zip(pd.to_datetime(labels.start, utc=True), pd.to_datetime(labels.end, utc=True)):
        assert pd.Timestamp("2024-01-20T00:00Z") <= a < b <= pd.Timestamp("2024-02-10T00:00Z")  # the test range
        inside |= ((t > a) & (t <= b)).to_numpy()
    assert not (changed & ~inside).any()
    again = inject_table(cfg.data, "WT02", tmp_path / "inj2", seed=3, hours=48)
    assert again["scada"].read_bytes() == paths["scada"].read_bytes()


def test_schedule_caps_durations_at_half_a_slot():
    plan = schedule(pd.Timestamp("2024-01-01T00:00Z"), pd.Timestamp("2024-01-06T00:00Z"), ("a", "b"), 1000)
    assert [(b - a) for _, a, b in plan] == [pd.Timedelta(hours=30)] * 2
    assert plan[0][2] <= plan[1][1]


def test_unknown_turbine_is_refused(tmp_path):
    cfg = _cfg(tmp_path, _table(days=5))
    with pytest.raises(InputError, match="turbine 'WT09' not in"):
        inject_table(cfg.data, "WT09", tmp_path / "x")


def test_a_period_bound_without_an_offset_is_refused_with_what_to_write(tmp_path):
    """`--start 2024-01-01` ended in pandas' TypeError traceback ("Cannot convert tz-naive Timestamp"); the bounds
    are now read as the config's split bounds are (`split_bound_ns`), and the refusal says what to write."""
    from scada_tcn.runtime.errors import ConfigError

    cfg = _cfg(tmp_path, _table(days=5))
    with pytest.raises(ConfigError, match=r"--start: '2024-01-01' has no UTC offset; write one, e.g. 2024-03-01T00"):
        inject_table(cfg.data, "WT02", tmp_path / "x", start="2024-01-01")
    with pytest.raises(ConfigError, match=r"--end: '2024-W01-3T00:00Z' is not an ISO-8601 timestamp"):
        inject_table(cfg.data, "WT02", tmp_path / "x", end="2024-W01-3T00:00Z")


def test_evaluate_with_a_labels_file(tiny_run, tmp_path):
    from scada_tcn.trainer.evaluation.evaluate import evaluate
    from scada_tcn.trainer.evaluation.offline import setup_from_checkpoint

    labels = tmp_path / "labels.csv"
    pd.DataFrame(
        {
            "turbine_id": ["WT01", "WT03"],
            "start": ["2024-02-01T00:00:00+00:00", "2024-02-05T00:00:00+00:00"],
            "end": ["2024-02-03T00:00:00+00:00", "2024-02-06T00:00:00+00:00"],
            "fault": ["gearbox_overheat", "pitch_stuck"],
        }
    ).to_csv(labels, index=False)
    m = evaluate(setup_from_checkpoint(tiny_run.checkpoint), tmp_path / "eval", plots=False, labels_file=labels)
    assert m["events"]["n_events"] == 2 and m["labels"] == str(labels)
    assert [(e["turbine"], e["fault"]) for e in m["events"]["events"]] == [
        ("WT01", "gearbox_overheat"),
        ("WT03", "pitch_stuck"),
    ]
    assert m["events"]["fault_ns"] == (48 + 24) * 3_600 * 10**9 and set(m["events"]["by_fault"]) == {
        "gearbox_overheat",
        "pitch_stuck",
    }
    res = pd.read_parquet(tmp_path / "eval" / "results_test.parquet")
    t = res["t_end"]
    in_events = ((res.turbine_id == "WT01") & (t > "2024-02-01T00:00Z") & (t <= "2024-02-03T00:00Z")) | (
        (res.turbine_id == "WT03") & (t > "2024-02-05T00:00Z") & (t <= "2024-02-06T00:00Z")
    )
    assert m["anomaly"]["n_test_pos"] == int(in_events.sum()) > 0


def test_an_export_in_another_csv_dialect_is_injected_and_written_in_it(tmp_path):
    """A ';'-separated export with decimal commas and a preamble (data.csv) is read as scada-prepare reads it and
    written back in its own dialect, preamble included: the injected table reads as the plain export's
    injection, value for value, and only the injected cells differ from the source text."""
    from copy import deepcopy

    from scada_tcn.trainer.data.tables import load_raw_table

    df = _table(days=30)
    (tmp_path / "plain").mkdir()
    plain = _cfg(tmp_path / "plain", df)
    preamble = "# exported by a SCADA portal\n# site: test; zone: UTC\n"
    (tmp_path / "semi").mkdir()
    src = tmp_path / "semi" / "scada.csv"
    src.write_text(preamble + df.to_csv(index=False, sep=";", decimal=","))
    semi = deepcopy(plain.data)
    semi.paths.raw_dir, semi.csv.delimiter, semi.csv.decimal, semi.csv.skip_lines = str(src), ";", ",", 2
    a = inject_table(plain.data, "WT02", tmp_path / "a", seed=5, hours=48)
    b = inject_table(semi, "WT02", tmp_path / "b", seed=5, hours=48)
    text = b["scada"].read_text()
    assert text.startswith(preamble) and text.splitlines()[2].startswith("turbine_id;timestamp;")
    plain_out, semi_out = deepcopy(plain.data), deepcopy(semi)
    plain_out.paths.raw_dir, semi_out.paths.raw_dir = str(a["scada"]), str(b["scada"])
    ta, tb = load_raw_table(plain_out), load_raw_table(semi_out)
    np.testing.assert_array_equal(ta.values, tb.values)
    assert ta.ts_ns.tolist() == tb.ts_ns.tolist() and not np.array_equal(ta.values, load_raw_table(semi).values)
    assert a["labels"].read_text() == b["labels"].read_text()


def test_an_export_stamped_in_epoch_milliseconds_is_injected_as_the_iso_export(tmp_path):
    """`data.identifiers.time_format: epoch_ms`: the faults land on the same rows with the same values as in the
    ISO-stamped export, the stamps are written back as they were, and the labels are the same."""
    from copy import deepcopy

    from scada_tcn.trainer.data.tables import load_raw_table

    df = _table(days=30)
    (tmp_path / "plain").mkdir()
    plain = _cfg(tmp_path / "plain", df)
    (tmp_path / "ms").mkdir()
    ms = df.assign(timestamp=(pd.to_datetime(df.timestamp) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta("1ms"))
    assert ms.timestamp.iloc[0] == 1704067800000
    ms.to_csv(tmp_path / "ms" / "scada.csv", index=False)
    epoch_ms = deepcopy(plain.data)
    epoch_ms.paths.raw_dir, epoch_ms.identifiers.time_format = str(tmp_path / "ms" / "scada.csv"), "epoch_ms"
    a = inject_table(plain.data, "WT02", tmp_path / "a", seed=5, hours=48)
    b = inject_table(epoch_ms, "WT02", tmp_path / "b", seed=5, hours=48)
    plain_out, ms_out = deepcopy(plain.data), deepcopy(epoch_ms)
    plain_out.paths.raw_dir, ms_out.paths.raw_dir = str(a["scada"]), str(b["scada"])
    ta, tb = load_raw_table(plain_out), load_raw_table(ms_out)
    assert ta.ts_ns.tolist() == tb.ts_ns.tolist()
    np.testing.assert_array_equal(ta.values, tb.values)
    assert not np.array_equal(tb.values, load_raw_table(epoch_ms).values)
    written = pd.read_csv(b["scada"], dtype=str)["timestamp"]
    assert written.tolist() == ms.timestamp.astype(str).tolist()
    assert a["labels"].read_text() == b["labels"].read_text()


def test_a_per_turbine_file_named_after_its_turbine_is_injected(tmp_path):
    """An export without an id column, its turbine in the file name (data.identifiers.turbine_id_from_file): the
    turbine is the file's, another is refused, and the file is written back with no id column added."""
    from copy import deepcopy

    df = _table(days=30)
    (tmp_path / "plain").mkdir()
    plain = _cfg(tmp_path / "plain", df)
    src = tmp_path / "Turbine_Data_WT02_2024.csv"
    df[df.turbine_id == "WT02"].drop(columns="turbine_id").to_csv(src, index=False)
    one = deepcopy(plain.data)
    one.paths.raw_dir, one.identifiers.turbine_id_col = str(src), None
    one.identifiers.turbine_id_from_file = r"Turbine_Data_(WT\d+)_"
    with pytest.raises(InputError, match=r"turbine 'WT01' not in .*turbines: \['WT02'\]"):
        inject_table(one, "WT01", tmp_path / "x")
    a = inject_table(plain.data, "WT02", tmp_path / "a", seed=5, hours=48)
    b = inject_table(one, "WT02", tmp_path / "b", seed=5, hours=48)
    after_a = pd.read_csv(a["scada"], dtype=str, keep_default_na=False)
    after_b = pd.read_csv(b["scada"], dtype=str, keep_default_na=False)
    assert list(after_b.columns) == [c for c in after_a.columns if c != "turbine_id"]
    pd.testing.assert_frame_equal(after_a[after_a.turbine_id == "WT02"].drop(columns="turbine_id")
                                  .reset_index(drop=True), after_b)  # fmt: skip


def test_a_folder_of_per_turbine_files_is_injected_file_by_file(tmp_path):
    """A folder export (Greenbyte's: one file per turbine and period, the turbine in the file name) was refused
    ("scada-inject takes one CSV/Parquet export"). The injected copy is a folder `scada` of the same files: the
    other turbine's files byte for byte, the turbine's files with the faults, which read (scada-prepare's reader)
    as the joined table's injection, value for value, across the files' boundary; the same seed, the same bytes."""
    import gzip
    from copy import deepcopy

    from scada_tcn.trainer.data.tables import load_raw_table

    df = _table(days=30)
    (tmp_path / "plain").mkdir()
    plain = _cfg(tmp_path / "plain", df)
    farm = tmp_path / "farm"
    farm.mkdir()
    half = df.timestamp < "2024-01-25"  # two periods, the test range across their boundary
    for tid in ("WT01", "WT02"):
        for k, sel in enumerate((half, ~half)):
            rows = df[(df.turbine_id == tid) & sel].drop(columns="turbine_id")
            with gzip.open(farm / f"Turbine_Data_{tid}_{k}.csv.gz", "wt") as fh:
                fh.write("# exported\n" + rows.to_csv(index=False))
    folder = deepcopy(plain.data)
    folder.paths.raw_dir, folder.identifiers.turbine_id_col, folder.csv.skip_lines = str(farm), None, 1
    folder.identifiers.turbine_id_from_file = r"Turbine_Data_(WT\d+)_"
    a = inject_table(plain.data, "WT02", tmp_path / "a", seed=5, hours=48)
    b = inject_table(folder, "WT02", tmp_path / "b", seed=5, hours=48)
    again = inject_table(folder, "WT02", tmp_path / "c", seed=5, hours=48)
    assert b["scada"] == tmp_path / "b" / "scada" and sorted(p.name for p in b["scada"].iterdir()) == sorted(
        p.name for p in farm.iterdir())  # fmt: skip
    for f in farm.iterdir():
        same = (b["scada"] / f.name).read_bytes() == f.read_bytes()
        assert same == ("WT01" in f.name), f.name
        assert (again["scada"] / f.name).read_bytes() == (b["scada"] / f.name).read_bytes()
    labels = pd.read_csv(b["labels"])
    assert (labels.end < "2024-01-25").any() and (labels.start > "2024-01-25").any()
    plain_out, folder_out = deepcopy(plain.data), deepcopy(folder)
    plain_out.paths.raw_dir, folder_out.paths.raw_dir = str(a["scada"]), str(b["scada"])
    ta, tb = load_raw_table(plain_out), load_raw_table(folder_out)
    order = np.lexsort((ta.ts_ns, ta.turbine_ids.astype(str)))
    assert tb.turbine_ids.tolist() == ta.turbine_ids[order].tolist() and tb.ts_ns.tolist() == ta.ts_ns[order].tolist()
    np.testing.assert_array_equal(tb.values, ta.values[order])
    assert a["labels"].read_text() == b["labels"].read_text()


def test_a_config_split_by_turbine_injects_in_the_period_given_and_asks_for_one_otherwise(tmp_path):
    """Found in review: with splits.method=turbine (no test_range, as the C-MAPSS configs) the bounds' defaults
    were looked up even when --start and --end were given, a TypeError traceback; without them it was one before
    too. Now the given period is used, and a missing bound is asked for."""
    from typer.testing import CliRunner

    from scada_tcn.trainer.cli.pipeline import inject_app
    from scada_tcn.trainer.sources.simulator import write_synthetic

    paths = write_synthetic(tmp_path / "synth", 3, 3, 0, "2024-01-01", "csv")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "config.yaml")
    args = ["--config", config, "--turbine", "WT01", "--hours", "6", f"data.paths.raw_dir={paths['scada']}",
            "data.splits.method=turbine", "data.splits.train_turbines=[WT01]", "data.splits.val_turbines=[WT02]",
            "data.splits.test_turbines=[WT03]", "data.splits.train_range=null", "data.splits.val_range=null",
            "data.splits.test_range=null"]  # fmt: skip
    period = ["--start", "2024-01-01T12:00:00+00:00", "--end", "2024-01-03T00:00:00+00:00"]
    res = CliRunner().invoke(inject_app, [*args, "--out", str(tmp_path / "inj"), *period])
    assert res.exit_code == 0, res.output
    labels = pd.read_csv(tmp_path / "inj" / "labels.csv")
    assert len(labels) and (pd.to_datetime(labels.start) >= pd.Timestamp("2024-01-01T12:00Z")).all()
    res = CliRunner().invoke(inject_app, [*args, "--out", str(tmp_path / "x"), *period[:2]])
    assert res.exit_code == 2, res.output  # an input error, said without a traceback
    assert "--end: the config has no data.splits.test_range (splits.method=turbine)" in res.output
