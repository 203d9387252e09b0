"""Windows of the prepared per-turbine arrays as torch batches (spec D dataset).

Per-turbine arrays are memory-mapped on first use (in each DataLoader worker), windows are sliced by the
window index, and a whole batch is gathered in one `__getitems__` call, so data loading stays a small share
of a training step. Items are dicts with the keys `trainer.training.step.train_step` reads:
X (L,F), M_miss (L,F), Flags (L,R), Y_true (K,F), M_future (K,F), y, has_label, and with `rul=True` rul (the
uncapped target at the last input step; 0 where there is none) and has_rul.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from scada_tcn.runtime.errors import SpecError


class WindowDataset(Dataset):
    """Windows of one split; `index` is the part of window_index.parquet for that split."""

    def __init__(
        self,
        processed_dir: str | Path,
        index: pd.DataFrame,
        L: int,
        K: int,
        F: int,
        R: int,
        class_names: list[str] | None,
        multilabel: bool,
        rul: bool = False,
    ) -> None:
        self.processed_dir = Path(processed_dir)
        self.L, self.K, self.F, self.R = L, K, F, R
        self.turbines = sorted(index["turbine_id"].unique().tolist())
        code = {t: i for i, t in enumerate(self.turbines)}
        self.codes = index["turbine_id"].map(code).to_numpy(np.int64)
        self.starts = index["start"].to_numpy(np.int64)
        self.t_end = index["t_end"].to_numpy(np.int64)
        self.y: np.ndarray | None = None
        if class_names is not None:
            if multilabel:
                self.y = index[[f"y_{c}" for c in class_names]].to_numpy(np.float32)
            else:
                self.y = index["y"].to_numpy(np.int64)
            self.has_label = index["has_label"].to_numpy(np.float32)
        self.rul: np.ndarray | None = None
        if rul:
            if "rul" not in index:
                raise SpecError("the window index has no 'rul' column: prepare the data with data.rul.enabled=true")
            r = index["rul"].to_numpy(np.float32)
            self.has_rul = np.isfinite(r).astype(np.float32)
            self.rul = np.where(np.isfinite(r), r, 0.0).astype(np.float32)
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.starts)

    def _turbine(self, code: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        arrays = self._arrays.get(code)
        if arrays is None:
            d = self.processed_dir / "turbines" / self.turbines[code]
            arrays = tuple(np.load(d / f, mmap_mode="r") for f in ("X.npy", "M_miss.npy", "Flags.npy"))
            X, M, Fl = arrays
            if X.shape[1] != self.F or M.shape != X.shape or Fl.shape != (len(X), self.R):
                raise SpecError(f"{d}: arrays {X.shape}/{M.shape}/{Fl.shape} do not match F={self.F}, R={self.R}")
            self._arrays[code] = arrays
        return arrays

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        L, K = self.L, self.K
        X = np.empty((len(indices), L + K, self.F), np.float32)
        M = np.empty((len(indices), L + K, self.F), np.float32)
        Fl = np.empty((len(indices), L, self.R), np.float32)
        for j, i in enumerate(indices):
            Xa, Ma, Fa = self._turbine(int(self.codes[i]))
            s = int(self.starts[i])
            X[j] = Xa[s : s + L + K]
            M[j] = Ma[s : s + L + K]
            Fl[j] = Fa[s : s + L]
        idx = np.asarray(indices)
        batch = {
            "X": torch.from_numpy(X[:, :L]).contiguous(),
            "M_miss": torch.from_numpy(M[:, :L]).contiguous(),
            "Flags": torch.from_numpy(Fl),
            "Y_true": torch.from_numpy(X[:, L:]).contiguous(),
            "M_future": torch.from_numpy(M[:, L:]).contiguous(),
            "index": torch.from_numpy(idx.astype(np.int64)),
        }
        if self.y is not None:
            batch["y"] = torch.from_numpy(self.y[idx])
            batch["has_label"] = torch.from_numpy(self.has_label[idx])
        if self.rul is not None:
            batch["rul"] = torch.from_numpy(self.rul[idx])
            batch["has_rul"] = torch.from_numpy(self.has_rul[idx])
        return batch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


def _identity(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


def seed_worker(worker_id: int) -> None:
    """Deterministic numpy/random state in each DataLoader worker (derived from torch's per-worker seed)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    ds: WindowDataset, batch_size: int, shuffle: bool, seed: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    """Batches gathered by `__getitems__`; shuffling from a seeded generator so every run sees the same order."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        collate_fn=_identity,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
