"""Training batches of one epoch: shuffled rows, crop + flip (co-applied to IG maps), IG overlay.

Each kind of randomness has its own generator derived from (seed, epoch, stream), so runs with one seed share batch
order and crops exactly whatever the configuration: the overlay draws from a stream of its own and never shifts the
crops of later batches (paired comparisons, ``tests/test_training.py``). Dropout draws from the global generator,
which the trainer re-seeds from the ``dropout`` stream at the start of every epoch inside ``torch.random.fork_rng``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from toolkit.config import OverlayConfig
from toolkit.data.augment import AugmentSpec, augment_batch, random_crop_flip, to_float
from toolkit.data.batches import epoch_generator, index_batches, num_batches
from toolkit.data.cifar10 import ImageSet

STREAMS = {"order": 0, "augment": 1, "overlay": 2, "dropout": 3}
"""Stream numbers for :func:`toolkit.data.batches.epoch_generator`; fixed, so recorded runs stay reproducible."""


@dataclass
class TrainBatch:
    """One global batch. x: float (B, 3, H, W) in [0, 1] as the student will see it; y: (B,) int64; index: (B,) rows
    of the train set; overlaid: bool (B,); teacher_logits: (B, C) cached rows or None."""

    index: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    overlaid: torch.Tensor
    teacher_logits: torch.Tensor | None = None

    def share(self, rank: int, world: int) -> "TrainBatch":
        """This rank's rows (every world-th row from ``rank``); the whole batch when ``world`` is 1."""
        if world == 1:
            return self
        s = slice(rank, None, world)
        return TrainBatch(self.index[s], self.x[s], self.y[s], self.overlaid[s],
                          None if self.teacher_logits is None else self.teacher_logits[s])


def steps_per_epoch(n_train: int, global_batch: int, max_steps: int | None = None) -> int:
    """Optimizer steps in one epoch: full batches only when there is more than one batch of data."""
    steps = num_batches(n_train, global_batch, drop_last=n_train > global_batch)
    return min(steps, max_steps) if max_steps else steps


def epoch_batches(train: ImageSet, global_batch: int, seed: int, epoch: int, augment: "AugmentSpec | int" = 4,
                  ig_maps: torch.Tensor | None = None, overlay: OverlayConfig | None = None,
                  teacher_logits: torch.Tensor | None = None, max_steps: int | None = None) -> Iterator[TrainBatch]:
    """The augmented global batches of ``epoch``, the same for every rank and every resume.

    ``augment``: the crop/flip policy (``toolkit.data.augment.AugmentSpec``), or a padding in pixels for CIFAR's
    pad-and-crop. ``ig_maps``: (N, H, W) rows aligned with ``train``, co-augmented with the images; the overlay is
    applied when both maps and ``overlay`` (with
    prob > 0) are given. ``teacher_logits``: (N, C) cached rows aligned with ``train``, or None.
    """
    order = epoch_generator(seed, epoch, STREAMS["order"])
    augment_gen = epoch_generator(seed, epoch, STREAMS["augment"])
    overlay_gen = epoch_generator(seed, epoch, STREAMS["overlay"])
    use_overlay = ig_maps is not None and overlay is not None and overlay.prob > 0
    limit = steps_per_epoch(len(train), global_batch, max_steps)
    batches = index_batches(len(train), global_batch, order, drop_last=len(train) > global_batch)
    for step, idx in enumerate(batches):
        if step >= limit:
            break
        maps = [ig_maps[idx].float()] if use_overlay else []
        if isinstance(augment, int):
            x, maps = random_crop_flip(to_float(train.images[idx]), augment_gen, augment, extra=maps)
        else:
            x, maps = augment_batch(to_float(train.images[idx]), augment_gen, augment, extra=maps)
        overlaid = torch.zeros(len(idx), dtype=torch.bool)
        if use_overlay:
            from toolkit.attribution.overlay import apply_ig_overlay

            x, overlaid = apply_ig_overlay(x, maps[0], overlay, overlay_gen)
        yield TrainBatch(idx, x, train.labels[idx], overlaid, None if teacher_logits is None else teacher_logits[idx])


def dropout_seed(seed: int, epoch: int) -> int:
    """The seed of the global generator (dropout) for ``epoch``."""
    return epoch_generator(seed, epoch, STREAMS["dropout"]).initial_seed()
