"""Benchmark: onnxruntime against torch eager for the clean and scoring passes, plus bundle size and parity.

    python bench/bench_onnx.py                                   # demo-size model (configs/config.yaml), random weights
    python bench/bench_onnx.py --checkpoint artifacts/demo/checkpoints/best.pt   # a trained model, full bundle

Both backends run in this process on the same inputs, one window (B=1) and a batch of 64, with 1 and 2 threads
(torch.set_num_threads and onnxruntime's intra-op threads), and every ratio is torch time / onnxruntime time
measured in the same run. Latency is the median of `--repeats` calls after warm-up. Without a checkpoint the model
has the demo config's dims with random weights (latency does not depend on the weights); the bundle size is
then the two graphs plus a bundle.json written by a full export of a checkpoint, so pass --checkpoint for it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scada_tcn.export.onnx_export import export_graphs  # noqa: E402
from scada_tcn.export.verify import verify_graphs  # noqa: E402
from scada_tcn.trainer.model.reference import CleanGraph, ReferenceModules, build_reference, checkpoint_config  # noqa: E402


def demo_modules() -> ReferenceModules:
    """The demo config's model (F, R from its feature and flag config) with random weights."""
    from scada_tcn.trainer.config import load_config
    from scada_tcn.trainer.config.derive import spec_from_config
    from scada_tcn.trainer.model.network import MultiTaskTCN
    from scada_tcn.trainer.training.fit import model_config

    cfg = load_config(ROOT / "configs" / "config.yaml", ["device=cpu"])
    spec = spec_from_config(cfg)
    torch.manual_seed(0)
    model = MultiTaskTCN(model_config(cfg, spec.n_features, spec.n_flags))
    ckpt = {"model_config": model.cfg.to_dict(), "model_state": model.state_dict()}
    return build_reference(ckpt, cfg)


def windows(mods: ReferenceModules, B: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    F, R = mods.model.cfg.F, mods.model.cfg.R
    M = (rng.random((B, mods.L, F)) > 0.1).astype(np.float32)
    X = (rng.standard_normal((B, mods.L, F)) * M).astype(np.float32)
    return X, M, (rng.random((B, mods.L, R)) > 0.8).astype(np.float32)


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def session(graph: bytes, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(graph, sess_options=so, providers=["CPUExecutionProvider"])


def latency_table(mods: ReferenceModules, graphs: dict[str, bytes], threads: list[int], repeats: int) -> list[dict]:
    rows = []
    clean: CleanGraph = mods.graph
    for t in threads:
        torch.set_num_threads(t)
        sess = {g: session(b, t) for g, b in graphs.items()}
        for B in (1, 64):
            X, M, Fl = windows(mods, B)
            X_in = np.concatenate([np.where(M > 0.5, X, 0.0).astype(np.float32), M, np.ones_like(M), Fl], axis=-1)
            tX, tM, tF, tX_in = (torch.from_numpy(a) for a in (X, M, Fl, X_in))
            feeds = {"clean": {"X_in": X_in}, "scoring": {"X": X, "M_miss": M, "Flags": Fl}}
            cases = {
                "clean": (partial(clean, tX_in), partial(sess["clean"].run, None, feeds["clean"])),
                "scoring": (partial(mods.scoring, tX, tM, tF), partial(sess["scoring"].run, None, feeds["scoring"])),
            }
            for name, (torch_fn, ort_fn) in cases.items():
                with torch.no_grad():
                    t_torch = median_ms(torch_fn, repeats if B == 1 else max(5, repeats // 4))
                t_ort = median_ms(ort_fn, repeats if B == 1 else max(5, repeats // 4))
                rows.append(
                    {"threads": t, "B": B, "pass": name, "torch_ms": t_torch, "ort_ms": t_ort, "ratio": t_torch / t_ort}
                )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    ap.add_argument("--checkpoint", help="a scada-train checkpoint: export a full bundle (with its prepared data)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=50, help="timed calls per case (B=64 uses a quarter)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.checkpoint:
            from scada_tcn.export.bundle_writer import export_bundle
            from scada_tcn.trainer.training.fit import load_checkpoint

            torch.set_num_threads(1)
            bundle = export_bundle(args.checkpoint, out_dir=Path(tmp) / "bundle")
            ckpt = load_checkpoint(args.checkpoint)
            mods = build_reference(ckpt, checkpoint_config(ckpt))
            graphs = {g: (bundle.path / f"{g}.onnx").read_bytes() for g in ("clean", "scoring")}
            parity = bundle.parity
            sizes = {p.name: p.stat().st_size for p in bundle.path.iterdir()}
        else:
            mods = demo_modules()
            graphs = export_graphs(mods)
            parity = verify_graphs(mods, graphs, windows(mods, 64, seed=1), extreme=20.0)
            sizes = {f"{g}.onnx": len(b) for g, b in graphs.items()}
        export_s = time.perf_counter() - t0
        cfg = mods.model.cfg
        n_params = sum(p.numel() for p in mods.model.parameters())
        print(
            f"model: L={mods.L} F={cfg.F} R={cfg.R} K={cfg.K} C={cfg.C} D={cfg.D} blocks={cfg.num_blocks} "
            f"({n_params:,} parameters), scoring passes P={mods.scoring.P}; export took {export_s:.1f} s"
        )
        print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {torch.get_num_threads()} torch threads")

        print("\nlatency (median ms), ratio = torch eager / onnxruntime, same run:")
        print(f"{'threads':>7} {'B':>3} {'pass':>8} {'torch':>9} {'ort':>9} {'ratio':>6}")
        for r in latency_table(mods, graphs, args.threads, args.repeats):
            print(
                f"{r['threads']:>7} {r['B']:>3} {r['pass']:>8} {r['torch_ms']:>9.3f} {r['ort_ms']:>9.3f} "
                f"{r['ratio']:>6.2f}"
            )

        print("\nbundle size on disk:")
        for name, n in sorted(sizes.items()):
            print(f"  {name:<14} {n / 1024:8.1f} KiB")
        print(f"  {'total':<14} {sum(sizes.values()) / 1024:8.1f} KiB")

        print(
            f"\nparity (atol={parity.atol:g}, rtol={parity.rtol:g}, extreme |x|={parity.extreme:g}, "
            f"passed={parity.passed}): max over all cases"
        )
        for name, s in parity.outputs.items():
            print(f"  {name:<22} max_abs {s['max_abs']:.2e}  max_rel {s['max_rel']:.2e}  n_bad {s['n_bad']}")


if __name__ == "__main__":
    main()
