"""The project's sha256 helpers, in one place: files (export manifests, checkpoints), JSON fingerprints of settings
(pipeline stages, study results, IG caches), and digests of arrays, tensors and model states.

Standard library only; torch tensors and modules are handled by duck typing (``.detach()``, ``.state_dict()``), so
this module never imports torch and the device runtime can use it. The byte streams hashed here are fixed: digests
recorded in existing run folders, IG caches and manifests stay valid.

``length``: hex characters kept (16 for the short fingerprints of run folders); None keeps the full 64.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

SHORT = 16
"""Hex characters of the short fingerprints stored in run folders (pipeline stages, study settings)."""


def sha256_hex(chunks: Iterable[bytes | str], length: int | None = None) -> str:
    """Hex sha256 of the concatenated ``chunks`` (str chunks are UTF-8 encoded), cut to ``length`` characters."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return h.hexdigest()[:length]


def _file_chunks(path: str | os.PathLike, chunk: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(chunk):
            yield block


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20, length: int | None = None) -> str:
    """Hex sha256 of a file's bytes, read ``chunk`` bytes at a time."""
    return sha256_hex(_file_chunks(path, chunk), length)


def fingerprint(obj: Any, length: int | None = SHORT) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys; values JSON cannot hold are written with ``str``)."""
    return sha256_hex([json.dumps(obj, sort_keys=True, default=str)], length)


def array_bytes(a: Any) -> bytes:
    """The raw C-order bytes of a numpy array or a torch tensor (any device; bfloat16 as its int16 bit patterns,
    which numpy cannot hold otherwise)."""
    if hasattr(a, "detach"):  # a torch.Tensor; torch is loaded whenever one exists, so nothing is imported here
        a = a.detach().cpu().contiguous()
        if str(a.dtype) == "torch.bfloat16":
            a = a.view(sys.modules["torch"].int16)
        a = a.numpy()
    return a.tobytes()


def tensor_digest(t: Any, length: int | None = SHORT) -> str:
    """sha256 of a tensor's (or array's) bytes; dtype and shape are not part of it."""
    return sha256_hex([array_bytes(t)], length)


def _state_chunks(model: Any) -> Iterator[bytes | str]:
    for name, value in sorted(getattr(model, "module", model).state_dict().items()):
        yield name
        yield array_bytes(value)


def state_digest(model: Any, length: int | None = SHORT) -> str:
    """sha256 over a model's ``state_dict`` (a DDP/DataParallel wrapper's inner module): names and bytes, by name."""
    return sha256_hex(_state_chunks(model), length)
