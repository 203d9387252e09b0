"""Binned raw values -> model inputs, shared by `scada-prepare` (batch) and the edge daemon (stream).

Contract
--------
Input: binned values (T, C) float64 in `spec.channels` order, NaN = missing (one row (C,) for the
stream). Steps, in this order and with the same functions in both adapters:

1. winsorise with `spec.winsor_caps` (`runtime.qc.apply_winsor`);
2. engineered features E (T, F) float64 NaN-missing and mask M (T, F) uint8, 1 = present
   (`runtime.features`), and flags (T, R) float32 from `spec.flag_rules` evaluated on the binned
   values before the caps (a cap is a feature-scaling choice and must not hide a regime) (`runtime.flags`);
3. robust scaling (`runtime.scaling`), then the fill value where M == 0, only after the mask is
   fixed, so a filled value never hides a missing one: X == spec.fill_value exactly where M == 0.

Outputs `ModelInputs(X float32, M_miss uint8 (1 = present, 0 = missing), Flags float32, Repeat uint8)`;
Repeat holds the exact-repeat codes of `spec.repeat_channels` on the binned values before the caps
(`runtime.repeats`; not a model input: the stuck-signal check reads it). Causal:
row t depends on rows <= t only. Refused: a scaler whose feature names differ from the spec's
(ScalerError), finishing without a scaler (ScalerError), a mask that disagrees with E's NaNs or has
the wrong shape or values (InputError), raw input of the wrong shape or dtype (InputError).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scada_tcn.runtime.errors import InputError, ScalerError
from scada_tcn.runtime.features import FeatureState, build_features
from scada_tcn.runtime.flags import compile_rules
from scada_tcn.runtime.qc import apply_winsor
from scada_tcn.runtime.repeats import codes_against, repeat_codes
from scada_tcn.runtime.scaling import RobustScaler
from scada_tcn.runtime.slots import Chain
from scada_tcn.runtime.spec import PipelineSpec

__all__ = ["ModelInputs", "Preprocessor", "StreamPreprocessor", "scaled_mask"]


@dataclass(frozen=True)
class ModelInputs:
    """X float32, M_miss uint8 (1 = present), Flags float32, Repeat uint8: (T, F), (T, F), (T, R), (T, S) or one
    row each."""

    X: np.ndarray
    M_miss: np.ndarray
    Flags: np.ndarray
    Repeat: np.ndarray


def scaled_mask(spec: PipelineSpec) -> np.ndarray:
    """Bool (F,): False for the sin/cos columns of angular channels (left unscaled), True otherwise."""
    unscaled = {f"{c}_{s}" for c in spec.angular_channels for s in ("sin", "cos")}
    return np.array([n not in unscaled for n in spec.feature_names], dtype=bool)


def _check_binned(binned: np.ndarray, spec: PipelineSpec, ndim: int, where: str) -> np.ndarray:
    binned = np.asarray(binned)
    want = "(T, C)" if ndim == 2 else "(C,)"
    if binned.ndim != ndim or binned.shape[-1] != len(spec.channels):
        raise InputError(
            f"{where}: expected binned values of shape {want} with C={len(spec.channels)} channels "
            f"{list(spec.channels)}, got {binned.shape}"
        )
    if not np.issubdtype(binned.dtype, np.floating):
        raise InputError(f"{where}: binned values must be float (NaN = missing), got dtype {binned.dtype}")
    return binned.astype(np.float64, copy=False)


class Preprocessor:
    """Batch composition: flags; winsor -> features + mask -> scaling -> fill. Stateless."""

    def __init__(self, spec: PipelineSpec, scaler: RobustScaler | None) -> None:
        self.spec = spec
        self.scaler = scaler
        if scaler is not None and scaler.feature_names != tuple(spec.feature_names):
            raise ScalerError(
                "scaler does not match the spec's features:\n"
                f"  scaler: {list(scaler.feature_names)}\n  spec:   {list(spec.feature_names)}"
            )
        self.flags = compile_rules(spec)
        self.repeat_idx = [spec.channels.index(c) for c in spec.repeat_channels]

    def repeats(self, binned: np.ndarray) -> np.ndarray:
        """binned (T, C) -> exact-repeat codes (T, S) of `spec.repeat_channels` (the first row's are unknown)."""
        binned = _check_binned(binned, self.spec, 2, "Preprocessor.repeats")
        return repeat_codes(binned[:, self.repeat_idx])

    def engineer(self, binned: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """binned (T, C) -> (E (T, F) float64 NaN-missing, M (T, F) uint8 1=present, Flags (T, R) float32)."""
        binned = _check_binned(binned, self.spec, 2, "Preprocessor.engineer")
        capped = apply_winsor(binned, self.spec.channels, self.spec.winsor_caps)
        E, M = build_features(capped, self.spec)
        return E, M, self.flags.evaluate(binned)  # rules see the binned readings, not the feature caps

    def finish(self, E: np.ndarray, M: np.ndarray) -> np.ndarray:
        """Scale E then write spec.fill_value where M == 0 -> X (T, F) float32."""
        if self.scaler is None:
            raise ScalerError("Preprocessor.finish: no scaler; fit one with fit_robust_scaler on the training rows")
        E = np.asarray(E)
        M = np.asarray(M)
        if M.shape != E.shape or M.dtype != np.uint8:
            raise InputError(f"Preprocessor.finish: M must be uint8 of E's shape {E.shape}, got {M.dtype} {M.shape}")
        if M.max(initial=0) > 1:
            raise InputError("Preprocessor.finish: M must hold only 0 (missing) and 1 (present)")
        disagree = np.isnan(E) != (M == 0)
        if disagree.any():
            bad = [self.spec.feature_names[j] for j in np.nonzero(disagree.any(axis=0))[0]]
            raise InputError(f"Preprocessor.finish: mask disagrees with E's missing values (NaN) in {bad}")
        X = self.scaler.transform(E, self.spec.feature_names).astype(np.float32)
        X[M == 0] = np.float32(self.spec.fill_value)
        return X

    def transform(self, binned: np.ndarray) -> ModelInputs:
        """engineer then finish: binned (T, C) -> ModelInputs (T, F), (T, F), (T, R)."""
        E, M, Flags = self.engineer(binned)
        return ModelInputs(self.finish(E, M), M, Flags, self.repeats(binned))


class StreamPreprocessor:
    """Incremental composition, one binned row per step and turbine; equal to `Preprocessor.transform` row by row.

    State per slot (a turbine) lives in a FeatureState (previous base row, rolling ring buffer) and the previous
    binned row (for the repeat codes). `step(row)` advances slot 0; `step_many(slots, rows)` advances the slots of
    a fleet whose step closed together in one vectorised call. A fresh slot is the reset.
    """

    def __init__(self, spec: PipelineSpec, scaler: RobustScaler, slots: int = 1) -> None:
        self.spec = spec
        self.scaler = scaler
        if scaler is None:
            raise ScalerError("StreamPreprocessor needs a fitted scaler (the one saved by scada-prepare)")
        self._batch = Preprocessor(spec, scaler)
        self._features = FeatureState(spec, slots=0)
        self._prev = np.empty((0, len(spec.channels)))
        for _ in range(slots):
            self.add_slot()

    @property
    def slots(self) -> int:
        return self._features.slots

    def add_slot(self) -> int:
        """A new slot in its reset state; returns its index."""
        slot = self._features.add_slot()
        if slot >= self._prev.shape[0]:  # capacity doubles
            grow = np.full((max(self._prev.shape[0], 1), self._prev.shape[1]), np.nan)
            self._prev = np.concatenate([self._prev, grow])
        return slot

    def step(self, binned_row: np.ndarray) -> ModelInputs:
        """binned_row (C,) of slot 0 -> ModelInputs of one row: X (F,) float32, M_miss (F,) uint8, Flags (R,)."""
        row = _check_binned(binned_row, self.spec, 1, "StreamPreprocessor.step")
        out = self.step_many(np.zeros(1, dtype=np.int64), row[None, :])
        return ModelInputs(out.X[0], out.M_miss[0], out.Flags[0], out.Repeat[0])

    def step_many(self, slots: np.ndarray, binned: np.ndarray, chain: Chain | None = None) -> ModelInputs:
        """binned (B, C), row b the next step of slot slots[b] -> ModelInputs (B, ...). A slot may have several
        rows, its consecutive steps in row order (`FeatureState.step_many`; `chain`: the slots' Chain, when the
        caller has one)."""
        rows = _check_binned(binned, self.spec, 2, "StreamPreprocessor.step_many")
        slots = np.asarray(slots, dtype=np.int64)
        chain = Chain(slots) if chain is None else chain
        capped = apply_winsor(rows, self.spec.channels, self.spec.winsor_caps)
        E, M = self._features.step_many(slots, capped, chain)
        X = self._batch.finish(E, M)
        idx = self._batch.repeat_idx
        rep = codes_against(rows[:, idx], chain.previous(rows, self._prev)[:, idx])
        self._prev[chain.slots] = chain.newest(rows)
        return ModelInputs(X, M, self._batch.flags.evaluate(rows), rep)

    def state_dict(self, slot: int = 0) -> dict[str, Any]:
        """Plain copy of one slot's state (the feature state and the previous binned row)."""
        return {"features": self._features.state_dict(slot), "prev": self._prev[slot].copy()}

    def load_state_dict(self, state: dict[str, Any], slot: int = 0) -> None:
        """Restore a `state_dict()` taken from a StreamPreprocessor with the same spec into `slot`."""
        if not isinstance(state, dict) or set(state) != {"features", "prev"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise InputError(f"StreamPreprocessor.load_state_dict: expected keys ['features', 'prev'], got {got}")
        prev = np.asarray(state["prev"], dtype=np.float64)
        if prev.shape != self._prev.shape[1:]:
            raise InputError(
                f"StreamPreprocessor.load_state_dict: prev must be {self._prev.shape[1:]}, got {prev.shape}"
            )
        self._features.load_state_dict(state["features"], slot)
        self._prev[slot] = prev
