"""Deployment targets beyond the plain ONNX export (export side: may import onnx and the toolkit).

``deploy.targets.ort_format``: ORT-format (.ort) students for ONNX Runtime Mobile, with a batch-1 fixed-shape
variant for NNAPI / CoreML and the mobile usability checker's coverage figures.
"""
