"""The kNN classifier on frozen features: the ``k`` most similar training images vote.

Similarity is the cosine of two feature vectors, and each of the ``k``
neighbours votes for its label with weight ``exp(similarity / temperature)``.
:func:`knn_evaluation` scores the test split with ``k`` fixed, or with ``k``
chosen from :data:`KNN_GRID` on held-out training images
(:mod:`~mae_from_scratch.validation`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .validation import _tune_on_val

KNN_GRID = (10, 20, 50)  # the k that --tune tries


@torch.no_grad()
def knn_predict(train_feats, train_labels, test_feats, k: int = 20, temperature: float = 0.07,
                num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Labels predicted for ``test_feats (M, D)`` by a weighted vote of the ``k`` most
    cosine-similar rows of ``train_feats (N, D)``; weight ``exp(sim / temperature)``."""
    if train_feats.shape[0] == 0:
        raise ValueError("the kNN training set is empty")
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    train = F.normalize(train_feats.float(), dim=1)
    preds = []
    for start in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[start:start + chunk].float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(q.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 20, temperature: float = 0.07,
                 num_classes: int | None = None) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``test_labels``."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes)
    return (pred == test_labels).float().mean().item()


def knn_evaluation(train_feats, train_labels, test_feats, test_labels, k: int = 20, temperature: float = 0.07,
                   num_classes: int | None = None, tune: bool = False, grid=KNN_GRID,
                   val_images: int | None = None, seed: int = 0) -> dict:
    """kNN accuracy on the test split, with ``k`` fixed or chosen on a validation split.

    ``tune=False``: ``k`` as given, all training features vote, the result
    holds ``"tuned": False``.  ``tune=True``: :func:`~mae_from_scratch.validation.split_train_val` holds out
    ``val_images`` training images (``None``: :func:`~mae_from_scratch.validation.default_val_images`), each
    ``k`` in ``grid`` is scored on them with the rest as neighbours, the best
    (:func:`~mae_from_scratch.validation.choose_on_val`) is used with *all* training features as neighbours,
    and the test split is scored once.
    The test features and labels are not touched before that choice.

    Returns ``{"accuracy", "k", "temperature", "tuned"}`` plus, when tuned,
    ``"val_accuracy"`` (``{str(k): accuracy}``), ``"val_images"`` and ``"grid"``.  ``"k"`` is
    the number of neighbours that voted: a ``k`` above the number of training images is cut to it,
    and ``"k_clipped_from"`` holds the ``k`` asked for (or chosen).  When every ``k`` in ``grid``
    scores the same on the validation split, nothing was chosen: ``"tuned"`` is false, the given
    ``k`` is used and ``"why_not_tuned"`` says so.
    """
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    result = {"tuned": bool(tune)}
    if tune:
        chosen = _tune_on_val(result, train_labels, grid, val_images, seed, lambda tr, va, c: knn_accuracy(
            train_feats[tr], train_labels[tr], train_feats[va], train_labels[va], c, temperature, num_classes),
            "k", k)
        k = k if chosen is None else chosen
    acc = knn_accuracy(train_feats, train_labels, test_feats, test_labels, k, temperature, num_classes)
    used = min(k, train_feats.shape[0])  # what knn_predict lets vote
    result.update(k=used, **({"k_clipped_from": k} if used != k else {}), temperature=temperature, accuracy=acc)
    return result

