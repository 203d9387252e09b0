"""RUL on NASA C-MAPSS FD001/FD003 with the SCADA pipeline, beside published figures.

For each subset: `trainer.sources.cmapss.write_cmapss` -> `scada-prepare` (configs/data/cmapss_fd00x.yaml) -> for
each seed a
short `scada-train` -> the RUL head's prediction at each test unit's last cycle -> RMSE and the PHM08 score
(`trainer.evaluation.rul_eval`) against the true RUL. Baseline measured in the same run: ridge regression from the last
step's features (same prepared arrays, same capped target). Published RMSEs (same protocol: cap 125, last cycle):
LSTM 16.14 (FD001) / 16.18 (FD003), Zheng et al. 2017; deep CNN about 12.6 (FD001), Li et al. 2018.

    python bench/bench_cmapss.py --seeds 2 --epochs 5          # a few minutes per seed on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scada_tcn.trainer.config import load_config  # noqa: E402
from scada_tcn.trainer.data.prepare import prepare  # noqa: E402
from scada_tcn.trainer.data.store import PreparedData  # noqa: E402
from scada_tcn.trainer.evaluation.rul_eval import rul_metrics  # noqa: E402
from scada_tcn.trainer.model.reference import build_reference  # noqa: E402
from scada_tcn.trainer.sources.cmapss import write_cmapss  # noqa: E402
from scada_tcn.trainer.training.fit import fit, load_checkpoint  # noqa: E402

PUBLISHED = {  # RMSE at the last cycle, cap 125 (the brief's figures)
    "FD001": [("LSTM, Zheng et al. 2017", 16.14), ("deep CNN, Li et al. 2018", 12.6)],
    "FD003": [("LSTM, Zheng et al. 2017", 16.18)],
}


def _last_windows(data: PreparedData, cfg, split: str = "test"):
    """The window ending at each unit's last step: batch dict and true RUL (units sorted)."""
    ds = data.dataset(cfg, split)
    rows = [int(np.flatnonzero(ds.codes == c)[np.argmax(ds.t_end[ds.codes == c])]) for c in range(len(ds.turbines))]
    batch = ds.__getitems__(rows)
    for c, r in enumerate(rows):  # the protocol scores the last cycle: check the window really ends there
        ts = np.load(data.dir / "turbines" / ds.turbines[c] / "timestamps.npy")
        if ds.t_end[r] != ts[-1]:
            raise SystemExit(f"{ds.turbines[c]}: the last test window does not end at the last cycle")
    return batch, batch["rul"].numpy().astype(np.float64)


def _ridge_baseline(data: PreparedData, cfg, cap: float, alpha: float = 1.0) -> np.ndarray:
    """Ridge from the last step's features of every training window to min(rul, cap); predictions per test unit."""
    b = data.dataset(cfg, "train").__getitems__(list(range(len(data.dataset(cfg, "train")))))
    X = np.concatenate([b["X"][:, -1].numpy(), np.ones((len(b["rul"]), 1))], axis=1).astype(np.float64)
    y = np.minimum(b["rul"].numpy(), cap)
    w = np.linalg.solve(X.T @ X + alpha * np.eye(X.shape[1]), X.T @ y)
    t, _ = _last_windows(data, cfg)
    Xt = np.concatenate([t["X"][:, -1].numpy(), np.ones((t["X"].shape[0], 1))], axis=1)
    return Xt @ w


