"""Decoded-image cache: a list of image files decoded once (``edgecommon.images`` rule) into a uint8 ``.npy``.

Layout, under ``data.cache_dir`` (default ``$XDG_CACHE_HOME/edge-distill/decoded``, i.e. ``~/.cache/...``)::

    <split>-<S>px-<key>.npy    uint8 (N, 3, S, S), the rows of the files that decoded, in list order
    <split>-<S>px-<key>.json   meta: key inputs, kept files, skipped (file, reason); written last = "finished"

``key`` fingerprints (format version, folder, each file's relative path, size and mtime in ns, S, the resize and
colour rule texts, Pillow's version): a changed, added or removed file, another size or another rule gives a new key,
so a stale cache is never reused (old files stay until the folder is cleaned by hand). Decoding writes straight into a
``np.lib.format.open_memmap`` under a temporary name, renamed with ``os.replace`` when complete, then the meta; an
error or interrupt removes the temporary file, and a killed process leaves only a hidden ``.tmp`` that the next
decode of the same key deletes. A lock file per key (``flock``) makes concurrent processes (ranks) decode once.

Decoding runs on a thread pool (Pillow releases the GIL while decoding and resizing), each file fully decoded, so a
truncated or corrupt file is caught here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import torch
from tqdm.auto import tqdm

from edgecommon.hashing import fingerprint
from edgecommon.images import COLOR_RULE, load_fitted, resize_rule
from toolkit import ToolkitError
from toolkit.io import atomic_write_json, folder_lock

FORMAT_VERSION = 1
SKIP_HINT = "data.skip_bad=true skips unreadable files"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edge-distill/decoded`` (``~/.cache/edge-distill/decoded`` without the variable)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edge-distill" / "decoded"


def split_key(root: Path, files: list[str], size: int) -> str:
    """The cache key of ``files`` (relative to ``root``) decoded at ``size`` px (see the module docstring)."""
    stats = []
    for rel in files:
        try:
            st = os.stat(root / rel)
        except OSError as exc:
            raise ToolkitError(f"cannot read {root / rel}: {exc.strerror}") from None
        stats.append([rel, st.st_size, st.st_mtime_ns])
    return fingerprint({"format": FORMAT_VERSION, "root": str(root.resolve()), "files": stats, "size": size,
                        "rule": resize_rule(size), "color": COLOR_RULE, "pillow": PIL.__version__}, length=24)


def _decode_one(path: Path, size: int) -> np.ndarray | str:
    """uint8 (3, S, S) of one file, or the one-line reason it cannot be read."""
    try:
        return load_fitted(path, size).transpose(2, 0, 1)
    except ToolkitError as exc:
        return str(exc)


def _decode_all(paths: list[Path], size: int, workers: int) -> Iterator[np.ndarray | str]:
    """``_decode_one`` of each path, in order; ``workers`` > 1 decodes that many files at once (bounded read-ahead)."""
    if workers <= 1:
        for p in paths:
            yield _decode_one(p, size)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    pending: deque[Future] = deque()
    todo = iter(paths)
    try:
        for p in todo:
            pending.append(pool.submit(_decode_one, p, size))
            if len(pending) >= 4 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_decode_one, nxt, size))
            yield result
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)


def default_workers() -> int:
    """Decoding threads: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _finished(npy: Path, meta_path: Path, key: str, size: int) -> dict | None:
    """The meta of a complete cache entry for ``key``, or None."""
    try:
        meta = json.loads(meta_path.read_text())
        arr = np.load(npy, mmap_mode="r") if meta["rows"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = meta.get("key") == key and meta.get("format") == FORMAT_VERSION and len(meta.get("files", ())) == meta["rows"]
    if arr is not None:
        ok = ok and arr.dtype == np.uint8 and arr.shape == (meta["rows"], 3, size, size)
    elif ok:
        ok = npy.is_file()
    return meta if ok else None


def _reserve(path: Path) -> None:
    """Allocate the file's blocks now: a full disk is an error here, not a SIGBUS while writing through the map."""
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ToolkitError(f"no room for {os.path.getsize(path) / 1e9:.2f} GB of decoded images in {path.parent} "
                               f"(data.cache_dir sets another place)") from None
    except AttributeError:  # no posix_fallocate on this platform
        pass


def _write_empty(path: Path, size: int) -> None:
    """A ``.npy`` of uint8 (0, 3, S, S) at ``path`` (a memory map cannot have zero rows)."""
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.zeros((0, 3, size, size), np.uint8), allow_pickle=False)


def _compact(tmp: Path, rows: int, size: int) -> None:
    """Cut the temporary ``.npy`` at ``tmp`` to its first ``rows`` rows (after skipped files), in place via a copy."""
    src = np.load(tmp, mmap_mode="r")
    cut = tmp.with_name(tmp.name + ".cut")
    try:
        if rows:
            dst = np.lib.format.open_memmap(cut, mode="w+", dtype=np.uint8, shape=(rows, 3, size, size))
            _reserve(cut)
            for start in range(0, rows, 1024):
                stop = min(start + 1024, rows)
                dst[start:stop] = src[start:stop]
            dst.flush()
            del dst
        else:
            _write_empty(cut, size)
        del src
        os.replace(cut, tmp)
    finally:
        cut.unlink(missing_ok=True)


