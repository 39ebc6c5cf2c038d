"""Deployment: ONNX export, simplification, parity checks, int8 quantization (``deploy.export``, needs torch) and a
device runtime (``deploy.runtime`` / ``deploy.predict``, needs only numpy, onnxruntime and Pillow).

This package's ``__init__`` imports nothing, so ``import deploy.runtime`` on a device never pulls in torch or toolkit.
"""
