"""Classify image files with an exported model: ``python -m deploy.predict manifest.json img.png [more|folder]``.

Prints one line per image (``path: label prob, label prob, ...``) or JSON with ``--json``. Needs only numpy,
onnxruntime and Pillow for ONNX / .ort models; ``--model <key>.openvino`` or ``<key>.pte`` entries (``deploy.targets``)
need the ``openvino`` / ``executorch`` extra, and say so in one line when it is missing. Errors print one ``error: ...`` line to stderr and exit 2. The first image that is not of the
model's input size gets one ``note:`` line on stderr saying how it is resized (e.g. a 640x480 photo becomes 32x32).
"""

from __future__ import annotations

import argparse
import json
import sys

from deploy.manifest import DeployError
from deploy.runtime import DEFAULT_MODEL, Classifier, expand_images


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.predict", description=__doc__.splitlines()[0])
    p.add_argument("manifest", help="export manifest.json (or the export folder)")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--model", default=None, help="manifest model key (default: the student the export shipped, "
                   f"manifest 'ship'; {DEFAULT_MODEL} for older manifests)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the model's runtime (default: the runtime's choice)")
    p.add_argument("--strict", action="store_true", help="refuse images that are not RGB of the model's input size instead of converting them")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text lines")
    return p


def _resize_note(clf: Classifier):
    """An ``on_resize`` hook printing one stderr note, the first time an image is resized, then nothing."""
    done = []

    def note(path: str, size: tuple[int, int]) -> None:
        if not done:
            done.append(path)
            h, w = clf.size
            print(f"note: {path} is {size[0]}x{size[1]} px; the model takes {w}x{h}, so images of another size are "
                  f"resized: {clf.entry.preprocessing.resize} (said once; --strict refuses them instead)",
                  file=sys.stderr)
    return note


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        clf = Classifier(args.manifest, args.model, threads=args.threads, strict=args.strict)
        clf.on_resize = _resize_note(clf)
        preds = clf.predict_files(expand_images(args.images), k=args.top_k)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([p.__dict__ for p in preds], indent=2))
    else:
        for p in preds:
            print(f"{p.source}: " + ", ".join(f"{lab} {prob:.3f}" for lab, prob in zip(p.labels, p.probs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
