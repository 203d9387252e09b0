"""Evaluation plots: valid, non-trivial PNGs of the expected size, without pyplot figures left behind."""

import struct

import matplotlib.pyplot as plt
import numpy as np
import pytest

from scada_tcn.trainer.evaluation.plots import PlotError, plot_contribution_heatmap, plot_score_timeline

DT = 600 * 10**9
TS = 1_704_067_200 * 10**9 + DT * np.arange(3 * 144)  # 3 days of 10-minute steps


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def test_score_timeline_png(tmp_path):
    rng = np.random.default_rng(0)
    score = 1 + 0.2 * rng.standard_normal(TS.size)
    score[200:260] += np.linspace(0, 3, 60)
    kept = score.copy()
    figs = plt.get_fignums()
    out = plot_score_timeline(
        tmp_path / "timeline.png",
        TS,
        score,
        2.0,
        [(int(TS[215]), int(TS[262]))],
        [(int(TS[230]), int(TS[280]), "gearbox_overheat")],
        "T01",
    )
    data = out.read_bytes()
    assert _png_size(data) == (1200, 400) and len(data) > 20_000
    assert plt.get_fignums() == figs and np.array_equal(score, kept)
    per_step = plot_score_timeline(tmp_path / "per_step.png", TS, score, np.full(TS.size, 2.0), [], [], "T01")
    assert _png_size(per_step.read_bytes()) == (1200, 400)
    gaps = score.copy()
    gaps[:50] = np.nan  # fleet-relative scores are NaN where no other turbine was scored
    with_gaps = plot_score_timeline(tmp_path / "gaps.png", TS, gaps, 2.0, [], [], "T01")
    assert _png_size(with_gaps.read_bytes()) == (1200, 400)


def test_a_score_far_above_its_threshold_is_drawn_on_a_log_scale_above_it(tmp_path):
    """A user's farm published a score of 1.4e6 (a level near zero): on a linear axis every other step, the
    threshold and the crossings lay on one flat line. At LOG_ABOVE x the threshold the axis turns logarithmic
    above the threshold, linear below it; ordinary timelines keep the linear axis."""
    from scada_tcn.trainer.evaluation.plots import LOG_ABOVE, score_axis

    rng = np.random.default_rng(0)
    score = 0.5 + 0.2 * rng.standard_normal(TS.size)
    thr = np.full(TS.size, 1.0)
    assert score_axis(score, thr)[0] == "linear"
    score[100:110] = 1.4e6
    scale, (lo, hi, linear_to) = score_axis(score, thr)
    assert scale == "symlog" and linear_to == 1.0 and lo < float(score.min()) and hi > 1.4e6
    assert score_axis(np.full(TS.size, LOG_ABOVE * 0.99), thr)[0] == "linear"
    assert score_axis(np.full(TS.size, np.nan), thr)[0] == "linear"  # no score at all: the threshold alone
    out = plot_score_timeline(tmp_path / "peak.png", TS, score, 1.0, [(int(TS[100]), int(TS[110]))], [], "T01")
    assert _png_size(out.read_bytes()) == (1200, 400)


def test_contribution_heatmap_png(tmp_path):
    contrib = np.abs(np.random.default_rng(1).standard_normal((72, 6)))
    contrib[36:, 4] += 3.0
    out = plot_contribution_heatmap(tmp_path / "heat.png", TS[:72], contrib, list("abcdef"), int(TS[36]), "T01")
    data = out.read_bytes()
    assert _png_size(data) == (1200, 300) and len(data) > 10_000  # height 1.5 + 0.25 * 6 inches at 100 dpi


def test_plots_refuse_mismatched_inputs(tmp_path):
    with pytest.raises(PlotError, match="score and threshold must be scalar or \\(432,\\)"):
        plot_score_timeline(tmp_path / "x.png", TS, np.zeros(3), 1.0, [], [], "x")
    with pytest.raises(PlotError, match="strictly increasing"):
        plot_score_timeline(tmp_path / "x.png", TS[::-1], np.zeros(TS.size), 1.0, [], [], "x")
    with pytest.raises(PlotError, match="contrib must be finite \\(432, F=2\\)"):
        plot_contribution_heatmap(tmp_path / "x.png", TS, np.zeros((TS.size, 3)), ["a", "b"], int(TS[0]), "x")
    assert not (tmp_path / "x.png").exists()
