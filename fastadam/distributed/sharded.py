"""Sharded Adam (ZeRO stage 1 and 2): every rank keeps the full params and 1/N of the state.

A step, on every rank::

    local gradients --reduce-scatter (sum)--> this rank's shard of the summed gradient
    fused Adam step on the shard (the 1/N of the mean folded into grad_scale)
    --all-gather--> every rank's params updated, identical

The params are one flat buffer (a list or param groups are flattened in order);
rank r owns the contiguous segment ``counts[r]`` long, the counts differing by at
most one. The shard's step is a ``fastadam.Adam`` over views of the params that
fall in the segment (cut at array boundaries, one view per piece), so every
option of Adam works sharded. Collectives run on mpi4py or torch.distributed
(``comm.py``); whatever can fail is checked locally first and agreed on
collectively, so a rank that refuses raises on every rank and none is left
waiting in a collective.
"""

from __future__ import annotations

import math

import numpy as np

from .._backends.dispatch import all_finite, sum_of_squares
from .._core import array_checks, checks
from .._core import options as declared
from .._core.gpu import is_device
from .._core.hyper import clip_factor, clipped_scale
from .._state import checkpoint as _checkpoint
from .._state import groups as _groups
from ..optimizer import Adam
from .comm import offsets, transport
from .pieces import cut_entry, float_moments, shard_counts

__all__ = ["ShardedAdam", "ShardedAdamW"]

# The keywords beyond the signature's: the other hyperparameters, and the settings.
_SIGNATURE = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
              "decoupled_weight_decay")
_OPTION_KEYS = (*(k for k in declared.KEYS if k not in _SIGNATURE), *declared.SETTINGS)


