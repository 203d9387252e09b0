"""Metrics against hand-computed values and independent definitions (event scoring: tests/test_events.py)."""

import math

import numpy as np
import pytest

from scada_tcn.trainer.evaluation.metrics import (
    MetricsError,
    anomaly_metrics,
    best_f1_threshold,
    fault_metrics,
    forecast_metrics,
    pr_auc,
    roc_auc,
)


def test_roc_auc_hand_computed():
    # pairs (pos, neg): (0.8>0.1) (0.8>0.4) (0.35<0.4) (0.35>0.1) -> 3 of 4
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5  # a tie counts half
    assert roc_auc(np.array([3.0, 2.0, 1.0]), np.array([1, 1, 0])) == 1.0
    assert np.isnan(roc_auc(np.array([1.0, 2.0]), np.array([1, 1])))


def test_roc_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 20, 300).astype(float)
    y = rng.random(300) < 0.3
    pos, neg = s[y][:, None], s[~y][None, :]
    expected = ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)
    assert abs(roc_auc(s, y) - expected) < 1e-12


# --- forecasts --------------------------------------------------------------------------------------------------


def test_forecast_metrics_hand_computed_and_missing_targets_ignored():
    nan = float("nan")
    # (N=2, K=1, F=3): feature c is never present; a missing target may hold NaN or garbage
    Y_true = np.array([[[1.0, 10.0, nan]], [[2.0, nan, 5.0]]])
    Y_hat = np.array([[[2.0, 13.0, 0.0]], [[0.0, 99.0, 1e9]]])
    mask = np.array([[[1, 1, 0]], [[1, 0, 0]]])
    out = forecast_metrics(Y_true, Y_hat, mask, ["a", "b", "c"])
    # errors: a: +1, -2; b: +3
    assert out["per_feature"]["a"] == {"mae": 1.5, "rmse": math.sqrt(2.5), "n": 2}
    assert out["per_feature"]["b"] == {"mae": 3.0, "rmse": 3.0, "n": 1}
    c = out["per_feature"]["c"]
    assert np.isnan(c["mae"]) and np.isnan(c["rmse"]) and c["n"] == 0
    assert out["mae"] == 2.0 and abs(out["rmse"] - math.sqrt(14 / 3)) < 1e-12 and out["n"] == 3
    empty = forecast_metrics(Y_true, Y_hat, np.zeros_like(mask), ["a", "b", "c"])
    assert np.isnan(empty["mae"]) and np.isnan(empty["rmse"]) and empty["n"] == 0


def test_forecast_metrics_refuses_bad_inputs():
    y = np.zeros((2, 1, 2))
    with pytest.raises(MetricsError, match="one \\(N, K, F=3\\) shape"):
        forecast_metrics(y, y, np.ones_like(y), ["a", "b", "c"])
    bad = y.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(MetricsError, match="finite where mask is 1"):
        forecast_metrics(bad, y, np.ones_like(y), ["a", "b"])


# --- fault classes ----------------------------------------------------------------------------------------------


def _same_per_class(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], nan_ok=True) for k in a)


PROBS = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.6, 0.1, 0.3]])
Y_CLASS = np.array([0, 0, 1, 1, 0])


def test_fault_metrics_multiclass_hand_computed():
    out = fault_metrics(Y_CLASS, PROBS, ["normal", "gear", "yaw"], from_logits=False)
    assert out["n"] == 5 and out["accuracy"] == 0.6  # predictions 0, 1, 1, 0, 0
    assert out["confusion"] == [[2, 1, 0], [1, 1, 0], [0, 0, 0]]
    normal, gear, yaw = (out["per_class"][k] for k in ("normal", "gear", "yaw"))
    # normal: TP 2, FP 1, FN 1 -> F1 4/6; gear: TP 1, FP 1, FN 1 -> 1/2; yaw: absent and never predicted
    assert abs(normal["f1"] - 2 / 3) < 1e-12 and gear["f1"] == 0.5 and np.isnan(yaw["f1"])
    assert abs(out["macro_f1"] - 7 / 12) < 1e-12  # yaw neither helps nor hurts
    assert normal["precision"] == 2 / 3 and normal["recall"] == 2 / 3 and normal["support"] == 3
    assert np.isnan(yaw["precision"]) and np.isnan(yaw["recall"]) and yaw["support"] == 0
    # one-vs-rest pairs: normal 5 of 6 (0.4 < 0.5), gear 5 of 6 (0.3 < 0.5); yaw has no positive
    assert abs(normal["auroc"] - 5 / 6) < 1e-12 and abs(gear["auroc"] - 5 / 6) < 1e-12 and np.isnan(yaw["auroc"])
    assert abs(out["auroc_macro"] - 5 / 6) < 1e-12
    from_logits = fault_metrics(Y_CLASS, np.log(PROBS) + 3.0, ["normal", "gear", "yaw"])  # softmax(log p + c) = p
    assert _same_per_class(from_logits["per_class"], out["per_class"])
    assert from_logits["macro_f1"] == out["macro_f1"] and from_logits["confusion"] == out["confusion"]


