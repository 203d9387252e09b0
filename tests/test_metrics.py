"""Metrics against hand-computed values."""

import numpy as np

from trainer.metrics import roc_auc


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
