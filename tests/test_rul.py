"""RUL target plumbing: metrics by hand, the masked loss, per-step targets, and a tiny prepare -> train -> evaluate
run with the RUL head on a fake C-MAPSS-format data set (no shared data needed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from scada_tcn.trainer.data.prepare import target_timeline
from scada_tcn.trainer.evaluation.metrics import MetricsError
from scada_tcn.trainer.evaluation.rul_eval import last_window_rul, phm08_score, rmse, rul_metrics
from scada_tcn.trainer.training.losses import rul_loss
from tests.conftest import CONFIG


def test_rmse_and_phm08_by_hand():
    pred, true = np.array([10.0, 50.0, 100.0]), np.array([20.0, 40.0, 100.0])  # d = -10, +10, 0
    assert rmse(pred, true) == pytest.approx(math.sqrt(200 / 3))
    assert phm08_score(pred - true) == pytest.approx((math.exp(10 / 13) - 1) + (math.exp(1) - 1))
    assert phm08_score(np.array([0.0])) == 0.0
    m = rul_metrics(pred, true, cap=45.0)  # capped truth 20, 40, 45: d = -10, 10, 55
    assert m["units"] == 3 and m["mean_error"] == 0.0 and m["mae"] == pytest.approx(20 / 3)
    assert m["vs_capped_truth"]["rmse"] == pytest.approx(math.sqrt((100 + 100 + 55**2) / 3))
    with pytest.raises(MetricsError):
        rmse([1.0], [1.0, 2.0])
    with pytest.raises(MetricsError):
        rmse([np.nan], [1.0])


def test_last_window_rul_picks_each_turbines_latest_window():
    res = pd.DataFrame(
        {
            "turbine_id": ["b", "a", "a", "b"],
            "t_end": pd.to_datetime([4, 1, 2, 3], utc=True),
            "rul": [1.0, 2.0, 3.0, 4.0],
            "rul_true": [10.0, 20.0, 30.0, 40.0],
        }
    )
    last = last_window_rul(res)
    assert last["turbine_id"].tolist() == ["a", "b"] and last["rul_pred"].tolist() == [3.0, 1.0]
    assert last["rul_true"].tolist() == [30.0, 10.0]


def test_rul_loss_masks_caps_and_scales():
    cap = 100.0
    pred = torch.tensor([[50.0], [130.0], [0.0]], requires_grad=True)
    rul = torch.tensor([60.0, 400.0, float("nan")])  # the second is capped to 100; the third has no target
    has = torch.tensor([1.0, 1.0, 0.0])
    loss = rul_loss(pred, rul, has, cap, delta=1.0)
    want = (0.5 * 0.1**2 + 0.5 * 0.3**2) / 2  # Huber on (pred - min(rul, cap)) / cap, mean over 2 targets
    assert float(loss.detach()) == pytest.approx(want)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[2, 0] == 0.0
    none = rul_loss(pred, rul, torch.zeros(3), cap, delta=1.0)
    assert float(none.detach()) == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="cap must be > 0"):
        rul_loss(pred, rul, has, 0.0, delta=1.0)


def test_target_timeline_takes_each_steps_latest_sample():
    dt = 600
    grid = np.arange(1, 5, dtype=np.int64) * dt * 10**9  # 4 steps
    ts = np.array([1, 2, 2.5, 4], dtype=np.float64) * dt * 10**9
    out = target_timeline(grid, ts.astype(np.int64), np.array([9.0, 8.0, 7.5, np.nan]), dt)
    # step 3 holds the sample at 2.5 dt, step 4's only sample has no target
    assert np.array_equal(out[:3], [9.0, 8.0, 7.5]) and np.isnan(out[3])


# ------------------------------------------------------------------------------------------ end to end


def _fake_nasa(folder, n_train=6, n_test=3, seed=0):
    """NASA-format files whose sensors drift towards failure, so RUL is learnable."""
    rng = np.random.default_rng(seed)

    def unit_rows(u, n_cycles, total):
        c = np.arange(1, n_cycles + 1)
        wear = c / total  # 0 -> 1 at failure
        settings = np.column_stack(
            [rng.normal(0, 1e-3, n_cycles), rng.normal(0, 1e-4, n_cycles), np.full(n_cycles, 100.0)]
        )
        sensors = 500 + np.arange(21) + wear[:, None] * np.linspace(1, 5, 21) + rng.normal(0, 0.1, (n_cycles, 21))
        return np.column_stack([np.full(n_cycles, u), c, settings, sensors])

    train = [unit_rows(u, n, n) for u, n in enumerate(rng.integers(70, 90, n_train), 1)]
    totals = rng.integers(90, 110, n_test)
    cut = rng.integers(40, 70, n_test)
    test = [unit_rows(u, int(k), int(t)) for u, (k, t) in enumerate(zip(cut, totals), 1)]
    for name, parts in (("train", train), ("test", test)):
        np.savetxt(folder / f"{name}_FD001.txt", np.vstack(parts), fmt="%.4f")
    np.savetxt(folder / "RUL_FD001.txt", totals - cut, fmt="%d")
    return totals - cut


@pytest.mark.slow
def test_tiny_cmapss_prepare_train_resume_evaluate(tmp_path):
    from scada_tcn.trainer.config import load_config
    from scada_tcn.trainer.data.prepare import prepare
    from scada_tcn.trainer.evaluation.evaluate import evaluate
    from scada_tcn.trainer.evaluation.offline import infer_split, setup_from_checkpoint
    from scada_tcn.trainer.sources.cmapss import write_cmapss
    from scada_tcn.trainer.training.fit import fit, load_checkpoint

    (tmp_path / "nasa").mkdir()
    true_after = _fake_nasa(tmp_path / "nasa")
    write_cmapss(tmp_path / "nasa", "FD001", tmp_path / "raw")
    overrides = [
        "data=cmapss_fd001",
        f"data.paths.raw_dir={tmp_path / 'raw' / 'cmapss.csv'}",
        f"data.paths.labels_file={tmp_path / 'raw' / 'labels.csv'}",
        f"data.paths.processed_dir={tmp_path / 'p'}",
        f"output_dir={tmp_path / 'run'}",
        "data.windowing.stride=4",
        "data.splits.train_turbines=['train_00[1-4]']",
        "data.splits.val_turbines=['train_00[56]']",
        "model.tcn.D=8",
        "model.heads.fault.hidden=8",
        "model.heads.rul.hidden=8",
        "train.batch_size=16",
        "train.epochs=1",
        "train.max_steps_per_epoch=3",
        "train.scheduler.warmup_steps=1",
        "infer.calibration.min_windows=5",
        "device=cpu",
    ]
    cfg = load_config(CONFIG, overrides)
    summary = prepare(cfg)
    index = pd.read_parquet(tmp_path / "p" / "window_index.parquet")
    assert summary["windows_with_rul"]["test"] == int((index["split"] == "test").sum()) > 0
    for tid, g in index.groupby("turbine_id"):  # stride 4 + include_last: every unit's last step has a window
        d = tmp_path / "p" / "turbines" / tid
        ts, rul = np.load(d / "timestamps.npy"), np.load(d / "rul.npy")
        assert g["t_end"].max() == ts[-1]
        assert np.array_equal(g["rul"].to_numpy(), rul[g["start"].to_numpy() + 29])  # RUL at the last input step
    test_last = index[index["split"] == "test"].sort_values("t_end").groupby("turbine_id").tail(1)
    assert sorted(test_last["rul"].tolist()) == sorted(true_after.astype(float).tolist())

    fit(cfg, log=lambda m: None)
    steps = [json.loads(x) for x in (tmp_path / "run" / "logs" / "train.jsonl").read_text().splitlines()]
    assert all("rul" in s for s in steps if s["event"] == "step") and steps[-1]["val_rul"] > 0
    best = fit(
        load_config(CONFIG, [*overrides, "train.epochs=2"]),
        resume=str(tmp_path / "run" / "checkpoints" / "last.pt"),
        log=lambda m: None,
    )
    ck = load_checkpoint(best)
    assert ck["model_config"]["rul_enabled"] and ck["model_config"]["rul_scale"] == 125.0

    setup = setup_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    res, _, _ = infer_split(setup, "test")
    assert {"rul", "rul_true", "p_near_failure"} <= set(res.columns) and res["rul"].notna().all()
    m = evaluate(setup, tmp_path / "eval", plots=False)
    assert m["rul"]["units"] == len(true_after) and m["rul"]["rmse"] >= 0 and "vs_capped_truth" in m["rul"]
