"""Shared fixtures: a tiny simulated farm, prepared, and a tiny model trained on it (session-scoped, built once).

The tiny setup keeps every contract of the real one (all feature kinds, status flags, labelled faults, time
splits) at a size that trains in seconds on a 2-core CPU: L=24 steps (4 h), K=3, D=16, 2 blocks (receptive field
13 <= L: streamable).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "config.yaml"
SHARED_DATA = ROOT.parent / "shared" / "data"

TINY_OVERRIDES = [
    "data.windowing.L=24",
    "data.windowing.K=3",
    "data.windowing.stride=2",
    "data.splits.train_range=[2024-01-01T00:00:00+00:00,2024-01-21T00:00:00+00:00]",
    "data.splits.val_range=[2024-01-21T00:00:00+00:00,2024-01-28T00:00:00+00:00]",
    "data.splits.test_range=[2024-01-28T00:00:00+00:00,2024-02-15T00:00:00+00:00]",
    "features.rolling.windows=[3,6]",
    "model.tcn.D=16",
    "model.tcn.num_blocks=2",
    "model.heads.forecast.hidden=16",
    "model.heads.fault.hidden=16",
    "train.batch_size=32",
    "train.epochs=2",
    "train.max_steps_per_epoch=8",
    "train.scheduler.warmup_steps=2",
    "infer.calibration.min_windows=20",
    "infer.score=window_mean",  # the window-mean path; tests/test_per_signal.py trains and exports per signal
    "infer.score_masks=element",
    "train.group_mask_prob=0.0",
    "device=cpu",
]


@dataclass(frozen=True)
class TinyRun:
    root: Path  # everything below lives here
    synth_dir: Path  # scada.csv, labels.csv
    overrides: list[str]  # config overrides that describe this run (paths included)
    checkpoint: Path  # best.pt

    def cfg(self, *extra: str):
        from scada_tcn.trainer.config import load_config

        return load_config(CONFIG, [*self.overrides, *extra])


# per-signal scoring of the tiny farm: 1 h EWMA, stopped steps skipped, power monitored below its prediction
SIGNALS = ["infer.score=per_signal", "infer.signals.halflife_steps=6", "infer.signals.skip_flags=[stopped]",
           "infer.signals.directions.power=below"]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """4 simulated turbines x 45 days -> prepared -> 2 short epochs of training."""
    from scada_tcn.trainer.config import load_config
    from scada_tcn.trainer.data.prepare import prepare
    from scada_tcn.trainer.sources.simulator import write_synthetic
    from scada_tcn.trainer.training.fit import fit

    root = tmp_path_factory.mktemp("tiny_run")
    synth = root / "synth"
    write_synthetic(synth, 4, 45, seed=7, start="2024-01-01", fmt="csv")
    overrides = [
        *TINY_OVERRIDES,
        f"data.paths.raw_dir={synth / 'scada.csv'}",
        f"data.paths.labels_file={synth / 'labels.csv'}",
        f"data.paths.processed_dir={root / 'processed'}",
        f"output_dir={root / 'run'}",
    ]
    cfg = load_config(CONFIG, overrides)
    prepare(cfg)
    best = fit(cfg, log=lambda m: None)
    return TinyRun(root=root, synth_dir=synth, overrides=overrides, checkpoint=best)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run) -> Path:
    """The tiny model exported once (parity checked) for every test that only reads a bundle."""
    from scada_tcn.export.bundle_writer import export_bundle

    out = tiny_run.root / "bundle"
    export_bundle(tiny_run.checkpoint, out_dir=out)
    return out


@pytest.fixture(scope="session")
def signal_run(tiny_run, tmp_path_factory) -> tuple[Path, list[str]]:
    """The tiny farm, a model trained with group masks, exported per signal with a step graph (parity checked) by
    the scada-export CLI, whose output is kept in <root>/export.txt: (bundle dir, overrides). The streaming engine's
    bundle for every runtime test that runs both engines."""
    from typer.testing import CliRunner

    from scada_tcn.export.cli import app
    from scada_tcn.trainer.config import load_config
    from scada_tcn.trainer.training.fit import fit

    root = tmp_path_factory.mktemp("signals")
    overrides = [*tiny_run.overrides, f"output_dir={root / 'run'}", "train.group_mask_prob=0.5", *SIGNALS]
    best = fit(load_config(CONFIG, overrides), log=lambda m: None)
    result = CliRunner().invoke(app, [str(best), "--out", str(root / "bundle"), *SIGNALS])
    if result.exit_code != 0:
        raise RuntimeError(f"scada-export failed ({result.exit_code}): {result.output}")
    (root / "export.txt").write_text(result.output)
    return root / "bundle", overrides


def shared_data_or_skip(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the real data sets live in ../shared/data beside the repository")
    return path


@pytest.fixture()
def broker(tmp_path):
    """A Mosquitto of its own on a free loopback port (skips the test when mosquitto is not installed)."""
    from tests.mosquitto import Broker

    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture(autouse=True)
def _no_daemon_process_left():
    """A daemon process a failed test did not stop is killed when the test ends (`DaemonProcess.kill_all`)."""
    yield
    helpers = sys.modules.get("tests.mosquitto")
    if helpers is not None:
        helpers.DaemonProcess.kill_all()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test models gain nothing from intra-op threads, and OpenMP spin-waits make them far slower on a
    busy 2-core machine. Only applied when torch is installed (the runtime-only install has no torch)."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
