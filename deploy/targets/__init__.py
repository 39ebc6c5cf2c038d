"""Deployment targets beyond the plain ONNX export (export side: may import onnx and the toolkit).

``deploy.targets.ort_format``: ORT-format (.ort) students for ONNX Runtime Mobile, with a batch-1 fixed-shape
variant for NNAPI / CoreML and the mobile usability checker's coverage figures.
``deploy.targets.openvino``: OpenVINO IR of every ONNX model, parity vs ONNX Runtime, int8 kernels counted.
``deploy.targets.executorch``: XNNPACK-delegated ExecuTorch .pte (fp32, int8 PT2E) from the run's checkpoints.
``deploy.targets.runtimes``: torch-free ``open_runner`` for any artifact (ONNX Runtime, OpenVINO, ExecuTorch).
``python -m deploy.targets --run <run>``: all of them, skipping (with one line) targets whose extra is missing.
"""
