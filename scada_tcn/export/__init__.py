"""ONNX export and bundle: `export_bundle(checkpoint)` (export.bundle_writer), CLI `scada-export` (export.cli).

Reads a trainer checkpoint and writes what `runtime.bundle.load_bundle` loads, through `runtime.bundle.dump_bundle`.
"""