def run_subset(subset: str, args: argparse.Namespace) -> dict:
    work = Path(args.work) / subset.lower()
    raw = write_cmapss(args.src, subset, work / "raw")
    base = [
        f"data=cmapss_{subset.lower()}",
        f"data.paths.raw_dir={work / 'raw' / 'cmapss.csv'}",
        f"data.paths.labels_file={work / 'raw' / 'labels.csv'}",
        f"data.paths.processed_dir={work / 'prepared'}",
        "device=cpu",
        f"train.epochs={args.epochs}",
        f"model.tcn.D={args.D}",
        f"data.windowing.stride={args.stride}",
    ]  # include_last keeps each test unit's last-cycle window
    cfg = load_config(ROOT / "configs" / "config.yaml", base)
    prepare(cfg)
    data = PreparedData(cfg)
    cap = cfg.data.rul.cap
    _, truth = _last_windows(data, cfg)
    baseline = rul_metrics(_ridge_baseline(data, cfg, cap), truth, cap=cap)
    runs = []
    for seed in range(args.seeds):
        cfg_s = load_config(
            ROOT / "configs" / "config.yaml", [*base, f"seed={seed}", f"output_dir={work / f'run_{seed}'}"]
        )
        t0 = time.perf_counter()
        tag = f"  [{subset} seed {seed}]"
        best = fit(cfg_s, log=lambda m, tag=tag: print(f"{tag} {m}", file=sys.stderr, flush=True))
        ref = build_reference(load_checkpoint(best), cfg_s)
        batch, truth = _last_windows(data, cfg_s)
        with torch.no_grad():
            outs = dict(zip(ref.clean.output_names, ref.clean(batch["X"], batch["M_miss"], batch["Flags"])))
        pred = outs["rul"][:, 0].double().numpy()
        runs.append({**rul_metrics(pred, truth, cap=cap), "train_s": time.perf_counter() - t0})
        print(
            f"  [{subset} seed {seed}] RMSE {runs[-1]['rmse']:.2f}  PHM08 {runs[-1]['phm08']:.0f}  "
            f"({runs[-1]['train_s']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return {"subset": subset, "units": raw["test_units"], "runs": runs, "baseline": baseline}


def _ms(x: list[float], fmt: str) -> str:
    return f"{np.mean(x):{fmt}} ± {np.std(x, ddof=1) if len(x) > 1 else 0.0:{fmt}}"


def report(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"C-MAPSS RUL at each test unit's last cycle, cap 125, L=30, D={args.D}, stride {args.stride}, "
        f"{args.epochs} epochs per seed (CPU, {torch.get_num_threads()} threads); mean ± std over seeds",
        f"{'subset':<7} {'model':<34} {'seeds':>5} {'RMSE':>15} {'PHM08':>17} {'RMSE vs min(true,125)':>22}",
    ]
    for r in results:
        runs, b = r["runs"], r["baseline"]
        lines.append(
            f"{r['subset']:<7} {'scada-tcn (this run)':<34} {len(runs):>5} "
            f"{_ms([x['rmse'] for x in runs], '.2f'):>15} {_ms([x['phm08'] for x in runs], '.0f'):>17} "
            f"{_ms([x['vs_capped_truth']['rmse'] for x in runs], '.2f'):>22}"
        )
        lines.append(
            f"{'':<7} {'ridge on last step (this run)':<34} {'-':>5} {b['rmse']:>15.2f} {b['phm08']:>17.0f} "
            f"{b['vs_capped_truth']['rmse']:>22.2f}"
        )
        for name, rmse_pub in PUBLISHED.get(r["subset"], []):
            lines.append(f"{'':<7} {name + ' (published)':<34} {'-':>5} {rmse_pub:>15.2f} {'-':>17} {'-':>22}")
        lines.append(
            f"{'':<7} ratio scada-tcn RMSE / ridge: {np.mean([x['rmse'] for x in runs]) / b['rmse']:.2f}; "
            f"{r['units']} test units; train+predict {np.mean([x['train_s'] for x in runs]):.0f} s per seed"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subsets", nargs="+", default=["FD001", "FD003"], choices=["FD001", "FD003"])
    p.add_argument("--seeds", type=int, default=2, help="seeds per subset (0, 1, ...)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--D", type=int, default=32, help="TCN channels")
    p.add_argument(
        "--stride",
        type=int,
        default=2,
        help="window stride (halves the epoch at 2; the last cycle of every unit is still scored)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--src", default=str(ROOT.parent / "shared" / "data" / "nasa_cmapss"))
    p.add_argument("--work", default="/tmp/bench_cmapss", help="converted, prepared data and runs go here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = [run_subset(s, args) for s in args.subsets]
    print(report(results, args))


if __name__ == "__main__":
    main()
