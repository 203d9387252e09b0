"""Console scripts of the trainer side in an install without the `[train]` extra.

One distribution cannot make a console script depend on an extra, so the gateway install (`pip install
scada-tcn`) carries the trainer's command names too. Each of them is wrapped by `requires_train`: its `--help`
works everywhere (the CLI modules import nothing heavy at module level), and running it without the trainer's
dependencies exits 2 with the command that installs them, instead of a ModuleNotFoundError.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["TRAIN_MODULES", "missing_train_modules", "requires_train"]

TRAIN_MODULES = ("torch", "pandas", "pyarrow", "onnx", "omegaconf", "matplotlib")


def missing_train_modules() -> list[str]:
    """The trainer's dependencies that this environment cannot import."""
    return [m for m in TRAIN_MODULES if importlib.util.find_spec(m) is None]


def requires_train(app: Callable[[], object]) -> Callable[[], None]:
    """Entry point around a typer app: help always works; a run without the `[train]` extra exits 2."""

    def main() -> None:
        if not any(a in ("--help", "-h") for a in sys.argv[1:]):
            missing = missing_train_modules()
            if missing:
                prog = Path(sys.argv[0]).name
                print(
                    f"{prog} needs the trainer's dependencies ({', '.join(missing)} not installed): "
                    "pip install 'scada-tcn[train]'",
                    file=sys.stderr,
                )
                sys.exit(2)
        app()

    return main
