"""Benchmark: training throughput, data-wait share, validation losses per head and anomaly ROC-AUC.

    python bench/bench_train.py [--turbines 6] [--days 120] [--epochs 2] [--steps-per-epoch 150] [OVERRIDES...]

OVERRIDES are config overrides for training and scoring, e.g. `train.group_mask_prob=0.5
infer.score_masks=group` to train with group masks and score with one pass per feature group.

On the built-in simulator (labelled faults): simulate -> scada-prepare -> scada-train with the default model
(L=144, D=64) on this machine's device -> the deterministic scoring pass over every test window. Prints:
- training windows/s, and the share of step time spent waiting for data (from the step log);
- data loading alone: batched `__getitems__` vs a per-window `__getitem__` + default collate (the baseline);
- validation losses per head of the best checkpoint;
- ROC-AUC of the anomaly score for fault windows vs normal windows on the test split, overall and per class, for
  the aggregations masked_mean, recent_weighted and feature_topk (error levels fitted on the validation split).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

ROOT = Path(__file__).resolve().parents[1]


def _loader_rate(ds, batched: bool, n_batches: int, batch_size: int) -> float:
    if batched:
        dl = DataLoader(ds, batch_size=batch_size, shuffle=True, collate_fn=lambda b: b)
    else:

        class PerItem(torch.utils.data.Dataset):
            def __len__(self):
                return len(ds)

            def __getitem__(self, i):
                return ds[i]

        dl = DataLoader(PerItem(), batch_size=batch_size, shuffle=True, collate_fn=default_collate)
    t = time.perf_counter()
    n = 0
    for i, b in enumerate(dl):
        n += len(b["X"])
        if i + 1 >= n_batches:
            break
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turbines", type=int, default=6)
    ap.add_argument("--days", type=float, default=120)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps-per-epoch", type=int, default=150)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/scada_bench_train"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--score-every", type=int, default=1, help="score every k-th test window (all fault windows)")
    ap.add_argument("--halflife", type=float, default=6.0, help="half-life (steps) of the recent_weighted score")
    ap.add_argument("--k", type=int, default=3, help="k of the feature_topk score")
    ap.add_argument("overrides", nargs="*", help="extra config overrides, e.g. train.group_mask_prob=0.5")
    a = ap.parse_args()

    from scada_tcn.trainer.calibration.fit import fit_feature_scale
    from scada_tcn.trainer.config import load_config
    from scada_tcn.trainer.data.prepare import prepare
    from scada_tcn.trainer.data.store import PreparedData
    from scada_tcn.trainer.evaluation.metrics import roc_auc
    from scada_tcn.trainer.model.network import ModelConfig, MultiTaskTCN
    from scada_tcn.trainer.model.reference import scoring_module
    from scada_tcn.trainer.sources.simulator import write_synthetic
    from scada_tcn.trainer.training.fit import fit, load_checkpoint

    synth = a.workdir / "synth"
    if not (synth / "scada.csv").is_file():
        write_synthetic(synth, a.turbines, a.days, 0, "2024-01-01", "csv")
    cfg = load_config(
        ROOT / "configs" / "config.yaml",
        [
            f"data.paths.raw_dir={synth / 'scada.csv'}",
            f"data.paths.labels_file={synth / 'labels.csv'}",
            f"data.paths.processed_dir={a.workdir / 'processed'}",
            f"output_dir={a.workdir / 'run'}",
            f"train.epochs={a.epochs}",
            f"train.max_steps_per_epoch={a.steps_per_epoch}",
            f"device={a.device}",
            "train.early_stopping_patience=100",
            *a.overrides,
        ],
    )
    prepare(cfg)
    log = a.workdir / "run" / "logs" / "train.jsonl"
    log.unlink(missing_ok=True)
    t = time.perf_counter()
    best = fit(cfg, log=print)
    wall = time.perf_counter() - t
    steps = [json.loads(x) for x in log.read_text().splitlines()]
    steps = [s for s in steps if s["event"] == "step"][5:]  # skip warm-up steps
    wait = sum(s["data_wait_s"] for s in steps)
    comp = sum(s["compute_s"] for s in steps)
    wins = sum(s["batch_size"] for s in steps)
    print(
        f"\ntraining: {wins / (wait + comp):.1f} windows/s (batch {cfg.train.batch_size}, L={cfg.data.windowing.L}, "
        f"D={cfg.model.tcn.D}, device {cfg.device}, torch threads {torch.get_num_threads()}); "
        f"data wait {100 * wait / (wait + comp):.2f}% of step time; whole fit incl. validation {wall:.0f} s"
    )

    data = PreparedData(cfg)
    ds = data.dataset(cfg, "train")
    fast = _loader_rate(ds, True, 50, cfg.train.batch_size)
    slow = _loader_rate(ds, False, 50, cfg.train.batch_size)
    print(
        f"data loading alone: batched {fast:,.0f} windows/s vs per-window + default collate {slow:,.0f} windows/s "
        f"({fast / slow:.1f}x)"
    )

    ck = load_checkpoint(best)
    print(f"best checkpoint (epoch {ck['epoch']}): validation losses {json.dumps(ck['val_losses'])}")
    model = MultiTaskTCN(ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model_state"])
    model.eval()
    inf = cfg.infer
    test = data.dataset(cfg, "test")
    y = test.y
    keep = np.flatnonzero((y > 0) | (np.arange(len(y)) % a.score_every == 0))
    y = y[keep]
    for agg, halflife, k in (
        ("masked_mean", None, None),
        ("recent_weighted", a.halflife, None),
        ("feature_topk", None, a.k),
    ):
        scorer = scoring_module(model, cfg, agg, halflife, k)
        if agg == "masked_mean":
            print(f"scoring masks: {inf.score_masks} ({scorer.P} passes, {len(scorer.context)} context features)")
        fit_feature_scale(scorer, data, cfg)  # feature_topk only: error levels of the validation split
        scores = []
        with torch.no_grad():
            for i in range(0, len(keep), 256):
                b = test.__getitems__(keep[i : i + 256].tolist())
                scores.append(scorer(b["X"], b["M_miss"], b["Flags"]).s_now.numpy())
        s = np.concatenate(scores)
        label = agg if halflife is None else f"{agg} (half-life {halflife:g} steps)"
        label = label if k is None else f"{agg} (k={k})"
        print(
            f"score {label}: {len(s):,} test windows ({int((y > 0).sum()):,} fault); ROC-AUC fault vs normal "
            f"{roc_auc(s, y > 0):.3f}"
        )
        for k, name in enumerate(cfg.data.labels.class_names[1:], 1):
            sel = (y == 0) | (y == k)
            if (y == k).any():
                print(f"  {name:<18} {int((y == k).sum()):>6} windows  ROC-AUC {roc_auc(s[sel], y[sel] == k):.3f}")


if __name__ == "__main__":
    main()
