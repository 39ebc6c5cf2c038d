"""The paper's studies as commands: ablation, Monte Carlo, compression sweep, zero-shot generalisation.

``python -m toolkit experiment <study> --scale smoke|cpu|paper``; see docs/experiments.md.
"""
