"""Torch/onnxruntime parity tolerances of the export (recorded in the bundle's `parity` section)."""

DEFAULT_ATOL, DEFAULT_RTOL = 1e-5, 1e-4
DEFAULT_EXTREME = 100.0  # magnitude of the adversarial "extreme values" case
