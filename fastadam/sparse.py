"""SparseAdam: the row-sparse step's stateful shell, for one embedding table."""

from __future__ import annotations

from ._backends.dispatch import apply_sparse, prepare_sparse, resolve, rounding_key
from ._core import array_checks, checks
from ._core.hyper import hyper
from ._state import checkpoint as _checkpoint
from ._state.slots import EIGHT_BIT, Options, Slot

_OPTION_KEYS = ("state_dtype", "kahan_summation", "master_weights", "stochastic_rounding")


class SparseAdam:
    """``torch.optim.SparseAdam`` on one (rows, dim) table, fused, updated in place.

    Example:
        ```python
        table = np.random.randn(1_000_000, 64).astype(np.float32)
        opt = fastadam.SparseAdam(table, lr=1e-3)
        for rows, grads in lookups():      # (nnz,) row indices, (nnz, dim) gradients
            opt.step(rows, grads)          # only the rows looked up change
        ```

    Duplicate rows are summed, only the rows present get m, v and param updates
    (absent rows do not decay), and the step count advances at every step, an
    empty one included: exactly torch's SparseAdam (see
    :func:`fastadam.sparse_adam_step`). The table may be float16, bfloat16
    (ml_dtypes), float32 or float64, a NumPy array or a GPU array. For 16-bit
    tables ``state_dtype``, ``kahan_summation``, ``master_weights`` and
    ``stochastic_rounding`` (with ``seed``; the bits of an element are drawn by its
    position in the table) are as in :class:`fastadam.Adam`; the 8-bit state format does
    not apply (its blocks of 256 would span rows that a step does not touch).
    """

    def __init__(
        self,
        table,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
        backend: str = "auto",
        num_threads: int | None = None,
        *,
        state_dtype=None,
        kahan_summation: bool | None = None,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ) -> None:
        self._h = hyper(lr=lr, betas=betas, eps=eps, maximize=maximize)
        self._backend = resolve(checks.backend(backend), table)
        self._num_threads = checks.num_threads(num_threads)
        if isinstance(state_dtype, str) and state_dtype == EIGHT_BIT:
            raise ValueError("state_dtype='8bit' does not apply to the row-sparse step: a "
                             "block of 256 spans rows it does not touch")
        self._options = Options(state_dtype, kahan_summation, master_weights,
                                stochastic_rounding, seed)
        device = self._backend == "cuda"
        table = array_checks.kept("table", table, device=device)
        if table.ndim != 2:
            raise ValueError(f"table must be a (rows, dim) array, got shape {table.shape}")
        self._options.check_params([table])
        self.table = table
        self._slot = Slot.new(table, self._h, self._backend, self._options)
        self._slot.key = rounding_key(self._options.seed, 0)

    # --- hyperparameters ----------------------------------------------------

    @property
    def lr(self) -> float:
        """The learning rate of the next step; may be set between steps (schedules)."""
        return self._h.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._h = self._h._replace(lr=checks.real("lr", value))

    @property
    def step_count(self) -> int:
        """How many steps have been taken, empty ones included."""
        return self._slot.step

    @property
    def param_groups(self) -> list[dict]:
        """The hyperparameters, as torch's SparseAdam lays them out (one group)."""
        h = self._h
        return [{"lr": h.lr, "betas": (h.beta1, h.beta2), "eps": h.eps,
                 "maximize": h.maximize, "params": [0]}]

    @property
    def options(self) -> dict:
        """What the state holds: fixed at construction."""
        flags = self._slot.flags
        return {"state_dtype": self._slot.state_dtype.name, "kahan_summation": flags.kahan,
                "master_weights": flags.master, "stochastic_rounding": flags.stochastic,
                "seed": self._options.seed}

    def _tables(self) -> list:
        """The state arrays as tables of the table's shape (None where off)."""
        shape = self.table.shape
        return [None if a is None else a.reshape(shape) for a in self._slot.state]

    # --- stepping -----------------------------------------------------------

    def step(self, indices, values, stream=None) -> None:
        """One step with gradient rows ``values`` (nnz, dim), any float dtype, for the
        table's rows ``indices`` (nnz,) integers (duplicates allowed; nnz may be 0).
        On the GPU both are GPU arrays and ``stream`` is the CUDA stream to launch on.
        A refused step raises and changes nothing, its step count included."""
        m, v, _, comp, master = self._tables()
        kind = self._backend
        cuda_stream = checks.stream(stream, kind)
        arrays = array_checks.sparse_arrays(kind, self.table, indices, values, m, v, comp,
                                            master)
        prepare_sparse(kind, arrays, cuda_stream)
        apply_sparse(kind, arrays, self._h, self._slot.step + 1,
                     num_threads=self._num_threads, stream=cuda_stream,
                     stochastic=self._slot.flags.stochastic, key=self._slot.key)
        self._slot.step += 1

    # --- state --------------------------------------------------------------

    def state_dict(self) -> dict:
        """A copy of the state, as torch's SparseAdam lays it out: ``{"state": {0: {"step",
        "exp_avg", "exp_avg_sq", ...}}, "param_groups": [{...}]}`` with NumPy arrays."""
        return {"state": {0: self._slot.entry(self._backend)},
                "param_groups": [{**self.param_groups[0], **self.options}]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore state and hyperparameters from ``state_dict()`` (or from a torch
        SparseAdam's, its tensors as NumPy arrays); refuses a mismatch unchanged."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with keys 'state' and 'param_groups'")
        groups, state = state_dict["param_groups"], state_dict["state"]
        if not (isinstance(groups, (list, tuple)) and len(groups) == 1
                and isinstance(groups[0], dict)):
            raise ValueError("state_dict['param_groups'] must hold one group (a dict)")
        group = groups[0]
        missing = {"lr", "betas", "eps"} - set(group)
        if missing:
            raise ValueError(f"state_dict['param_groups'][0] lacks {sorted(missing)}")
        try:
            h = hyper(lr=group["lr"], betas=group["betas"], eps=group["eps"],
                      maximize=group.get("maximize", False))
        except (TypeError, ValueError) as e:
            raise type(e)(f"state_dict['param_groups'][0]: {e}") from e
        for option in _OPTION_KEYS[1:]:
            if option in group and bool(group[option]) != self.options[option]:
                raise ValueError(f"state_dict['param_groups'][0][{option!r}] is "
                                 f"{group[option]}, but this optimizer has "
                                 f"{self.options[option]}")
        if not isinstance(state, dict) or set(state) - {0} or not all(
                isinstance(e, dict) for e in state.values()):
            raise ValueError("state_dict['state'] must be {} or {0: {...}}")
        try:
            seed = checks.seed(group.get("seed", self._options.seed))
        except TypeError as e:
            raise TypeError(f"state_dict['param_groups'][0]: {e}") from e
        if state:
            step, arrays, _ = self._slot.loaded(0, state[0], h, self._backend)
        else:  # torch's before its first step: fresh state
            step, arrays = 0, Slot.new(self.table, h, self._backend, self._options).state
        self._h = h
        self._slot.restore(h, step, arrays, None)
        self._options.seed, self._slot.key = seed, rounding_key(seed, 0)

    def save(self, path) -> None:
        """Write ``state_dict()`` to one ``.npz`` file with a format version, atomically."""
        _checkpoint.save(path, self.state_dict())

    def load(self, path) -> None:
        """Restore what ``save`` wrote; a file of another layout raises and changes nothing."""
        self.load_state_dict(_checkpoint.load(path))

    def __repr__(self) -> str:
        h = self._h
        return (f"SparseAdam(lr={h.lr!r}, betas={(h.beta1, h.beta2)!r}, eps={h.eps!r}, "
                f"maximize={h.maximize!r}, table={tuple(self.table.shape)}, "
                f"step={self.step_count}, backend={self._backend!r})")

