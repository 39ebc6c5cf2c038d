"""Integrated-gradients maps of the teacher (computed once, cached by sample index) and the IG overlay augmentation."""

from toolkit.attribution.cache import ig_fingerprint, load_or_compute_ig_maps, read_ig_cache
from toolkit.attribution.examples import save_overlay_examples
from toolkit.attribution.ig import choose_ig_rows, compute_ig_maps
from toolkit.attribution.overlay import apply_ig_overlay

__all__ = ["apply_ig_overlay", "choose_ig_rows", "compute_ig_maps", "ig_fingerprint", "load_or_compute_ig_maps",
           "read_ig_cache", "save_overlay_examples"]
