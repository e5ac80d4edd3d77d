"""A matrix factorization on synthetic ratings, trained three ways for the benchmark: all
in Numba with ``fastadam.numba`` (the docs' example), from Python with NumPy gradients
and ``fastadam.SparseAdam``, and in torch with sparse embeddings and
``torch.optim.SparseAdam``. Each is lazy Adam on the rows a batch touches, duplicates
summed, with one step count per table: the same optimizer, so epochs compare."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .. import numba as adam
from ..sparse import SparseAdam


@dataclass
class Ratings:
    """Synthetic ratings: ``users[k]`` rated ``items[k]`` as ``ratings[k]``."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    shape: tuple[int, int, int]  # (users, items, rank)


def synthetic(rng, users: int, items: int, rank: int, count: int) -> Ratings:
    """Ratings from a random rank-``rank`` model, plus noise."""
    true_p = rng.standard_normal((users, rank)).astype(np.float32) / rank**0.25
    true_q = rng.standard_normal((items, rank)).astype(np.float32) / rank**0.25
    u, i = rng.integers(0, users, count), rng.integers(0, items, count)
    r = np.einsum("kr,kr->k", true_p[u], true_q[i]) + 0.1 * rng.standard_normal(count)
    return Ratings(u, i, r.astype(np.float32), (users, items, rank))


def initial(data: Ratings, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The factors every trainer starts from."""
    rng = np.random.default_rng(seed)
    users, items, rank = data.shape
    return (0.1 * rng.standard_normal((users, rank)).astype(np.float32),
            0.1 * rng.standard_normal((items, rank)).astype(np.float32))


@numba.njit
def numba_epoch(p, q, state, users, items, ratings, h, step, batch):
    """One epoch in compiled code; returns the step count after it."""
    rank = p.shape[1]
    for start in range(0, ratings.size, batch):
        stop = min(start + batch, ratings.size)
        grad_p = np.empty((stop - start, rank), np.float32)
        grad_q = np.empty((stop - start, rank), np.float32)
        scale = np.float32(2.0 / (stop - start))  # of the mean squared error
        for b in range(stop - start):
            u, i = users[start + b], items[start + b]
            error = np.float32(0.0)
            for j in range(rank):
                error += p[u, j] * q[i, j]
            error = scale * (error - ratings[start + b])
            for j in range(rank):
                grad_p[b, j] = error * q[i, j]
                grad_q[b, j] = error * p[u, j]
        step += 1
        c = adam.coefficients(step, h)
        rows, summed = adam.sum_rows(users[start:stop], grad_p)
        adam.update_rows(p, state[0], state[1], rows, summed, c)
        rows, summed = adam.sum_rows(items[start:stop], grad_q)
        adam.update_rows(q, state[2], state[3], rows, summed, c)
    return step


def numpy_epoch(p, q, optimizers, data: Ratings, batch: int) -> None:
    """One epoch from Python: NumPy gradients, ``fastadam.SparseAdam`` steps."""
    for start in range(0, data.ratings.size, batch):
        u, i = data.users[start:start + batch], data.items[start:start + batch]
        pu, qi = p[u], q[i]
        error = (2.0 / u.size) * (np.einsum("kr,kr->k", pu, qi) - data.ratings[start:start + batch])
        optimizers[0].step(u, error[:, None] * qi)
        optimizers[1].step(i, error[:, None] * pu)


def torch_epoch(model, optimizer, tensors, batch: int) -> None:
    """One epoch in torch: sparse embeddings, ``torch.optim.SparseAdam``."""
    users, items, ratings = tensors
    for start in range(0, ratings.numel(), batch):
        u, i = users[start:start + batch], items[start:start + batch]
        loss = ((model[0](u) * model[1](i)).sum(1) - ratings[start:start + batch]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def rmse(p, q, data: Ratings) -> float:
    """The root mean squared error of the factors on the ratings."""
    pred = np.einsum("kr,kr->k", p[data.users], q[data.items])
    return float(np.sqrt(np.mean((pred - data.ratings) ** 2)))


def trainers(data: Ratings, lr: float, batch: int, torch: bool) -> dict:
    """``{name: (epoch(), factors())}``: each way of training, from the same start."""
    out = {}
    p, q = initial(data)
    state = [np.zeros_like(a) for a in (p, p, q, q)]
    h = adam.hyper(lr=lr)
    count = [0]

    def numba_run():
        count[0] = numba_epoch(p, q, state, data.users, data.items, data.ratings, h, count[0],
                               batch)

    out["fastadam.numba, all in Numba"] = (numba_run, lambda: (p, q))
    p2, q2 = initial(data)
    optimizers = (SparseAdam(p2, lr=lr), SparseAdam(q2, lr=lr))
    out["fastadam.SparseAdam from Python"] = (
        lambda: numpy_epoch(p2, q2, optimizers, data, batch), lambda: (p2, q2))
    if torch:
        out["torch.optim.SparseAdam"] = _torch_trainer(data, lr, batch)
    return out


def _torch_trainer(data: Ratings, lr: float, batch: int):
    import torch  # optional: a peer

    p3, q3 = initial(data)
    model = [torch.nn.Embedding.from_pretrained(torch.from_numpy(a.copy()), freeze=False,
                                                sparse=True) for a in (p3, q3)]
    optimizer = torch.optim.SparseAdam([e.weight for e in model], lr=lr)
    tensors = (torch.from_numpy(data.users), torch.from_numpy(data.items),
               torch.from_numpy(data.ratings))
    return (lambda: torch_epoch(model, optimizer, tensors, batch),
            lambda: tuple(e.weight.detach().numpy() for e in model))
