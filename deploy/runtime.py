"""Device runtime: load an exported model by its manifest, verify it, preprocess images, return top-k labels.

Imports only numpy, onnxruntime, Pillow, the standard library and the bottom layer ``edgecommon`` (no torch, no toolkit),
so it runs on a device with ``pip install numpy onnxruntime pillow`` and a copy of ``deploy/`` and ``edgecommon/``.

Image rules (``edgecommon.images``, the one rule shared with training on image folders; also written into every
manifest's ``preprocessing``):
- size: an image that is not the model's size is resized, shorter side to that size with Pillow's (antialiased)
  bilinear filter, then centre-cropped; ``strict=True`` refuses it instead;
- colour: grayscale, palette and alpha images are converted to RGB with Pillow (gray replicated to 3 channels,
  alpha dropped); ``strict=True`` refuses anything that is not already RGB;
- a file Pillow cannot decode is refused.
Then uint8 RGB HWC -> float32 * (1/255) -> NCHW; mean/std normalisation is inside the ONNX graph.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from edgecommon import ToolkitError
from edgecommon.hashing import sha256_file
from edgecommon.images import IMAGE_SUFFIXES, fit_image, open_image
from deploy.manifest import DeployError, Manifest, ModelEntry, read_manifest

DEFAULT_MODEL = "student.int8"
"""The student of manifests written before ``ship`` existed; newer ones name the student to deploy (``ship``)."""


@dataclass
class Prediction:
    """Top-k result for one image: ``labels``/``indices``/``probs`` best first; probs are softmax over all classes."""

    source: str
    labels: list[str]
    indices: list[int]
    probs: list[float]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, in float64 for stability."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def create_session(path: str | os.PathLike, threads: int | None = None) -> ort.InferenceSession:
    """A CPU ONNX Runtime session; ``threads`` sets intra-op threads (None: ORT's default), inter-op is 1."""
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for unreadable models
        raise DeployError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:200]}") from None


def load_image(path: str | os.PathLike, size: tuple[int, int] = (32, 32), strict: bool = False,
               on_resize=None) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3) of ``size`` (height, width), following the module's rules.

    ``on_resize(path, (width, height))``, when given, is called before an image of another size is resized."""
    try:
        img = open_image(path)
    except ToolkitError as exc:
        raise DeployError(str(exc)) from None
    if on_resize is not None and not strict and img.size != (size[1], size[0]):
        on_resize(str(path), img.size)
    return prepare_image(img, size, strict, name=str(path))


def prepare_image(img: Image.Image, size: tuple[int, int] = (32, 32), strict: bool = False, name: str = "image") -> np.ndarray:
    """Pillow image -> uint8 RGB (H, W, 3) of ``size`` (height, width): colour conversion, resize, centre crop."""
    h, w = size
    if strict and img.mode != "RGB":
        raise DeployError(f"{name} has mode {img.mode}, not RGB (strict mode refuses grayscale/alpha/palette images)")
    if strict and img.size != (w, h):
        raise DeployError(f"{name} is {img.size[0]}x{img.size[1]} px, not {w}x{h} (strict mode refuses other sizes)")
    try:
        return fit_image(img, (h, w), name)
    except ToolkitError as exc:
        raise DeployError(str(exc)) from None


def to_input(images_hwc: np.ndarray, scale: float = 1.0 / 255.0) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) or (H, W, 3) -> float32 (N, 3, H, W) in [0, 1]."""
    x = np.asarray(images_hwc)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DeployError(f"expected uint8 images (N, H, W, 3), got shape {x.shape}")
    return np.ascontiguousarray((x.astype(np.float32) * np.float32(scale)).transpose(0, 3, 1, 2))


