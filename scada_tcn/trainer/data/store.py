"""The prepared-data store: what `scada-prepare` wrote, opened and checked against a config's registries.

Layout of `data.paths.processed_dir`: `turbines/<id>/{X,M_miss,Flags,Repeat,timestamps,labels}.npy`,
`window_index.parquet`, `registries/`, `scalers/robust_scaler.json`, `pipeline_spec.json`, `fingerprint.txt`.
Opening refuses a folder without prepared data, or one whose registries differ from the config's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from scada_tcn.runtime.errors import SpecError
from scada_tcn.runtime.registry import registries_from_spec
from scada_tcn.runtime.spec import with_hold_default
from scada_tcn.trainer.config import RootCfg
from scada_tcn.trainer.config.derive import spec_from_config
from scada_tcn.trainer.data.dataset import WindowDataset
from scada_tcn.trainer.data.registry import assert_registry_compatible, load_registry

__all__ = ["PreparedData"]


class PreparedData:
    """The prepared data set of `cfg`, checked against the config's registries."""

    def __init__(self, cfg: RootCfg) -> None:
        self.dir = Path(cfg.data.paths.processed_dir)
        if not (self.dir / "window_index.parquet").is_file():
            raise SpecError(f"no prepared data in {self.dir}: run scada-prepare with the same config first")
        self.feature_reg, self.flag_reg = load_registry(self.dir / "registries")
        assert_registry_compatible(
            self.feature_reg, self.flag_reg, registries_from_spec(spec_from_config(cfg)), f"prepared data in {self.dir}"
        )
        self.index = pd.read_parquet(self.dir / "window_index.parquet")
        self.fingerprint = (self.dir / "fingerprint.txt").read_text().strip()
        self.scaler = json.loads((self.dir / "scalers" / "robust_scaler.json").read_text())
        self.pipeline_spec = with_hold_default(json.loads((self.dir / "pipeline_spec.json").read_text()))
        self.F, self.R = len(self.feature_reg.feature_names), len(self.flag_reg.flag_names)

    def dataset(self, cfg: RootCfg, split: str) -> WindowDataset:
        part = self.index[self.index["split"] == split].reset_index(drop=True)
        labels = cfg.data.labels
        return WindowDataset(
            self.dir,
            part,
            cfg.data.windowing.L,
            cfg.data.windowing.K,
            self.F,
            self.R,
            list(labels.class_names) if labels.enabled else None,
            labels.multilabel,
            rul=cfg.data.rul.enabled,
        )