class ShardedAdam:
    """Adam with its state sharded across ranks (ZeRO): ``torch.optim.Adam`` semantics on
    the mean of the ranks' gradients, each rank holding the state of its slice only.

    Example (``mpiexec -n 4 python train.py``)::

        params = np.random.default_rng(0).standard_normal(10_000_000).astype(np.float32)
        opt = fastadam.distributed.ShardedAdamW(params, lr=1e-3)   # MPI.COMM_WORLD
        for grads in local_gradient_stream():
            opt.step(grads)      # averaged across ranks; params identical on every rank

    ``params``: this rank's full params, an array, a list of arrays or param groups
    (host NumPy arrays of one dtype), the same on every rank: rank 0's are broadcast
    to the others at construction. ``comm``: an mpi4py communicator, a
    torch.distributed process group, or None (torch's default group if initialised,
    else ``MPI.COMM_WORLD``). ``options``: the keyword-only options of
    :class:`fastadam.Adam` (16-bit params with master weights or Kahan summation in
    the shard, ``state_dtype`` including "8bit" and "4bit", ``skip_nonfinite``, ...).

    Ranks that disagree on sizes, dtypes or hyperparameters get a ValueError on every
    rank at construction. Every method is collective: call it on every rank.
    """

    def __init__(self, params, comm=None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False,
                 decoupled_weight_decay: bool = False, num_threads: int | None = None,
                 **options) -> None:
        self._comm = comm = transport(comm)
        error, fingerprint = None, None
        try:  # everything local first: a rank that refuses must not leave others waiting
            unknown = set(options) - set(_OPTION_KEYS)
            if unknown:
                raise TypeError(f"unknown options {sorted(unknown)}; ShardedAdam takes "
                                f"{', '.join(_OPTION_KEYS)}")
            defaults = {**declared.DEFAULTS, "lr": lr, "betas": betas, "eps": eps,
                        "weight_decay": weight_decay, "amsgrad": amsgrad, "maximize": maximize,
                        "decoupled_weight_decay": decoupled_weight_decay,
                        **{k: options.pop(k) for k in declared.KEYS if k in options}}
            self._setup(params, defaults, options, num_threads)
            fingerprint = self._fingerprint()
        except (TypeError, ValueError, ImportError) as e:
            error = e
        answers = comm.allgather_object(None if error is None else f"{type(error).__name__}: "
                                        f"{error}")
        refused = [r for r, a in enumerate(answers) if a is not None]
        if refused:
            if error is not None:
                raise error
            raise ValueError(f"rank {refused[0]} refused the construction ({answers[refused[0]]}); "
                             "nothing was built on any rank")
        prints = comm.allgather_object(fingerprint)
        for field in fingerprint:
            values = [p[field] for p in prints]
            if any(v != values[0] for v in values):
                ranks = [r for r, v in enumerate(values) if v != values[0]]
                raise ValueError(f"ranks disagree on {field}: rank 0 has {values[0]!r}, rank "
                                 f"{ranks[0]} has {values[ranks[0]]!r}; every rank must "
                                 "construct the optimizer with the same params and settings")
        comm.broadcast(self._flat, 0)  # identical params: rank 0's
        self._scatter_params()
        self._inner = self._make_inner()

    # --- construction -------------------------------------------------------

    def _setup(self, params, defaults: dict, options: dict, num_threads) -> None:
        self._single = isinstance(params, np.ndarray)
        if is_device(params):
            raise TypeError("params: the sharded optimizer keeps state on the CPU; pass "
                            "NumPy arrays")
        specs = [{"params": [params]}] if self._single else _groups.specs(params)
        self._hypers = [_groups.group_hyper(defaults, spec) for spec in specs]
        arrays = [a for spec in specs for a in spec["params"]]
        names = ["params"] if self._single else [f"params[{i}]" for i in range(len(arrays))]
        views = [array_checks.host_array(name, a, writable=True) for name, a in zip(names, arrays)]
        array_checks.disjoint(dict(zip(names, views)))
        if len({a.dtype for a in views}) > 1:
            raise TypeError("params must share one dtype to be sharded as one flat buffer; "
                            f"got {sorted({a.dtype.name for a in views})}")
        self._arrays = views
        self._group_of = [g for g, spec in enumerate(specs) for _ in spec["params"]]
        self._options = dict(options)
        self._skip_nonfinite = checks.flag("skip_nonfinite",
                                          self._options.pop("skip_nonfinite", False))
        self._max_grad_norm = checks.max_grad_norm(self._options.pop("max_grad_norm", None))
        self.grad_norm = None  # with max_grad_norm: the last step's global norm
        self._num_threads = checks.num_threads(num_threads)
        self.params = params if self._single else arrays
        sizes = [a.size for a in views]
        self._starts = offsets(sizes)
        n = int(self._starts[-1])
        self._counts = shard_counts(n, self._comm.size)
        bounds = offsets(self._counts)
        self._lo, self._hi = int(bounds[self._comm.rank]), int(bounds[self._comm.rank + 1])
        dtype = views[0].dtype
        self._flat = views[0].reshape(-1) if self._single else np.concatenate(
            [a.reshape(-1) for a in views]).astype(dtype, copy=False)
        wide = np.float64 if dtype == np.float64 else np.float32
        self._grad_flat = np.empty(n, wide)  # the local gradients, flattened
        self._grad_shard = np.empty(self._hi - self._lo, wide)  # this rank's summed shard
        # This rank's pieces: (array index, first, stop) within that array, in flat order.
        self._pieces = []
        for i, (a, b) in enumerate(zip(self._starts[:-1], self._starts[1:])):
            first, stop = max(a, self._lo), min(b, self._hi)
            if first < stop:
                self._pieces.append((i, int(first - a), int(stop - a)))
        self._steps = 0

    def _fingerprint(self) -> dict:
        return {"sizes": [a.shape for a in self._arrays], "dtype": self._arrays[0].dtype.name,
                "groups": self._group_of, "hyperparameters": [tuple(h) for h in self._hypers],
                "options": repr(sorted(self._options.items())),
                "skip_nonfinite": self._skip_nonfinite, "max_grad_norm": self._max_grad_norm}

    def _piece_views(self, source: list) -> list:
        """Each piece of this rank as a 1-D view into ``source`` (arrays, flattened)."""
        return [source[i].reshape(-1)[first:stop] for i, first, stop in self._pieces]

    def _make_inner(self) -> Adam | None:
        if not self._pieces:
            return None
        pieces = self._piece_views(self._arrays)
        groups, self._inner_group = [], {}
        for g, h in enumerate(self._hypers):
            members = [p for p, (i, *_) in zip(pieces, self._pieces) if self._group_of[i] == g]
            if members:
                self._inner_group[g] = len(groups)
                groups.append({"params": members, **_groups.as_dict(h)})
        return Adam(groups, num_threads=self._num_threads, **self._options)

    def _scatter_params(self) -> None:
        """Copy the flat params out to the user's arrays (lists; one array is the buffer)."""
        if not self._single:
            for a, start, stop in zip(self._arrays, self._starts[:-1], self._starts[1:]):
                a.reshape(-1)[...] = self._flat[start:stop]

    # --- hyperparameters ----------------------------------------------------

    @property
    def rank(self) -> int:
        """This rank's index in the communicator."""
        return self._comm.rank

    @property
    def world_size(self) -> int:
        """How many ranks share the state."""
        return self._comm.size

    @property
    def shard(self) -> tuple[int, int]:
        """(start, stop): this rank's segment of the flat params."""
        return self._lo, self._hi

    @property
    def lr(self) -> float:
        """The learning rate of the next step (of the first group); setting it sets every
        group's. Set it alike on every rank."""
        return self._hypers[0].lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.set_lr(value)

    def set_lr(self, value: float, group: int | None = None) -> None:
        """Set the learning rate of ``group`` (an index), or of every group."""
        value = checks.real("lr", value)
        indices = (range(len(self._hypers)) if group is None
                   else [_groups.index(group, len(self._hypers))])
        for g in indices:
            self._hypers[g] = self._hypers[g]._replace(lr=value)
            if self._inner is not None and g in self._inner_group:
                self._inner.set_lr(value, self._inner_group[g])

    @property
    def step_count(self) -> int:
        """How many updates have been applied (skipped steps are not counted)."""
        return self._steps

    @property
    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds (moments, master params, ...)."""
        if self._inner is None:
            return 0
        return sum(a.nbytes for s in self._inner._slots for a in [*s.state, *(s.absmax or [])]
                   if a is not None)

    # --- stepping -----------------------------------------------------------

    def step(self, grads, grad_scale: float | None = None) -> bool:
        """One step with this rank's local ``grads`` (an array, or a list in the params'
        order; any float dtype), averaged across ranks. Returns False, on every rank and
        with nothing changed, when ``skip_nonfinite`` is on and any rank's gradient holds
        NaN or inf. A gradient refused on any rank raises on every rank (the refusing
        rank's own error there, ValueError elsewhere) and nothing changes."""
        error = None
        try:
            scale = checks.grad_scale(grad_scale)
            self._flatten(grads)
        except (TypeError, ValueError) as e:
            error = e
        if self._comm.any(error is not None):
            if error is not None:
                raise error
            raise ValueError("the step was refused on another rank (its gradients); nothing "
                             "changed on any rank")
        self._comm.reduce_scatter_sum(self._send, self._grad_shard, self._counts)
        inner_scale = self._comm.size * (scale or 1.0)  # the mean's 1/N: no extra pass
        if self._max_grad_norm is not None:  # the global norm: one scalar from each rank
            squares = sum_of_squares("cpu", [self._grad_shard], num_threads=self._num_threads)
            # Summed in rank order on every rank: the same norm everywhere.
            norm = math.sqrt(sum(self._comm.allgather_object(squares))) / inner_scale
            self.grad_norm = norm
            if self._skip_nonfinite and not math.isfinite(norm):
                return False
            inner_scale = clipped_scale(inner_scale, clip_factor(norm, self._max_grad_norm))
        elif self._skip_nonfinite:
            found = not all_finite("cpu", [self._grad_shard], num_threads=self._num_threads)
            if self._comm.any(found):
                return False
        if self._inner is not None:
            shard = [self._grad_shard[a - self._lo:b - self._lo] for a, b in self._ranges()]
            self._inner._step_prescaled(shard, inner_scale)
        self._steps += 1
        if not self._single:
            for piece, (a, b) in zip(self._piece_views(self._arrays), self._ranges()):
                self._flat[a:b] = piece
        self._comm.allgather(self._flat, self._counts)
        self._scatter_params()
        return True

    def _ranges(self) -> list:
        """Each piece's (start, stop) in the flat buffer."""
        return [(int(self._starts[i]) + first, int(self._starts[i]) + stop)
                for i, first, stop in self._pieces]

    def _flatten(self, grads) -> None:
        """Check ``grads`` against the params and copy them into the flat gradient buffer."""
        if self._single:
            grads = [grads]
        elif not isinstance(grads, (list, tuple)) or len(grads) != len(self._arrays):
            raise ValueError(f"grads must be a list of {len(self._arrays)} arrays, in the "
                             "params' order")
        names = ["grad"] if self._single else [f"grads[{i}]" for i in range(len(grads))]
        checked = [array_checks.like(name, g, a, writable=False)
                   for name, g, a in zip(names, grads, self._arrays)]
        if self._single and checked[0].dtype == self._grad_flat.dtype:
            self._send = checked[0].reshape(-1)  # reduced from where it is: no copy
            return
        for g, start, stop in zip(checked, self._starts[:-1], self._starts[1:]):
            self._grad_flat[start:stop] = g.reshape(-1)
        self._send = self._grad_flat

    # --- state --------------------------------------------------------------

    def _param_groups(self) -> list[dict]:
        out = []
        for g, h in enumerate(self._hypers):
            members = [i for i, owner in enumerate(self._group_of) if owner == g]
            out.append({**_groups.as_dict(h), "params": members})
        return out

    def state_dict(self) -> dict:
        """This rank's shard: ``{"state": {k: {...}}, "param_groups": [...]}`` with one
        state entry per piece of a params array in this rank's segment, each group
        holding ``"shard": [rank, ranks, start, stop]``."""
        inner = self._inner.state_dict() if self._inner is not None else {"state": {}}
        layout = [self.rank, self.world_size, self._lo, self._hi]
        return {"state": inner["state"],
                "param_groups": [{**g, "shard": layout} for g in self._param_groups()]}

    def consolidated_state_dict(self, root: int = 0) -> dict | None:
        """The whole state, gathered on ``root`` (None elsewhere) as ``fastadam.Adam``
        /``AdamW`` over the same params lays it out, so they load it. 8-bit moments come
        decoded to float32 (an 8-bit Adam loads them quantized)."""
        root = _groups.index(root, self.world_size)
        pieces = self._float_pieces()
        described = {k: a.dtype.str for p in pieces for k, a in p.items()}
        everyone = self._comm.allgather_object((described, self._inner.options
                                                if self._inner is not None else None))
        dtypes = {k: d for described, _ in everyone for k, d in described.items()}
        options = next((o for _, o in everyone if o), {"kahan_summation": False,
                                                        "master_weights": False})
        out = {k: self._comm.gather(
            np.concatenate([p.get(k, np.zeros(p["exp_avg"].size)).astype(np.float64)
                            for p in pieces]) if pieces else np.zeros(0),
            self._counts, root, np.float64) for k in dtypes}
        if self.rank != root:
            return None
        state = {}
        for i, (a, start, stop) in enumerate(zip(self._arrays, self._starts[:-1],
                                                 self._starts[1:])):
            entry = {"step": self._steps}
            for k, dtype in dtypes.items():
                if k != "max_exp_avg_sq" or self._hypers[self._group_of[i]].amsgrad:
                    entry[k] = out[k][start:stop].astype(np.dtype(dtype)).reshape(a.shape)
            state[i] = entry
        options = {k: options[k] for k in ("kahan_summation", "master_weights")}
        return {"state": state, "param_groups": [{**g, **options}
                                                 for g in self._param_groups()]}

    def _float_pieces(self) -> list[dict]:
        """This rank's state per piece, every array 1-D and in floats (low-bit decoded)."""
        if self._inner is None:
            return []
        return [float_moments(entry, slot.flat.size) for entry, slot in
                zip(self._inner.state_dict()["state"].values(), self._inner._slots)]

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore this rank's ``state_dict()``, or a consolidated one (``fastadam.Adam``'s
        layout, from ``consolidated_state_dict`` or an unsharded optimizer), re-sharded
        to this rank's segment. Refused on any rank, it raises on every rank and changes
        nothing."""
        error, backup = None, None
        try:
            hypers, inner = self._resharded(state_dict)
            if self._inner is not None:
                backup = self._inner.state_dict()
                self._inner.load_state_dict(inner)
            steps = self._steps_in(state_dict)
        except (TypeError, ValueError, KeyError) as e:
            error = e if not isinstance(e, KeyError) else ValueError(f"state_dict lacks {e}")
            steps = None
        if self._comm.any(error is not None):
            if backup is not None:  # loaded here, refused elsewhere: back to what it was
                self._inner.load_state_dict(backup)
            if error is not None:
                raise error
            raise ValueError("the state_dict was refused on another rank; nothing changed")
        self._hypers = hypers
        # A rank without params holds no entries: the count is every rank's
        self._steps = max(s for s in self._comm.allgather_object(steps) if s is not None)

    def _resharded(self, state_dict: dict) -> tuple[list, dict]:
        """(each group's hyperparameters, this rank's inner state_dict) from either form."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with keys 'state' and 'param_groups'")
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self._hypers):
            raise ValueError(f"state_dict['param_groups'] must hold {len(self._hypers)} "
                             "group(s)")
        hypers = [_groups.group_hyper({**_groups.as_dict(h)}, {
            k: v for k, v in g.items() if k in declared.KEYS})
            for h, g in zip(self._hypers, groups)]
        layout = groups[0].get("shard") if groups else None
        state = state_dict["state"]
        if layout is not None:  # a shard
            if list(layout) != [self.rank, self.world_size, self._lo, self._hi]:
                raise ValueError(f"state_dict is the shard {list(layout)} (rank, ranks, start, "
                                 f"stop); this rank holds {[self.rank, self.world_size]} "
                                 f"{[self._lo, self._hi]}: load a consolidated state_dict")
            pieces = state
        else:  # consolidated: cut each array's entry to this rank's pieces
            if not isinstance(state, dict) or sorted(state) != list(range(len(self._arrays))):
                raise ValueError(f"state_dict['state'] must hold one entry per params array "
                                 f"({len(self._arrays)})")
            pieces = {k: cut_entry(state[i], i, self._arrays[i].size, first, stop)
                      for k, (i, first, stop) in enumerate(self._pieces)}
        inner_groups = [{**_groups.as_dict(hypers[g]), **{
            k: v for k, v in groups[g].items() if k in ("kahan_summation", "master_weights")},
            "params": []} for g in self._inner_group] if self._pieces else []
        for k, (i, *_) in enumerate(self._pieces):
            inner_groups[list(self._inner_group).index(self._group_of[i])]["params"].append(k)
        return hypers, {"state": pieces, "param_groups": inner_groups}

    def _steps_in(self, state_dict: dict) -> int | None:
        """The step count the entries hold (None when there are none)."""
        steps = {e.get("step") for e in state_dict["state"].values()}
        if len(steps) > 1:
            raise ValueError("state_dict['state'] entries differ in 'step'")
        return int(next(iter(steps))) if steps else None

    def save(self, path) -> None:
        """Write this rank's ``state_dict()`` to ``path`` (one file per rank: put the rank
        in the name), atomically."""
        _checkpoint.save(path, self.state_dict())

    def load(self, path) -> None:
        """Restore what ``save`` wrote on this rank, or a consolidated checkpoint
        (``fastadam.Adam.save``); collective, like ``load_state_dict``."""
        error, state_dict = None, None
        try:
            state_dict = _checkpoint.load(path)
        except (OSError, ValueError) as e:
            error = e
        if self._comm.any(error is not None):
            if error is not None:
                raise error
            raise ValueError("the checkpoint could not be read on another rank")
        self.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(rank={self.rank}/{self.world_size}, "
                f"shard={self.shard}, elements={int(self._starts[-1])}, "
                f"step={self._steps}, comm={self._comm.name!r})")


class ShardedAdamW(ShardedAdam):
    """ShardedAdam with decoupled weight decay (``torch.optim.AdamW``; weight_decay=1e-2)."""

    def __init__(self, params, comm=None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, maximize: bool = False,
                 num_threads: int | None = None, **options) -> None:
        """``options``: the keyword-only options of :class:`fastadam.Adam`."""
        super().__init__(params, comm, lr, betas, eps, weight_decay, amsgrad, maximize,
                         decoupled_weight_decay=True, num_threads=num_threads, **options)