class Classifier:
    """One exported model from a manifest, hash-verified, ready to classify image files or tensors.

    ONNX and .ort entries run in ONNX Runtime here; an entry whose ``runtime`` is ``openvino`` or ``executorch`` runs
    through ``deploy.targets.runtimes.open_runner`` (one-line error naming the pip extra when it is not installed)."""

    def __init__(self, manifest: str | os.PathLike, model: str | None = None, threads: int | None = None,
                 strict: bool = False, verify: bool = True):
        """``model``: a manifest key; None = the student the export chose to ship (``manifest.shipped_student``)."""
        manifest_path = Path(manifest)
        if manifest_path.is_dir():
            manifest_path = manifest_path / "manifest.json"
        self.manifest: Manifest = read_manifest(manifest_path)
        self.key = model or self.manifest.shipped_student
        self.entry: ModelEntry = self.manifest.entry(self.key)
        self.path = manifest_path.parent / self.entry.file
        self.strict = strict
        self.on_resize = None
        """``on_resize(path, (width, height))``: called for each image that is resized (``deploy.predict`` notes the first)."""
        if not self.path.is_file():
            raise DeployError(f"model file missing: {self.path} (listed in {manifest_path})")
        if verify:
            for name, want in [(self.entry.file, self.entry.sha256), *(self.entry.extra_files or {}).items()]:
                fpath = manifest_path.parent / name
                if not fpath.is_file():
                    raise DeployError(f"model file missing: {fpath} (listed in {manifest_path})")
                digest = sha256_file(fpath)
                if digest != want:
                    raise DeployError(f"model {fpath} fails its sha256 check (manifest {want[:12]}..., "
                                      f"file {digest[:12]}...): tampered or replaced")
        self.runtime = getattr(self.entry, "runtime", None) or "onnxruntime"
        self.session = None
        """The ONNX Runtime session (.onnx / .ort entries); None for other runtimes, run through ``self._run``."""
        if self.runtime == "onnxruntime":
            self.session = create_session(self.path, threads)
            inputs = [i.name for i in self.session.get_inputs()]
            if inputs != [self.entry.input.name]:
                raise DeployError(f"model {self.path} has inputs {inputs}, manifest says '{self.entry.input.name}'")
            self._run = lambda x: self.session.run([self.entry.output.name], {self.entry.input.name: x})[0]
        else:
            try:  # OpenVINO IR / ExecuTorch .pte: deploy.targets.runtimes (not in the ONNX-only device package)
                from deploy.targets.runtimes import open_runner
            except ImportError:
                raise DeployError(f"model '{self.key}' needs runtime {self.runtime}, and deploy.targets.runtimes is "
                                  "not installed here (install the toolkit with its extra)") from None
            self._run = open_runner(self.path, self.runtime, threads or 0)
        self.classes = list(self.manifest.classes)
        pre = self.entry.preprocessing
        self.size = (int(pre.image_size[0]), int(pre.image_size[1]))
        self.scale = float(pre.scale)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) in [0, 1] -> logits (N, classes) float32. A model with a fixed batch size (e.g. the
        batch-1 variants for mobile providers, ExecuTorch .pte) is run in chunks of that size."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        fixed = self.entry.input.shape[0] if self.entry.input.shape else None
        step = fixed if isinstance(fixed, int) and fixed > 0 else len(x)
        if step and len(x) % step:
            raise DeployError(f"model {self.path.name} takes batches of exactly {step}; got {len(x)} images")
        outs = [self._run(x[i:i + step]) for i in range(0, len(x), step)] if step else []
        return np.concatenate(outs) if outs else np.zeros((0, len(self.classes)), np.float32)

    def preprocess_files(self, paths: list[str | os.PathLike]) -> np.ndarray:
        """Image files -> float32 (N, 3, H, W) following the manifest's preprocessing."""
        return to_input(np.stack([load_image(p, self.size, self.strict, self.on_resize) for p in paths]), self.scale)

    def top_k(self, logits: np.ndarray, sources: list[str], k: int = 3) -> list[Prediction]:
        if k < 1:
            raise DeployError(f"top-k must be >= 1, got {k}")
        probs = softmax(logits)
        k = min(k, probs.shape[1])
        out = []
        for src, p in zip(sources, probs):
            idx = np.argsort(-p, kind="stable")[:k]
            out.append(Prediction(src, [self.classes[i] for i in idx], [int(i) for i in idx], [float(p[i]) for i in idx]))
        return out

    def predict_files(self, paths: list[str | os.PathLike], k: int = 3, batch_size: int = 64) -> list[Prediction]:
        """Top-k predictions for image files, in the order given."""
        preds: list[Prediction] = []
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start:start + batch_size])
            preds += self.top_k(self.logits(self.preprocess_files(chunk)), [str(p) for p in chunk], k)
        return preds


def expand_images(items: list[str | os.PathLike]) -> list[Path]:
    """Files as given; folders expand to their image files (by suffix), sorted by name."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DeployError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
            out += found
        else:
            out.append(p)
    return out
