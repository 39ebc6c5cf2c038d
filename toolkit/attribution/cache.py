"""On-disk cache of IG maps, keyed by dataset sample index, resumable chunk by chunk, refused when stale.

Layout of ``cache_dir``::

    meta.json          format, fingerprint and its parts (teacher weights hash, names, index hash, IG settings)
    index.pt           the sample_index (N,) int64 of the rows, in row order
    chunk_00000.pt     {"index": (n,) int64, "maps": (n, 32, 32) store_dtype} for rows [0, chunk_size), ...

Every file is written atomically. A chunk is trusted only when its stored index equals the expected slice.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from edgecommon.hashing import fingerprint, sha256_hex, tensor_digest
from toolkit import ToolkitError
from toolkit.attribution.ig import choose_ig_rows, compute_ig_maps
from toolkit.attribution.steps import CANDIDATE_STEPS, REFERENCE_STEPS, choose_ig_steps
from toolkit.config import IGConfig
from toolkit.io import atomic_write_bytes, atomic_write_json

CACHE_FORMAT = "edge-distill-ig-cache/1"
META_NAME = "meta.json"
INDEX_NAME = "index.pt"
# IG settings that change the stored values or layout (batch_size does not: rows are independent).
# With ig.steps=auto, "steps" is the chosen whole number: an auto cache that chose 16 has the fingerprint of a steps=16
# cache (the maps are the same); the search and its figures are recorded in meta.json under "steps_auto".
FINGERPRINT_SETTINGS = ("steps", "method", "baseline", "target", "chunk_size", "store_dtype")
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def teacher_weights_sha256(teacher: nn.Module) -> str:
    """sha256 over the teacher's state_dict and non-persistent buffers (e.g. its normalisation): names, dtypes,
    shapes and bytes, in name order."""
    tensors = dict(teacher.state_dict())
    for name, buf in teacher.named_buffers():
        tensors.setdefault(name, buf)

    def chunks():
        for name in sorted(tensors):
            t = tensors[name]
            yield f"{name}|{t.dtype}|{tuple(t.shape)}|"
            yield tensor_digest(t, length=None)

    return sha256_hex(chunks())


def fingerprint_parts(teacher: nn.Module, teacher_name: str, sample_index: torch.Tensor, data_description: str,
                      cfg: IGConfig, precision: str) -> dict:
    """The named components of a cache fingerprint (what a refusal message compares)."""
    index = sample_index.detach().cpu().to(torch.int64)
    return {
        "teacher_weights": teacher_weights_sha256(teacher),
        "teacher_name": teacher_name,
        "sample_index": {"sha256": tensor_digest(index, length=None), "rows": int(index.numel())},
        "data_description": data_description,
        "ig_settings": {k: getattr(cfg, k) for k in FINGERPRINT_SETTINGS},
        "precision": precision,
    }


def _digest(parts: dict) -> str:
    return fingerprint(parts, length=None)


def ig_fingerprint(teacher: nn.Module, teacher_name: str, sample_index: torch.Tensor, data_description: str,
                   cfg: IGConfig, precision: str) -> str:
    """sha256 (hex) identifying the maps: teacher weights and name, sample indices, data, IG settings, precision."""
    return _digest(fingerprint_parts(teacher, teacher_name, sample_index, data_description, cfg, precision))


def _describe_differences(old: dict, new: dict) -> str:
    labels = {
        "teacher_weights": "teacher weights",
        "teacher_name": "teacher name",
        "sample_index": "sample index (data split/subset)",
        "data_description": "data",
        "ig_settings": "IG settings",
        "precision": "IG precision",
    }
    diffs = []
    for key, label in labels.items():
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and key == "ig_settings":
            keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            diffs.append(label + " (" + ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys) + ")")
        elif key in ("teacher_name", "data_description", "precision"):
            diffs.append(f"{label} ({a!r} -> {b!r})")
        else:
            diffs.append(label)
    return ", ".join(diffs) if diffs else "fingerprint"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _save_pt(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def chunk_path(cache_dir: Path, k: int) -> Path:
    return Path(cache_dir) / f"chunk_{k:05d}.pt"


def _read_chunk(path: Path, expected_index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """The chunk's maps when the file is complete and keyed by ``expected_index``; None otherwise."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        index, maps = obj["index"], obj["maps"]
    except Exception:  # noqa: BLE001 - an unreadable chunk is recomputed
        return None
    if not torch.equal(index, expected_index) or maps.dtype != dtype or maps.shape[0] != expected_index.numel():
        return None
    return maps