def decode_files(root: Path, files: list[str], size: int, name: str, cache_dir: Path, *, skip_bad: bool = False,
                 progress: bool = True, workers: int | None = None) -> tuple[Path, dict, bool]:
    """Decode ``files`` (relative to ``root``) at ``size`` px into the cache unless a finished entry exists.

    Returns (``.npy`` path, meta, decoded now). A file that cannot be read raises a one-line ToolkitError naming it
    (nothing is left that looks finished), or with ``skip_bad`` is left out and listed in ``meta["skipped"]``.
    """
    key = split_key(root, files, size)
    base = f"{name}-{size}px-{key}"
    npy, meta_path = cache_dir / f"{base}.npy", cache_dir / f"{base}.json"
    meta = _finished(npy, meta_path, key, size)  # without the lock first: a finished entry in a read-only cache works
    if meta is not None:
        _check_skipped(meta, skip_bad)
        return npy, meta, False
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        return _decode_locked(root, files, size, name, cache_dir, key, skip_bad, progress, workers)
    except OSError as exc:
        raise ToolkitError(f"cannot write the decoded-image cache in {cache_dir}: {exc.strerror or exc} "
                           f"(data.cache_dir sets another place)") from None


def _decode_locked(root: Path, files: list[str], size: int, name: str, cache_dir: Path, key: str, skip_bad: bool,
                   progress: bool, workers: int | None) -> tuple[Path, dict, bool]:
    base = f"{name}-{size}px-{key}"
    npy, meta_path = cache_dir / f"{base}.npy", cache_dir / f"{base}.json"
    with folder_lock(cache_dir / f".{base}.lock"):
        meta = _finished(npy, meta_path, key, size)
        if meta is not None:
            _check_skipped(meta, skip_bad)
            return npy, meta, False
        meta_path.unlink(missing_ok=True)  # an entry being redone must not look finished at any point
        for stale in cache_dir.glob(f".{base}.*.tmp*"):
            stale.unlink(missing_ok=True)
        tmp = cache_dir / f".{base}.{os.getpid()}.tmp"
        try:
            kept, skipped = _decode_into(tmp, root, files, size, name, skip_bad, progress,
                                         default_workers() if workers is None else workers)
            os.replace(tmp, npy)
        finally:
            tmp.unlink(missing_ok=True)
        meta = {"format": FORMAT_VERSION, "key": key, "root": str(root.resolve()), "image_size": size,
                "rule": resize_rule(size), "color": COLOR_RULE, "pillow": PIL.__version__, "rows": len(kept),
                "files": kept, "skipped": [list(s) for s in skipped]}
        atomic_write_json(meta_path, meta)
        return npy, meta, True


def _decode_into(tmp: Path, root: Path, files: list[str], size: int, name: str, skip_bad: bool, progress: bool,
                 workers: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Decode into a new ``.npy`` at ``tmp``; returns (kept files, skipped (file, reason))."""
    n = len(files)
    kept: list[str] = []
    skipped: list[tuple[str, str]] = []
    if n == 0:
        _write_empty(tmp, size)
        return kept, skipped
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    _reserve(tmp)
    bar = tqdm(total=n, desc=f"decode {name} ({size} px)", unit="img", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)
    try:
        for rel, result in zip(files, _decode_all([root / f for f in files], size, workers)):
            bar.update(1)
            if isinstance(result, str):
                if not skip_bad:
                    raise ToolkitError(f"{result} ({SKIP_HINT})")
                skipped.append((rel, result))
                continue
            out[len(kept)] = result
            kept.append(rel)
        out.flush()
    finally:
        bar.close()
        del out
    if len(kept) < n:
        _compact(tmp, len(kept), size)
    return kept, skipped


def _check_skipped(meta: dict, skip_bad: bool) -> None:
    """A cached entry that left files out is an error when ``skip_bad`` is off, as a fresh decode would be."""
    if meta.get("skipped") and not skip_bad:
        rel, reason = meta["skipped"][0]
        more = f" and {len(meta['skipped']) - 1} more" if len(meta["skipped"]) > 1 else ""
        raise ToolkitError(f"{reason}{more} ({SKIP_HINT})")


def available_memory() -> int:
    """Bytes this process can still fill: /proc/meminfo MemAvailable (os.sysconf without it), capped by a cgroup limit."""
    avail = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 0
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):
            room = int(Path(limit).read_text().strip()) - int(Path(usage).read_text().strip())
            avail = min(avail, max(room, 0)) if avail else max(room, 0)
            break
    return int(avail)


RAM_FRACTION = 0.4
"""``in_memory: auto`` reads into RAM when the decoded bytes are below this fraction of ``available_memory()``."""


def use_ram(in_memory: str | bool, nbytes: int) -> bool:
    """Whether ``nbytes`` of decoded images go into RAM (True) or stay memory-mapped (False)."""
    mode = str(in_memory).lower()
    if mode not in ("auto", "true", "false"):
        raise ToolkitError(f"data.in_memory must be auto, true or false, got '{in_memory}'")
    if mode != "auto":
        return mode == "true"
    return nbytes < RAM_FRACTION * available_memory()


def open_decoded(npy: Path, rows: int, size: int, in_ram: bool) -> torch.Tensor:
    """The cached uint8 (rows, 3, S, S): read into RAM, or a read-only memory map wrapped without a copy."""
    if rows == 0:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    try:
        if in_ram:
            return torch.from_numpy(np.load(npy))
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ToolkitError(f"cannot read the decoded-image cache {npy}: {exc}") from None
    with warnings.catch_warnings():  # torch warns that the array is not writable; training only reads these rows
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.from_numpy(arr)
