"""Choices made on held-out training images, never on the test split.

:func:`split_train_val` holds a seeded random subset of the training split out
as a validation split (:func:`default_val_images` says how many when no number
is given), :func:`choose_on_val` picks the candidate with the best validation
accuracy, and ``_tune_on_val`` does both for the kNN's ``k``
(:mod:`~mae_from_scratch.knn`) and the linear probe's ``blr``
(:mod:`~mae_from_scratch.linear_probe`).  The test split is scored once, after
the choice.
"""

from __future__ import annotations

from typing import Callable

import torch

VAL_PART, VAL_MAX = 5, 5000  # without --val_images: 1 / VAL_PART of the training split held out, at most VAL_MAX


def split_train_val(n: int, val_images: int = 5000, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` training indices into ``(train', val)``, disjoint, covering all ``n``.

    ``val`` is ``val_images`` indices drawn by a permutation seeded with
    ``seed`` (the same split on every call, every machine); ``train'`` is the
    rest.  Both lists are sorted.  ``val_images=0`` gives ``(all, [])``.  At
    least one image must stay in ``train'``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a whole number >= 0, got {n!r}")
    if isinstance(val_images, bool) or not isinstance(val_images, int) or val_images < 0:
        raise ValueError(f"val_images must be a whole number >= 0, got {val_images!r}")
    if val_images and val_images >= n:
        raise ValueError(f"val_images={val_images} leaves nothing to train on: the training split has {n} images "
                         f"(hold out at most {max(n - 1, 0)})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[val_images:].tolist()), sorted(perm[:val_images].tolist())


def default_val_images(n: int) -> int:
    """The validation images held out of ``n`` training images when no number is given:
    a fifth (``n // VAL_PART``, as chapter 9 splits the offline photos), at most ``VAL_MAX``
    (5000 of CIFAR-10's 50000, the usual 45000/5000 split), at least 1 so that a small split
    can still be tuned on, and 0 when ``n < 2`` (holding out the only image would leave
    nothing to train on)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a whole number >= 0, got {n!r}")
    if n < 2:
        return 0
    return max(1, min(VAL_MAX, n // VAL_PART))


def choose_on_val(candidates, val_accuracy: Callable[[object], float]) -> tuple[object, dict]:
    """The candidate with the highest ``val_accuracy(candidate)``, and every candidate's score.

    Ties go to the earliest candidate in ``candidates`` order.  Returns
    ``(chosen, {candidate: accuracy})``.
    """
    scores = {c: float(val_accuracy(c)) for c in candidates}
    if not scores:
        raise ValueError("no candidates to choose from")
    best = max(scores.values())
    return next(c for c in candidates if scores[c] == best), scores


def _key(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _tune_on_val(result: dict, train_labels, grid, val_images: int | None, seed: int, score,
                 name: str = "value", fixed=None):
    """Hold ``val_images`` training images out (:func:`split_train_val`; ``None``: the
    :func:`default_val_images`), score every candidate in ``grid`` with
    ``score(train_idx, val_idx, candidate)``, record the scores in ``result`` and return the
    best candidate (:func:`choose_on_val`).

    When every candidate scores the same, the validation split cannot tell them apart and the
    first one would be "chosen" by its place in the grid alone: then ``None`` is returned,
    ``result["tuned"]`` is false and ``result["why_not_tuned"]`` says that the ``fixed`` value
    of ``name`` is used instead."""
    if val_images is None:
        val_images = default_val_images(len(train_labels))
    tr, va = split_train_val(len(train_labels), val_images, seed)
    if not va:
        raise ValueError("tuning needs a validation split: val_images must be at least 1")
    tr, va = torch.tensor(tr), torch.tensor(va)
    chosen, scores = choose_on_val(list(grid), lambda c: score(tr, va, c))
    result.update(val_accuracy={_key(c): a for c, a in scores.items()}, val_images=len(va), grid=list(grid))
    if len(scores) > 1 and len(set(scores.values())) == 1:
        result.update(tuned=False, why_not_tuned=(
            f"every {name} in {list(grid)} scored {next(iter(scores.values())):.4g} on the {len(va)} validation "
            f"image{'s' * (len(va) != 1)}, which cannot tell them apart; the fixed {name} {_key(fixed)} was used "
            "(more validation images may separate them)"))
        return None
    return chosen