def _read_meta(cache_dir: Path) -> dict | None:
    try:
        meta = json.loads((Path(cache_dir) / META_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


COMPLETENESS_RULE = "error <= max(tolerance, reference error)"
"""How ``choose_ig_steps`` bounds the completeness error (a choice recorded under another rule is searched again)."""


def auto_search_settings(cfg: IGConfig, precision: str) -> dict:
    """What an ``ig.steps=auto`` choice depends on besides the teacher and data (which the fingerprint covers)."""
    return {"sample": cfg.auto_sample, "seed": cfg.auto_seed, "tolerance": cfg.auto_tolerance,
            "min_corr": cfg.auto_min_corr, "candidates": list(CANDIDATE_STEPS), "reference_steps": REFERENCE_STEPS,
            "method": cfg.method, "baseline": cfg.baseline, "target": cfg.target, "store_dtype": cfg.store_dtype,
            "precision": precision, "completeness_rule": COMPLETENESS_RULE}


def resolve_ig_steps(cache_dir: Path, teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: IGConfig,
                     device: torch.device, precision: str, verbose: bool = True) -> tuple[IGConfig, dict | None]:
    """``cfg`` with a whole number of steps, and the ``ig.steps=auto`` record for meta.json (None for fixed steps).

    With ``auto``, a choice already recorded in ``cache_dir``'s meta.json under the same search settings is reused
    (the cache fingerprint then still checks teacher, data and settings); otherwise rank 0 runs ``choose_ig_steps``
    on ``images`` (the whole train split) and the choice is broadcast. Prints one line with the choice."""
    if cfg.steps != "auto":
        return cfg, None
    settings = auto_search_settings(cfg, precision)
    meta = _read_meta(Path(cache_dir)) if Path(cache_dir, META_NAME).is_file() else None
    recorded = (meta or {}).get("steps_auto")
    if isinstance(recorded, dict) and recorded.get("settings") == settings and isinstance(recorded.get("steps"), int):
        record = recorded
        if verbose and _rank() == 0:
            print(f"IG steps=auto: {record['steps']} steps, as chosen before and recorded in {Path(cache_dir) / META_NAME}",
                  flush=True)
    else:
        record = None
        if _rank() == 0:
            choice = choose_ig_steps(teacher, images, labels, cfg, device, precision)
            record = {"settings": settings, **choice.to_dict()}
            if verbose:
                print(choice.line(), flush=True)
        if dist.is_available() and dist.is_initialized():
            box = [record]
            dist.broadcast_object_list(box, src=0)
            record = box[0]
    assert record is not None
    return dataclasses.replace(cfg, steps=int(record["steps"])), record


def _check_or_create_meta(cache_dir: Path, parts: dict, steps_auto: dict | None = None) -> None:
    meta_path = cache_dir / META_NAME
    fingerprint = _digest(parts)
    advice = f"delete {cache_dir} or rerun with --fresh (make: RESUME=0)"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise ToolkitError(f"{cache_dir} holds a meta.json that is not an IG cache of this toolkit; {advice}")
        if meta.get("fingerprint") != fingerprint:
            what = _describe_differences(meta.get("parts", {}), parts)
            raise ToolkitError(f"IG cache {cache_dir} was computed for other inputs (differs in: {what}); refusing to reuse "
                               f"or overwrite it: {advice}")
        if steps_auto is not None and meta.get("steps_auto") != steps_auto and _rank() == 0:
            atomic_write_json(meta_path, {**meta, "steps_auto": steps_auto})  # same maps; record the auto choice
        return
    if cache_dir.is_dir() and any(cache_dir.iterdir()):
        raise ToolkitError(f"{cache_dir} is not empty and has no {META_NAME}: not an IG cache; {advice}")
    if _rank() == 0:
        meta = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "parts": parts,
                "note": "IG maps keyed by dataset sample index; rows of chunk k are index.pt[k*chunk_size:(k+1)*chunk_size]"}
        if steps_auto is not None:
            meta["steps_auto"] = steps_auto
        atomic_write_json(meta_path, meta)


def load_or_compute_ig_maps(
    cache_dir: Path,
    teacher: nn.Module,
    teacher_name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    sample_index: torch.Tensor,
    data_description: str,
    cfg: IGConfig,
    device: torch.device,
    precision: str,
    progress: bool = True,
    steps_auto: dict | None = None,
    **ig_kwargs,
) -> torch.Tensor:
    """IG maps (N, 32, 32) in ``cfg.store_dtype``, row i for ``images[i]`` = dataset sample ``sample_index[i]``.

    Finished chunks are read back; missing ones are computed (``compute_ig_maps``) and written, so an interrupted
    run resumes from its last finished chunk. A cache made for other inputs raises ToolkitError naming the
    difference. ``ig_kwargs`` go to ``compute_ig_maps``. ``cfg.steps == "auto"`` is resolved first
    (``resolve_ig_steps``; the search's figures go to meta.json under ``steps_auto``); a caller that resolved it
    already passes the resolved ``cfg`` and its record as ``steps_auto``.
    """
    cache_dir = Path(cache_dir)
    if cfg.steps == "auto":
        cfg, steps_auto = resolve_ig_steps(cache_dir, teacher, images, labels, cfg, device, precision)
    n = images.shape[0]
    index = sample_index.detach().cpu()
    if index.dtype != torch.int64 or index.shape != (n,) or labels.shape != (n,):
        raise ToolkitError(f"sample_index must be int64 ({n},) and labels ({n},); got {index.dtype} {tuple(index.shape)}, "
                           f"labels {tuple(labels.shape)}")
    if cfg.store_dtype not in STORE_DTYPES:
        raise ToolkitError(f"ig.store_dtype must be one of {', '.join(STORE_DTYPES)}, got '{cfg.store_dtype}'")
    if cfg.chunk_size < 1:
        raise ToolkitError(f"ig.chunk_size must be >= 1, got {cfg.chunk_size}")
    dtype = STORE_DTYPES[cfg.store_dtype]
    parts = fingerprint_parts(teacher, teacher_name, index, data_description, cfg, precision)
    if _rank() == 0:  # rank 0 checks or creates the cache first: other ranks never see it half-made
        _check_or_create_meta(cache_dir, parts, steps_auto)
        if not (cache_dir / INDEX_NAME).is_file():
            _save_pt(cache_dir / INDEX_NAME, {"index": index.clone()})
    _barrier()
    if _rank() != 0:
        _check_or_create_meta(cache_dir, parts)  # the meta rank 0 wrote: same fingerprint or refused

    bounds = [(s, min(s + cfg.chunk_size, n)) for s in range(0, n, cfg.chunk_size)]
    chunks: list[torch.Tensor | None] = [_read_chunk(chunk_path(cache_dir, k), index[s:e], dtype) for k, (s, e) in enumerate(bounds)]
    todo = [k for k, c in enumerate(chunks) if c is None]
    if todo and "max_rows" not in ig_kwargs:
        rows = choose_ig_rows(teacher, images[bounds[todo[0]][0]:], labels[bounds[todo[0]][0]:], cfg, device, precision)
        if rows.how != "default" and _rank() == 0:
            print(rows.describe(), flush=True)
        ig_kwargs = {**ig_kwargs, "max_rows": rows.rows}
    bar = None
    if todo and progress and _rank() == 0:
        done = n - sum(bounds[k][1] - bounds[k][0] for k in todo)
        bar = tqdm(total=n, initial=done, unit="img", desc=f"IG maps -> {cache_dir.name}", dynamic_ncols=True)
    try:
        for k in todo:
            s, e = bounds[k]
            maps = compute_ig_maps(teacher, images[s:e], labels[s:e], cfg, device, precision, progress=False, pbar=bar,
                                   **ig_kwargs).to(dtype)
            if _rank() == 0:
                _save_pt(chunk_path(cache_dir, k), {"index": index[s:e].clone(), "maps": maps})
            chunks[k] = maps
    finally:
        if bar is not None:
            bar.close()
    _barrier()
    return torch.cat(chunks) if chunks else torch.empty(0, *images.shape[2:], dtype=dtype)  # type: ignore[arg-type]


def read_ig_cache(cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample_index (N,), maps (N, H, W)) of a complete cache, without recomputing; ToolkitError if incomplete."""
    cache_dir = Path(cache_dir)
    try:
        meta = json.loads((cache_dir / META_NAME).read_text())
        index = torch.load(cache_dir / INDEX_NAME, map_location="cpu", weights_only=True)["index"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise ToolkitError(f"{cache_dir} is not a readable IG cache: {exc}") from None
    settings = meta["parts"]["ig_settings"]
    size, dtype = settings["chunk_size"], STORE_DTYPES[settings["store_dtype"]]
    out = []
    for k, s in enumerate(range(0, index.numel(), size)):
        maps = _read_chunk(chunk_path(cache_dir, k), index[s:s + size], dtype)
        if maps is None:
            raise ToolkitError(f"IG cache {cache_dir} is incomplete: chunk {k} missing or damaged")
        out.append(maps)
    return index, torch.cat(out) if out else torch.empty(0)


__all__ = ["fingerprint_parts", "ig_fingerprint", "load_or_compute_ig_maps", "read_ig_cache", "resolve_ig_steps",
           "teacher_weights_sha256"]
