"""scada-train end to end on a small prepared set: checkpoints, logs, resume, reproducibility, refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scada_tcn.runtime.errors import SpecError
from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.data.prepare import prepare
from scada_tcn.trainer.training.fit import fit, load_checkpoint
from tests.test_prepare import _cfg, _table

SMALL = [
    "model.tcn.D=16",
    "model.tcn.num_blocks=2",
    "model.heads.forecast.hidden=16",
    "model.heads.fault.hidden=16",
    "train.batch_size=32",
    "train.max_steps_per_epoch=6",
    "train.scheduler.warmup_steps=2",
    "device=cpu",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    cfg = _cfg(tmp, _table(days=24))
    prepare(cfg)
    return tmp


def _train_cfg(tmp: Path, out: str, *extra):
    return _cfg(tmp, _table(days=24), *SMALL, f"output_dir={tmp / out}", *extra)


def _losses(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "logs" / "train.jsonl").read_text().splitlines()]


def test_training_writes_checkpoints_and_step_logs(prepared):
    cfg = _train_cfg(prepared, "run_a", "train.epochs=2")
    best = fit(cfg, log=lambda m: None)
    assert best == prepared / "run_a" / "checkpoints" / "best.pt" and best.is_file()
    ck = load_checkpoint(prepared / "run_a" / "checkpoints" / "last.pt")  # weights_only=True inside
    assert ck["epoch"] == 2 and ck["step"] == 12
    assert ck["feature_registry"]["feature_names"] and ck["flag_registry"]["flag_names"] == cfg.flags.flag_names
    assert ck["scaler"]["feature_names"] == ck["feature_registry"]["feature_names"]
    assert len(ck["data_fingerprint"]) == 64 and ck["cfg"]["train"]["epochs"] == 2
    steps = [r for r in _losses(prepared / "run_a") if r["event"] == "step"]
    assert len(steps) == 12
    for r in steps:
        assert {"loss", "recon", "pred", "fault", "mask_rate", "n_present", "n_masked", "batch_size"} <= set(r)
        assert 0 < r["n_masked"] < r["n_present"] and np.isfinite(r["loss"])
    assert (prepared / "run_a" / "config.yaml").is_file()


def test_same_seed_same_losses_and_resume_reproduces(prepared):
    # a constant learning rate, so that a 1-epoch run is a prefix of the 3-epoch run
    const = "train.scheduler.name=none"
    full = _train_cfg(prepared, "full", "train.epochs=3", const)
    fit(full, log=lambda m: None)
    again = _train_cfg(prepared, "again", "train.epochs=1", const)
    fit(again, log=lambda m: None)
    a = [r["loss"] for r in _losses(prepared / "full") if r["event"] == "step"]
    b = [r["loss"] for r in _losses(prepared / "again") if r["event"] == "step"]
    assert a[: len(b)] == b  # same seed, same data -> identical first losses
    resumed = _train_cfg(prepared, "again", "train.epochs=3", const)
    fit(resumed, resume=str(prepared / "again" / "checkpoints" / "last.pt"), log=lambda m: None)
    c = [r["loss"] for r in _losses(prepared / "again") if r["event"] == "step"]
    assert c == a
    sa = load_checkpoint(prepared / "full" / "checkpoints" / "last.pt")["model_state"]
    sc = load_checkpoint(prepared / "again" / "checkpoints" / "last.pt")["model_state"]
    assert all(torch.equal(sa[k], sc[k]) for k in sa)


def test_registry_mismatch_is_refused(prepared):
    cfg = _train_cfg(prepared, "bad", "features.rolling.windows=[6]")
    with pytest.raises(SpecError, match="feature order differs"):
        fit(cfg, log=lambda m: None)


def test_resume_from_a_checkpoint_of_another_registry_is_refused(prepared, tmp_path):
    fit(_train_cfg(prepared, "base", "train.epochs=1"), log=lambda m: None)
    other = _cfg(tmp_path, _table(days=24), *SMALL, "features.deltas.enabled=false", f"output_dir={tmp_path / 'o'}")
    prepare(other)
    with pytest.raises(SpecError, match="checkpoint .* feature order differs"):
        fit(other, resume=str(prepared / "base" / "checkpoints" / "last.pt"), log=lambda m: None)


def test_training_without_prepared_data_says_what_to_run(tmp_path):
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "config.yaml",
        [f"data.paths.processed_dir={tmp_path / 'none'}"],
    )
    with pytest.raises(SpecError, match="run scada-prepare"):
        fit(cfg, log=lambda m: None)
