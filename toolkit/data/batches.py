"""Index batches over in-memory data, shuffled from a seed (one generator per epoch: resumable)."""

from __future__ import annotations

from typing import Iterator

import torch


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A generator determined by (seed, epoch, stream) alone, so a resumed run redraws the same epoch."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1))
    return g


def index_batches(n: int, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Yield index tensors covering range(n); shuffled when ``generator`` is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
