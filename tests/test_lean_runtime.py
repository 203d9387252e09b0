"""The edge runtime stays lean: importing every module of runtime/ loads neither torch nor pandas."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import scada_tcn.runtime

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_imports_no_heavy_packages():
    modules = sorted(f"scada_tcn.runtime.{m.name}" for m in pkgutil.iter_modules(scada_tcn.runtime.__path__))
    assert "scada_tcn.runtime.pipeline" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "heavy = sorted(m for m in ('torch', 'pandas', 'pyarrow', 'omegaconf', 'scipy', 'sklearn')"
        " if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"runtime imported heavy packages: {out.stdout}"
