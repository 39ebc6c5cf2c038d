"""The bottom layer: what the training side (``toolkit``), the deployment side (``deploy``) and ``benchmarks`` share.

Standard library, numpy and Pillow only, and it imports nothing above it, so both sides can use it and a device gets it by
copying ``edgecommon/`` beside ``deploy/`` (see docs/architecture.md):

- ``edgecommon.timing``: the one latency timer (warm-up, counted or timed runs, interleaved rounds, percentiles);
- ``edgecommon.hashing``: the one set of sha256 helpers (files, JSON fingerprints, array and model-state digests);
- ``edgecommon.images``: the one image rule (colour conversion, resize, centre crop) for training data and devices;
- ``ToolkitError``: the project's error for bad input or state (``toolkit`` re-exports it; ``deploy``'s
  ``DeployError`` is a kind of it).
"""


class ToolkitError(Exception):
    """An error caused by bad input or state; the CLI prints it as one line and exits non-zero."""
