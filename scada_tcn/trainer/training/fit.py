"""`scada-train`: the training loop (spec F trainer), top to bottom: data, model, optimizer, epochs, checkpoints.

Reproducibility: every epoch reseeds dropout, the Stream-A mask generator and the shuffling from
(seed, epoch), and validation masks come from one fixed seed, so validation losses are comparable across
epochs and resuming from `last.pt` (saved at the end of each epoch) reproduces the uninterrupted run.
Checkpoints hold only tensors and plain containers: `torch.load(path, weights_only=True)` reads them.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from scada_tcn.runtime.errors import SpecError
from scada_tcn.runtime.registry import FeatureRegistry, FlagRegistry
from scada_tcn.runtime.spec import with_hold_default
from scada_tcn.trainer.config import RootCfg, save_resolved, to_container
from scada_tcn.trainer.config.groups import feature_groups
from scada_tcn.trainer.data.dataset import make_loader
from scada_tcn.trainer.data.registry import (
    assert_registry_compatible,
)
from scada_tcn.trainer.data.store import PreparedData
from scada_tcn.trainer.model.geometry import resolve_dilations
from scada_tcn.trainer.model.network import ModelConfig, MultiTaskTCN
from scada_tcn.trainer.training.step import TrainStepConfig, eval_losses, train_step

CHECKPOINT_FORMAT = 1
VAL_MASK_SEED = 20_240_601


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device; use device=cpu or device=auto")
    return torch.device(name)


def model_config(cfg: RootCfg, F: int, R: int) -> ModelConfig:
    t, h = cfg.model.tcn, cfg.model.heads
    return ModelConfig(
        F=F,
        R=R,
        K=cfg.data.windowing.K,
        C=h.fault.C,
        D=t.D,
        kernel_size=t.kernel_size,
        num_blocks=t.num_blocks,
        dilations=resolve_dilations(t.dilations, t.num_blocks, t.dilation_list),
        dropout=t.dropout,
        norm=t.norm,
        forecast_enabled=h.forecast.enabled,
        fault_enabled=h.fault.enabled,
        fault_multilabel=h.fault.multilabel,
        rul_enabled=h.rul.enabled,
        forecast_hidden=h.forecast.hidden,
        fault_hidden=h.fault.hidden,
        rul_hidden=h.rul.hidden,
        rul_scale=float(cfg.data.rul.cap) if h.rul.enabled else 1.0,
    )


def step_config(cfg: RootCfg, flag_names: list[str], device: torch.device) -> TrainStepConfig:
    loss, h = cfg.train.loss, cfg.model.heads
    rw = loss.regime_weighting
    return TrainStepConfig(
        p_mask=cfg.train.p_mask,
        fill_value=cfg.features.fill_value_c,
        huber_delta=loss.huber_delta,
        lambda_recon=loss.lambdas.recon,
        lambda_pred=loss.lambdas.pred,
        lambda_fault=loss.lambdas.fault,
        forecast_enabled=h.forecast.enabled,
        fault_enabled=h.fault.enabled,
        fault_multilabel=h.fault.multilabel,
        rul_enabled=h.rul.enabled,
        lambda_rul=loss.lambdas.rul,
        rul_cap=float(cfg.data.rul.cap),
        regime_weight_map={flag_names.index(k): v for k, v in rw.weight_map.items()} if rw.enabled else {},
        amp=cfg.train.amp and device.type == "cuda",
        p_group=cfg.train.group_mask_prob,
        group_of=feature_groups(cfg).group_of if cfg.train.group_mask_prob > 0 else (),
    )


def _scheduler(opt: torch.optim.Optimizer, cfg: RootCfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    s = cfg.train.scheduler
    warm = max(s.warmup_steps, 0)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if s.name == "cosine":
            progress = min(1.0, (step - warm) / max(1, total_steps - warm))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def validation_losses(
    model: MultiTaskTCN, loader: Any, scfg: TrainStepConfig, device: torch.device
) -> dict[str, float]:
    """Mean validation losses, weighted by batch size, with masks from a fixed seed."""
    gen = torch.Generator(device=device).manual_seed(VAL_MASK_SEED)
    sums: dict[str, float] = {}
    n = 0.0
    for batch in loader:
        out = eval_losses(model, _to(batch, device), scfg, gen)
        b = out["batch_size"]
        for k in ("loss", "recon", "pred", "fault", "rul"):
            sums[k] = sums.get(k, 0.0) + out[k] * b
        n += b
    if n == 0:
        raise SpecError("the validation split has no windows: check data.splits.val_range and windowing")
    return {k: v / n for k, v in sums.items()}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SpecError(f"{path}: not a scada-tcn checkpoint of format {CHECKPOINT_FORMAT}")
    ckpt["pipeline_spec"] = with_hold_default(ckpt["pipeline_spec"])  # trained before holds: none
    return ckpt


def fit(cfg: RootCfg, resume: str | None = None, log=print) -> Path:
    """Train per `cfg`; returns the path of best.pt. `resume` continues from a last.pt of the same setup."""
    device = pick_device(cfg.device)
    data = PreparedData(cfg)
    out_dir = Path(cfg.output_dir)
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out_dir / "config.yaml")

    pin = device.type == "cuda"
    train_ds, val_ds = data.dataset(cfg, "train"), data.dataset(cfg, "val")
    if len(train_ds) == 0:
        raise SpecError("the training split has no windows: check data.splits and data.windowing")
    train_loader = make_loader(train_ds, cfg.train.batch_size, True, cfg.seed, cfg.train.num_workers, pin)
    val_loader = make_loader(val_ds, cfg.train.batch_size, False, cfg.seed, cfg.train.num_workers, pin)

    mcfg = model_config(cfg, data.F, data.R)
    torch.manual_seed(cfg.seed)
    model = MultiTaskTCN(mcfg).to(device)
    scfg = step_config(cfg, data.flag_reg.flag_names, device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.optimizer.lr, weight_decay=cfg.train.optimizer.weight_decay
    )
    steps_per_epoch = (
        len(train_loader)
        if cfg.train.max_steps_per_epoch is None
        else min(len(train_loader), cfg.train.max_steps_per_epoch)
    )
    sched = _scheduler(opt, cfg, steps_per_epoch * cfg.train.epochs)
    amp_scaler = torch.amp.GradScaler("cuda") if scfg.amp else None

    start_epoch, step, best, bad_epochs = 1, 0, float("inf"), 0
    if resume is not None:
        ck = load_checkpoint(resume)
        assert_registry_compatible(
            FeatureRegistry.from_dict(ck["feature_registry"]),
            FlagRegistry.from_dict(ck["flag_registry"]),
            (data.feature_reg, data.flag_reg),
            f"checkpoint {resume}",
        )
        if ModelConfig.from_dict(ck["model_config"]) != mcfg:
            raise SpecError(f"checkpoint {resume} was trained with another model config: {ck['model_config']}")
        model.load_state_dict(ck["model_state"])
        opt.load_state_dict(ck["optim_state"])
        sched.load_state_dict(ck["sched_state"])
        if amp_scaler is not None and ck.get("amp_state"):
            amp_scaler.load_state_dict(ck["amp_state"])
        start_epoch, step, best, bad_epochs = ck["epoch"] + 1, ck["step"], ck["best_val"], ck["bad_epochs"]
        log(f"resumed from {resume} at epoch {ck['epoch']} step {step}")

    log(
        f"training on {device}: {len(train_ds):,} train / {len(val_ds):,} val windows, F={data.F} R={data.R}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, receptive field {mcfg.receptive_field}"
    )
    log_file = (out_dir / "logs" / "train.jsonl").open("a")
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        torch.manual_seed(cfg.seed * 1_000 + epoch)  # dropout
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + epoch)  # Stream-A masks
        train_loader.generator.manual_seed(cfg.seed * 7_919 + epoch)  # shuffling
        bar = tqdm(
            total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.train.epochs}", file=sys.stderr, disable=None, leave=False
        )
        t_wait = time.perf_counter()
        for i, batch in enumerate(train_loader):
            if i >= steps_per_epoch:
                break
            t_got = time.perf_counter()
            out = train_step(model, _to(batch, device), scfg, opt, gen, amp_scaler, cfg.train.grad_clip)
            sched.step()
            step += 1
            t_done = time.perf_counter()
            rec = {
                "event": "step",
                "epoch": epoch,
                "step": step,
                **out,
                "lr": sched.get_last_lr()[0],
                "data_wait_s": t_got - t_wait,
                "compute_s": t_done - t_got,
            }
            log_file.write(json.dumps(rec) + "\n")
            bar.set_postfix(
                loss=f"{out['loss']:.4f}",
                rec=f"{out['recon']:.4f}",
                pred=f"{out['pred']:.4f}",
                fault=f"{out['fault']:.4f}",
                rul=f"{out['rul']:.4f}",
            )
            bar.update(1)
            t_wait = time.perf_counter()
        bar.close()
        val = validation_losses(model, val_loader, scfg, device)
        improved = val["loss"] < best
        best, bad_epochs = (val["loss"], 0) if improved else (best, bad_epochs + 1)
        log_file.write(
            json.dumps({"event": "epoch", "epoch": epoch, "step": step, **{f"val_{k}": v for k, v in val.items()}})
            + "\n"
        )
        log_file.flush()
        log(
            f"epoch {epoch}: val loss {val['loss']:.4f} (recon {val['recon']:.4f}, pred {val['pred']:.4f}, "
            f"fault {val['fault']:.4f}, rul {val['rul']:.4f}){' *best' if improved else ''}"
        )
        ck = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "step": step,
            "best_val": best,
            "bad_epochs": bad_epochs,
            "val_losses": val,
            "model_state": model.state_dict(),
            "optim_state": opt.state_dict(),
            "sched_state": sched.state_dict(),
            "amp_state": amp_scaler.state_dict() if amp_scaler else None,
            "cfg": to_container(cfg),
            "model_config": mcfg.to_dict(),
            "feature_registry": data.feature_reg.to_dict(),
            "flag_registry": data.flag_reg.to_dict(),
            "scaler": data.scaler,
            "pipeline_spec": data.pipeline_spec,
            "data_fingerprint": data.fingerprint,
        }
        torch.save(ck, out_dir / "checkpoints" / "last.pt")
        if improved:
            torch.save(ck, out_dir / "checkpoints" / "best.pt")
        if bad_epochs >= cfg.train.early_stopping_patience:
            log(f"early stopping: no improvement for {bad_epochs} epochs")
            break
    log_file.close()
    return out_dir / "checkpoints" / "best.pt"
