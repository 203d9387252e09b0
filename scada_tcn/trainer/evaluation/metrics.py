"""Offline metrics (numpy) for forecasts, fault classes and anomaly scores.

Contract
--------
Inputs that break their contract (shapes, lengths, unknown labels, non-finite values where a value is read)
raise MetricsError, a ValueError. A metric that is undefined on valid inputs (no positive, no present target, a
0/0 ratio) is NaN, never an exception, and each function says when.

* Forecasts: `forecast_metrics` pools the present targets (mask 1) of (N, K, F) arrays; missing targets are
  never read (they may hold NaN).
* Fault classes: `fault_metrics` takes logits (softmax, or sigmoid when multilabel) or probabilities.
* Anomaly scores (high = anomalous, alert when score >= threshold): `roc_auc`, `pr_auc`, `best_f1_threshold`,
  `anomaly_metrics`.
* Events (alert onsets against labelled faults) are scored in `trainer.evaluation.events`, the project's one
  definition of a detection; it reuses `MONTH_NS` and `MetricsError` from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MONTH_NS",
    "MetricsError",
    "anomaly_metrics",
    "best_f1_threshold",
    "fault_metrics",
    "forecast_metrics",
    "pr_auc",
    "roc_auc",
]

MONTH_NS = 365.25 / 12 * 86400 * 10**9  # an average Gregorian month, for false alerts per turbine-month


class MetricsError(ValueError):
    """Metric inputs break their contract (shapes, lengths, labels, non-finite values)."""


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) with ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), np.float64)
    starts = np.flatnonzero(np.concatenate([[True], xs[1:] != xs[:-1]]))
    ends = np.concatenate([starts[1:], [len(x)]])
    mean_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); NaN when one class is absent."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(scores)
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _nan_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den elementwise, NaN where den == 0."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)


def _binary(scores: Any, labels: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise MetricsError(f"{name}: scores and labels must be 1-D of one length, got {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise MetricsError(f"{name}: scores must be finite")
    if y.size and not np.isin(y, (0, 1)).all():
        raise MetricsError(f"{name}: labels must be 0/1 or bool")
    return s, y.astype(bool)


def forecast_metrics(Y_true: Any, Y_hat: Any, mask: Any, feature_names: Sequence[str]) -> dict[str, Any]:
    """MAE and RMSE of (N, K, F) forecasts over present targets (mask 1), pooled and per feature.

    Returns {"mae", "rmse", "n", "per_feature": {name: {"mae", "rmse", "n"}}}; NaN where n = 0.
    """
    yt, yh, m = np.asarray(Y_true, np.float64), np.asarray(Y_hat, np.float64), np.asarray(mask)
    names = list(feature_names)
    if yt.ndim != 3 or yh.shape != yt.shape or m.shape != yt.shape or yt.shape[2] != len(names):
        raise MetricsError(
            f"forecast_metrics: Y_true, Y_hat and mask must share one (N, K, F={len(names)}) shape, got "
            f"{yt.shape}, {yh.shape}, {m.shape}"
        )
    present = m > 0.5
    err = np.subtract(yh, yt, out=np.zeros(yt.shape), where=present)  # missing targets are never read
    if not np.isfinite(err).all():
        raise MetricsError("forecast_metrics: Y_true and Y_hat must be finite where mask is 1")
    n = present.sum(axis=(0, 1))
    abs_sum, sq_sum = np.abs(err).sum(axis=(0, 1)), (err * err).sum(axis=(0, 1))
    mae, rmse = _nan_div(abs_sum, n), np.sqrt(_nan_div(sq_sum, n))
    return {
        "mae": float(_nan_div(abs_sum.sum(), n.sum())),
        "rmse": float(np.sqrt(_nan_div(sq_sum.sum(), n.sum()))),
        "n": int(n.sum()),
        "per_feature": {
            name: {"mae": float(mae[f]), "rmse": float(rmse[f]), "n": int(n[f])} for f, name in enumerate(names)
        },
    }


def _probabilities(x: Any, C: int, multilabel: bool, from_logits: bool) -> np.ndarray:
    p = np.asarray(x, np.float64)
    if p.ndim != 2 or p.shape[1] != C or not np.isfinite(p).all():
        raise MetricsError(f"fault_metrics: logits_or_probs must be finite (N, C={C}), got {p.shape}")
    if from_logits:
        if multilabel:
            return 0.5 * (1.0 + np.tanh(0.5 * p))  # the sigmoid, without overflow
        e = np.exp(p - p.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if (p < 0).any() or (p > 1).any() or (not multilabel and not np.allclose(p.sum(axis=1), 1.0, atol=1e-4)):
        raise MetricsError(
            "fault_metrics: probabilities must lie in [0, 1] (and sum to 1 per row unless multilabel); "
            "pass from_logits=True for raw model outputs"
        )
    return p


def fault_metrics(
    y_true: Any,
    logits_or_probs: Any,
    class_names: Sequence[str],
    multilabel: bool = False,
    from_logits: bool = True,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Fault-classification metrics from logits (default) or probabilities (from_logits=False) (N, C).

    Multiclass: y_true (N,) class indices; the prediction is the argmax. Returns {"n", "accuracy", "macro_f1",
    "auroc_macro", "confusion" (C, C) rows = true, "per_class"}. Multilabel: y_true (N, C) 0/1; a class is
    predicted when its probability >= threshold. Returns {"n", "micro_f1", "macro_f1", "auroc_macro",
    "per_class"}. per_class[name] = {"support", "precision", "recall", "f1", "auroc"}.

    F1 of a class is 2TP / (2TP + FP + FN); it is NaN for a class neither present in y_true nor predicted, and
    macro F1 averages the classes where it is defined (so an absent, never-predicted class neither helps nor
    hurts). Precision is NaN for a class never predicted, recall for a class absent from y_true. AUROC is one
    class against the rest on the probabilities, NaN unless the class has both positives and negatives;
    auroc_macro averages the defined ones. Every average over no defined value is NaN, as is accuracy at N = 0.
    """
    names = list(class_names)
    C = len(names)
    if C == 0 or len(set(names)) != C:
        raise MetricsError(f"fault_metrics: class_names must be distinct and non-empty, got {names}")
    p = _probabilities(logits_or_probs, C, multilabel, from_logits)
    y = np.asarray(y_true)
    N = p.shape[0]
    if multilabel:
        if y.shape != (N, C) or (y.size and not np.isin(y, (0, 1)).all()):
            raise MetricsError(f"fault_metrics (multilabel): y_true must be 0/1 of shape {(N, C)}, got {y.shape}")
        Y = y.astype(bool)
        pred = p >= threshold
    else:
        if y.shape != (N,) or (N and (y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= C)):
            raise MetricsError(
                f"fault_metrics: y_true must be ({N},) class indices in [0, {C}), got {y.shape} {y.dtype}"
            )
        Y = y[:, None] == np.arange(C)[None, :]
        pred = p.argmax(axis=1)[:, None] == np.arange(C)[None, :]
    tp, fp, fn = (Y & pred).sum(0), (~Y & pred).sum(0), (Y & ~pred).sum(0)
    f1 = _nan_div(2 * tp, 2 * tp + fp + fn)
    auroc = np.array([roc_auc(p[:, c], Y[:, c]) for c in range(C)])
    out: dict[str, Any] = {"n": N}
    if multilabel:
        out["micro_f1"] = float(_nan_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()))
    else:
        out["accuracy"] = float(_nan_div((Y & pred).any(axis=1).sum(), N))
        out["confusion"] = (Y.astype(np.int64).T @ pred.astype(np.int64)).tolist()
    out["macro_f1"] = _nan_mean(f1)
    out["auroc_macro"] = _nan_mean(auroc)
    precision, recall = _nan_div(tp, tp + fp), _nan_div(tp, tp + fn)
    out["per_class"] = {
        name: {
            "support": int(tp[c] + fn[c]),
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "auroc": float(auroc[c]),
        }
        for c, name in enumerate(names)
    }
    return out