def test_fault_metrics_multilabel_hand_computed():
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    p = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.1], [0.3, 0.7]])  # predicted at >= 0.5: [1,0],[0,1],[1,0],[0,1]
    out = fault_metrics(y, p, ["gear", "yaw"], multilabel=True, from_logits=False)
    # gear: TP 1, FP 1, FN 1 -> 0.5; yaw: TP 2 -> 1; micro: TP 3, FP 1, FN 1 -> 6/8
    assert out["per_class"]["gear"]["f1"] == 0.5 and out["per_class"]["yaw"]["f1"] == 1.0
    assert out["micro_f1"] == 0.75 and out["macro_f1"] == 0.75
    assert out["per_class"]["gear"]["auroc"] == 0.75 and out["per_class"]["yaw"]["auroc"] == 1.0
    logits = np.log(p / (1 - p))
    assert _same_per_class(fault_metrics(y, logits, ["gear", "yaw"], multilabel=True)["per_class"], out["per_class"])


def test_fault_metrics_refuses_bad_inputs():
    with pytest.raises(MetricsError, match="class indices in \\[0, 3\\)"):
        fault_metrics(np.array([0, 3, 0, 0, 0]), PROBS, ["a", "b", "c"], from_logits=False)
    with pytest.raises(MetricsError, match="pass from_logits=True"):
        fault_metrics(Y_CLASS, PROBS * 2, ["a", "b", "c"], from_logits=False)
    with pytest.raises(MetricsError, match="\\(N, C=2\\)"):
        fault_metrics(Y_CLASS, PROBS, ["a", "b"])


# --- anomaly scores ---------------------------------------------------------------------------------------------


def test_pr_auc_hand_computed_with_ties_as_one_threshold():
    # thresholds 0.9 (P 1, R .5), 0.8 (P .5, R .5), 0.7 (P 2/3, R 1), 0.6 (P .5, R 1)
    assert abs(pr_auc(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) - (0.5 + 0.5 * 2 / 3)) < 1e-12
    # the tie at 0.5 is one threshold (P 2/3, R 1); breaking it positive-first would give 1.0
    assert abs(pr_auc(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0])) - 5 / 6) < 1e-12
    assert np.isnan(pr_auc(np.array([0.3, 0.2]), np.array([0, 0])))


def test_pr_auc_matches_mean_precision_over_positives():
    # independent definition: AP = mean over positives of the precision of `score >= that positive's score`
    rng = np.random.default_rng(1)
    s = rng.integers(0, 15, 200).astype(float)
    y = rng.random(200) < 0.3
    prec = np.array([y[s >= v].mean() for v in s[y]])
    assert abs(pr_auc(s, y) - prec.mean()) < 1e-12


def test_best_f1_threshold_hand_computed_and_brute_force():
    # F1 at 0.9: 2/3, 0.8: 1/2, 0.7: 4/5, 0.6: 2/3
    thr, f1 = best_f1_threshold(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert thr == 0.7 and abs(f1 - 0.8) < 1e-12
    assert best_f1_threshold(np.array([4.0, 3.0, 2.0, 1.0]), np.array([1, 0, 0, 1])) == (4.0, 2 / 3)  # tie: highest
    assert all(np.isnan(v) for v in best_f1_threshold(np.array([1.0]), np.array([0])))
    rng = np.random.default_rng(2)
    s, y = rng.integers(0, 30, 300).astype(float), rng.random(300) < 0.2
    brute = max(2 * (y & (s >= t)).sum() / ((s >= t).sum() + y.sum()) for t in np.unique(s))
    assert abs(best_f1_threshold(s, y)[1] - brute) < 1e-12


def test_anomaly_metrics_threshold_from_validation_applied_to_test():
    out = anomaly_metrics(
        np.array([0.9, 0.8, 0.7, 0.6]),
        np.array([1, 0, 1, 0]),  # best-F1 threshold 0.7
        np.array([0.95, 0.75, 0.65, 0.5, 0.72]),
        np.array([1, 1, 0, 0, 0]),
    )
    # test alerts at >= 0.7: 0.95 (TP), 0.75 (TP), 0.72 (FP)
    assert out["threshold"] == 0.7 and abs(out["val_f1"] - 0.8) < 1e-12
    assert out["precision"] == 2 / 3 and out["recall"] == 1.0 and out["f1"] == 0.8
    assert out["roc_auc"] == 1.0 and out["pr_auc"] == 1.0 and out["n_test"] == 5 and out["n_test_pos"] == 2
    none = anomaly_metrics(np.array([0.1, 0.2]), np.array([0, 0]), np.array([0.3, 0.4]), np.array([0, 1]))
    assert all(np.isnan(none[k]) for k in ("threshold", "val_f1", "precision", "recall", "f1"))
