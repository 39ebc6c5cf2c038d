"""Deployment: ONNX export, simplification, parity checks, int8 quantization (``deploy.export``, needs torch) and a
device runtime (``deploy.runtime`` / ``deploy.predict`` / ``deploy.latency``, needs only numpy, onnxruntime, Pillow and
the bottom package ``edgecommon``; copy ``deploy/`` and ``edgecommon/`` to a device).

This package's ``__init__`` imports nothing, so ``import deploy.runtime`` on a device never pulls in torch or toolkit.
"""