def _nan_mean(x: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN when there is none."""
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def _desc_counts(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct score, from the highest down: the score, TP and FP when alerting at score >= it."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last index of each tie group
    tp = np.cumsum(y)[last]
    return s[last], tp, last + 1 - tp


def pr_auc(scores: Any, labels: Any) -> float:
    """Average precision sum_k (R_k - R_{k-1}) P_k over distinct thresholds (ties are one threshold).

    NaN when there is no positive.
    """
    s, y = _binary(scores, labels, "pr_auc")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    _, tp, fp = _desc_counts(s, y)
    recall = tp / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * tp / (tp + fp)))


def best_f1_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of `score >= threshold` over the distinct scores.

    On equal F1 the highest threshold (fewest alerts) wins. (NaN, NaN) when there is no positive.
    """
    s, y = _binary(scores, labels, "best_f1_threshold")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan"), float("nan")
    thr, tp, fp = _desc_counts(s, y)
    f1 = 2 * tp / (tp + fp + n_pos)  # 2TP + FP + FN = TP + FP + P
    k = int(np.argmax(f1))
    return float(thr[k]), float(f1[k])


def anomaly_metrics(val_scores: Any, val_labels: Any, test_scores: Any, test_labels: Any) -> dict[str, Any]:
    """Test ROC-AUC and PR-AUC, and precision/recall/F1 on test at the best-F1 threshold chosen on validation.

    Returns {"roc_auc", "pr_auc", "threshold", "val_f1", "precision", "recall", "f1", "n_test", "n_test_pos"}.
    The threshold is NaN without a validation positive, and so are the metrics at it; precision is NaN with no
    test alert, recall with no test positive, F1 with neither (otherwise 2TP / (2TP + FP + FN)).
    """
    vs, vy = _binary(val_scores, val_labels, "anomaly_metrics (validation)")
    ts, ty = _binary(test_scores, test_labels, "anomaly_metrics (test)")
    thr, val_f1 = best_f1_threshold(vs, vy)
    pred = ts >= thr  # all False when thr is NaN
    tp, fp, fn = int((pred & ty).sum()), int((pred & ~ty).sum()), int((~pred & ty).sum())
    at_thr = np.isfinite(thr)
    return {
        "roc_auc": roc_auc(ts, ty),
        "pr_auc": pr_auc(ts, ty),
        "threshold": thr,
        "val_f1": val_f1,
        "precision": float(_nan_div(tp, tp + fp)) if at_thr else float("nan"),
        "recall": float(_nan_div(tp, tp + fn)) if at_thr else float("nan"),
        "f1": float(_nan_div(2 * tp, 2 * tp + fp + fn)) if at_thr else float("nan"),
        "n_test": int(ts.size),
        "n_test_pos": int(ty.sum()),
    }
