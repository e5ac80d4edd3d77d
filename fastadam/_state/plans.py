"""How an optimizer's arrays step: every check on the gradients, then the kernels.

``plan_for(...)`` picks one plan per optimizer, from what it holds: ``ThinHost``, one host
params array (the thinnest call); ``HostLists``, a list of host arrays, batches of alike
ones in one parallel region each; ``DeviceLists``, GPU arrays, batches in one launch
each; ``Counted``, GPU arrays whose step count, skip and clip decisions stay on the
device; ``Plan`` itself, one kernel call per array, under all of them: each falls back
on it for what its own path does not take (a loss scale on the thin call, a gradient
list that fails the batches' fast checks). Every gradient is checked before anything is
written (on the thin path, whether it overlaps the params or state is the kernel's first
question), so a refused step changes nothing. A new kind of step (row-sparse, 8-bit
moments) is a new plan over the same slots.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import numpy as np

from .._backends.dispatch import (
    adam_step_cuda_counted,
    addresses_last,
    all_finite,
    apply,
    apply_8bit,
    device_address,
    device_batches,
    device_grad_passes,
    device_norm,
    device_step_count,
    forget_addresses,
    host_batches,
    sum_of_squares,
    wait_for_inputs,
)
from .._core import array_checks, checks
from .._core.dtypes import kind
from .._core.hyper import clip_factor, clipped_scale
from .._core.options import ADAM
from .slots import ABSMAX_KEYS, CODE_KEYS, STATE_KEYS
from .thin import OneHostArray


class SeenGrads(NamedTuple):
    """The last step's gradients, where they are numba's own device arrays (whose shape,
    dtype, memory and stream never change): the same arrays again skip every per-array
    check and look-up. The optimizer holds them until the next step."""

    grads: object  # the array, or a tuple of them, as given
    flats: list  # their checked 1-D views
    on_streams: list  # those of the views made on a stream: a step may wait for them
    located: tuple | None = None  # (float kinds, device addresses), once asked for


def plan_for(groups: list, slots: list, *, single: bool, backend: str,
             num_threads: int | None, skip_nonfinite: bool, adopted: bool,
             max_grad_norm: float | None = None) -> Plan:
    """The plan for one optimizer's groups (``[(hyper, [Slot, ...]), ...]``) and slots."""
    if backend == "cuda":
        # Skipping and clipping are decided on the device, so that nothing waits (for
        # Adam's rule, whose coefficients the device computes from its step count; the
        # other rules read the norm back).
        if (skip_nonfinite or max_grad_norm is not None) and groups[0][0].rule == ADAM:
            plan = Counted
        else:
            plan = Plan if single else DeviceLists
    elif backend != "cpu":  # the NumPy reference: the formulas, array by array
        plan = Plan
    elif single:
        thin = not skip_nonfinite and slots[0].absmax is None and max_grad_norm is None
        plan = ThinHost if thin else Plan
    else:
        plan = HostLists
    return plan(groups, slots, single=single, backend=backend, num_threads=num_threads,
                skip_nonfinite=skip_nonfinite, adopted=adopted, max_grad_norm=max_grad_norm)


class Plan:
    """One kernel call per array, every gradient checked first: the path every plan
    falls back on, and the whole of one for what no other covers (a GPU array that
    steps alone, a host array with ``skip_nonfinite``, clipping or low-bit state)."""

    steps = None  # the step count, where it lives on the device (``Counted``)

    def __init__(self, groups: list, slots: list, *, single: bool, backend: str,
                 num_threads: int | None, skip_nonfinite: bool, adopted: bool,
                 max_grad_norm: float | None = None) -> None:
        self.groups, self.slots, self.single = groups, slots, single
        self.backend, self.device = backend, backend == "cuda"
        self.num_threads, self.skip_nonfinite = num_threads, skip_nonfinite
        self.max_grad_norm, self.grad_norm = max_grad_norm, None
        self.guarded = _guarded(slots, single, adopted)
        self.seen: SeenGrads | None = None

    def step(self, grads, grad_scale, stream, prescaled: bool = False) -> bool:
        """Check ``grads`` and everything else, then step; False when ``skip_nonfinite``
        found NaN or inf (nothing changed); None on the GPU with ``skip_nonfinite``, where
        that is decided on the device. ``prescaled``: ``grad_scale`` comes from a wrapper
        that checked it (and may carry a clip coefficient)."""
        flats = self._checked_grads(grads)
        scale = grad_scale if prescaled else checks.grad_scale(grad_scale)
        cuda_stream = checks.stream(stream, self.backend)
        wait_for_inputs(self.backend, self._made_on_streams(flats), cuda_stream)
        if self.max_grad_norm is not None:
            scale = self._clipped(sum_of_squares(self.backend, flats,
                                                 num_threads=self.num_threads), scale)
            if scale is False:
                return False
        elif self.skip_nonfinite and not all_finite(self.backend, flats,
                                                    num_threads=self.num_threads):
            return False
        self._step_groups(flats, scale, cuda_stream)
        return True

    def _step_groups(self, flats: list, scale, stream) -> None:
        first = 0
        for h, slots in self.groups:
            self._step_rest(first, slots, set(), flats, h, scale, stream)
            first += len(slots)

    def step_addresses(self, kinds: list, addresses: np.ndarray, stream) -> bool:
        """A list of GPU gradients that the caller has checked (shapes, dtypes of ``kinds``,
        device, contiguity, no shared memory), given by their device ``addresses``: one
        launch per batch, no Python per array. False, nothing done, unless every batch can
        step as one (the caller then passes the arrays to ``step``)."""
        return False

    def step_count(self) -> int:
        """How many updates were applied."""
        return self.slots[0].step

    def sync_steps(self) -> None:
        """Bring the step count to the slots, before they are read (a no-op: it is there)."""

    def _checked_grads(self, grads) -> list:
        """The gradients as 1-D views, every one checked (shape, dtype, device, memory)."""
        seen = self.seen
        if seen is not None and _same_arrays(grads, seen.grads, self.single):
            return seen.flats
        flats = self._check_grads(grads)
        if self.device and _numba_owned([grads] if self.single else grads):
            self.seen = SeenGrads(grads if self.single else tuple(grads), flats,
                                  [f for f in flats if getattr(f, "stream", 0)])
        return flats

    def _made_on_streams(self, flats: list) -> list:
        """Of the checked gradients, those a step's stream may have to wait for."""
        seen = self.seen
        return seen.on_streams if seen is not None and seen.flats is flats else flats

    def _device_grads(self, flats: list) -> tuple:
        """(float kinds, device addresses) of checked GPU gradients, kept with them."""
        seen = self.seen  # (simulated addresses are dropped after each launch)
        if seen is not None and seen.flats is flats and addresses_last():
            if seen.located is None:
                self.seen = seen = seen._replace(located=_device_grads(flats))
            return seen.located
        return _device_grads(flats)

    def _check_grads(self, grads) -> list:
        if self.single:
            g = array_checks.like("grads", grads, self.slots[0].array, writable=False,
                           device=self.device)
            array_checks.apart("grads", g, self.guarded)
            return [array_checks.flat(g)]
        if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
            raise TypeError("grads must be a list of arrays, one per params array")
        if len(grads) != len(self.slots):
            raise ValueError(f"grads has {len(grads)} arrays, but there are "
                             f"{len(self.slots)} params arrays")
        names = [f"grads[{i}]" for i in range(len(grads))]
        grads = [array_checks.like(name, g, slot.array, writable=False, device=self.device)
                 for name, g, slot in zip(names, grads, self.slots)]
        array_checks.apart_from_all(list(zip(names, grads)), list(self.guarded.items()))
        return [array_checks.flat(g) for g in grads]

    def _clipped(self, squares: float, scale: float | None):
        """After the norm pass: record the total norm of the unscaled gradients; False to
        skip (a non-finite norm under ``skip_nonfinite``), else the loss scale that also
        applies the clip coefficient."""
        norm = math.sqrt(squares) / (1.0 if scale is None else scale)
        self.grad_norm = norm
        if self.skip_nonfinite and not math.isfinite(norm):
            return False
        return clipped_scale(scale, clip_factor(norm, self.max_grad_norm))

    def _step_rest(self, first: int, slots, done: set, grads, h, scale, stream,
                   steps=None) -> None:
        """Step the arrays of a group (numbered from ``first``) that no batch stepped:
        one kernel call each. ``steps``: the step count on the device, which then counts."""
        if len(done) == len(slots):
            return
        for i in range(first, first + len(slots)):
            if i in done:
                continue
            slot, flat = self.slots[i], grads[i].reshape(-1)
            grad_kind = kind(flat.dtype)
            if slot.flags.grad != grad_kind:
                slot.flags = slot.flags._replace(grad=grad_kind)
            if slot.absmax is not None:
                apply_8bit(self.backend, (slot.flat, flat, *slot.state[3:]),
                           tuple(slot.state[:3]), tuple(slot.absmax), h, slot.flags,
                           slot.step + 1, grad_scale=scale, num_threads=self.num_threads,
                           stream=stream, steps=steps, key=slot.key, fmt=slot.fmt)
                if steps is None:  # else the device counts
                    slot.step += 1
                continue
            arrays = (slot.flat, flat, *slot.state)
            if steps is not None:
                adam_step_cuda_counted(arrays, slot.flags, h, steps, stream, slot.key)
                continue
            apply(self.backend, arrays, h, slot.flags, slot.step + 1, grad_scale=scale,
                  num_threads=self.num_threads, stream=stream, key=slot.key)
            slot.step += 1



class ThinHost(Plan):
    """One host params array without skipping, clipping or low-bit state: a gradient of a
    dtype seen before steps through ``OneHostArray``, anything else through ``Plan``."""

    def __init__(self, groups: list, slots: list, **options) -> None:
        super().__init__(groups, slots, **options)
        self.one = OneHostArray(slots[0], self.num_threads)

    def step(self, grads, grad_scale, stream, prescaled: bool = False) -> bool:
        if grad_scale is None and stream is None and self.one.step(grads, self.groups[0][0]):
            return True
        return super().step(grads, grad_scale, stream, prescaled)


class HostLists(Plan):
    """Host arrays as a list: gradients that pass the fast checks (``host.check``) step
    in one parallel region per batch of alike arrays, the rest one by one."""

    def __init__(self, groups: list, slots: list, **options) -> None:
        super().__init__(groups, slots, **options)
        self.host = host_batches(groups)

    def step(self, grads, grad_scale, stream, prescaled: bool = False) -> bool:
        fast = self.host.check(grads)
        if fast is None:
            return super().step(grads, grad_scale, stream, prescaled)
        return self._step_host_batches(grads, *fast, grad_scale, stream, prescaled)

    def _step_host_batches(self, grads, codes, addresses, grad_scale, stream,
                           prescaled: bool) -> bool:
        # Lists of host arrays that passed the fast checks: batches in one region each.
        scale = grad_scale if prescaled else checks.grad_scale(grad_scale)
        checks.stream(stream, self.backend)
        if self.max_grad_norm is not None:
            scale = self._clipped(self.host.sum_of_squares(codes, addresses, self.num_threads),
                                  scale)
            if scale is False:
                return False
        elif self.skip_nonfinite and not self.host.all_finite(codes, addresses,
                                                              self.num_threads):
            return False
        first = 0
        for g, (h, slots) in enumerate(self.groups):
            done = self.host.step(g, h, codes, addresses, scale, self.num_threads)
            self._step_rest(first, slots, done, grads, h, scale, None)
            first += len(slots)
        return True



class DeviceLists(Plan):
    """GPU arrays as a list: batches of alike arrays in one launch each."""

    def __init__(self, groups: list, slots: list, **options) -> None:
        super().__init__(groups, slots, **options)
        self.gpu = device_batches(groups)

    def _step_groups(self, flats: list, scale, stream) -> None:
        kinds, addresses = self._device_grads(flats)
        first = 0
        for g, (h, slots) in enumerate(self.groups):
            done = self.gpu.step(g, h, kinds, addresses, scale, stream)
            self._step_rest(first, slots, done, flats, h, scale, stream)
            first += len(slots)

    def step_addresses(self, kinds: list, addresses: np.ndarray, stream) -> bool:
        if not self.gpu.ready(kinds):
            return False
        for g, (h, _) in enumerate(self.groups):
            self.gpu.step(g, h, kinds, addresses, None, stream)
        forget_addresses(addresses)
        return True


class Counted(Plan):
    """GPU arrays whose step count lives on the device, with the decisions that would
    otherwise wait for it there too (skipping a non-finite step, the clip coefficient):
    nothing waits, and ``step`` returns None under ``skip_nonfinite``."""

    def __init__(self, groups: list, slots: list, **options) -> None:
        super().__init__(groups, slots, **options)
        self.steps = device_step_count(slots[0].step)  # all equal: load_state_dict checks
        self.passes = device_grad_passes([slot.flat.size for slot in slots])
        self.gpu = None if self.single else device_batches(groups)
        self.norm_serial = 0  # clipped steps: which one grad_norm holds

    def step(self, grads, grad_scale, stream, prescaled: bool = False) -> bool:
        flats = self._checked_grads(grads)
        scale = grad_scale if prescaled else checks.grad_scale(grad_scale)
        cuda_stream = checks.stream(stream, self.backend)
        wait_for_inputs(self.backend, self._made_on_streams(flats), cuda_stream)
        self._step_counted(flats, scale, cuda_stream)
        return None if self.skip_nonfinite else True

    def step_addresses(self, kinds: list, addresses: np.ndarray, stream) -> bool:
        if self.gpu is None or not self.gpu.ready(kinds):
            return False
        self._begin_on_device(tuple(kinds), addresses, None, stream)
        for g, (h, _) in enumerate(self.groups):
            self.gpu.step(g, h, kinds, addresses, None, stream, self.steps)
        self.steps.end(stream)
        forget_addresses(addresses)
        return True

    def _step_counted(self, flats: list, scale, stream) -> None:
        """The GPU step with the decisions on the device: the gradients' norm (clipping)
        or a check for NaN and inf (``skip_nonfinite``) goes into a flag and a multiplier
        that the kernels read, and the step count lives there too, so nothing waits."""
        kinds, addresses = self._device_grads(flats)
        self._begin_on_device(tuple(kinds), addresses, scale, stream)
        first = 0
        for g, (h, slots) in enumerate(self.groups):
            done = set() if self.gpu is None else self.gpu.step(g, h, kinds, addresses, scale,
                                                                stream, self.steps)
            self._step_rest(first, slots, done, flats, h, scale, stream, self.steps)
            first += len(slots)
        self.steps.end(stream)
        forget_addresses(addresses)

    def _begin_on_device(self, kinds: tuple, addresses: np.ndarray, scale, stream) -> None:
        """The one read of the gradients before a counted step: the norm pass and the
        clip coefficient, or the non-finite check, into the device's flag and multiplier.
        With clipping, ``grad_norm`` becomes the device's norm, read only when asked."""
        if self.max_grad_norm is None:
            self.steps.begin(self.passes, kinds, addresses, scale, stream)
            return
        squares = self.passes.squares(kinds, addresses, stream)
        self.steps.begin_clipped(squares, scale, self.max_grad_norm, self.skip_nonfinite,
                                 stream)
        self.norm_serial += 1
        self.grad_norm = device_norm(self.steps.norm, self, self.norm_serial, stream)

    def step_count(self) -> int:
        """How many updates were applied (from the device: a wait)."""
        return self.steps.read()

    def sync_steps(self) -> None:
        """Bring the device's step count to the slots (a wait), before they are read."""
        count = self.steps.read()
        for slot in self.slots:
            slot.step = count


def _same_arrays(grads, seen, single: bool) -> bool:
    if single:
        return grads is seen
    return (type(grads) in (list, tuple) and len(grads) == len(seen)
            and all(map(operator.is_, grads, seen)))


def _numba_owned(arrays) -> bool:
    return all(getattr(a, "__cuda_ndarray__", False) is True for a in arrays)


def _device_grads(flats: list) -> tuple:
    """(float kinds, device addresses) of checked GPU gradients."""
    return ([kind(f.dtype) for f in flats],
            np.array([device_address(f) for f in flats], dtype=np.uint64))


def _guarded(slots: list, single: bool, adopted: bool) -> dict:
    """The memory no gradient may share, by name: the params, and adopted state arrays
    (an optimizer's own state is out of a caller's reach)."""
    guarded = {}
    for i, slot in enumerate(slots):
        arrays = (slot.flat, *slot.state[:3]) if adopted else (slot.flat,)
        names = ["", *(f" {k}" for k in STATE_KEYS[:3])]
        if adopted and slot.absmax is not None:  # low-bit: codes and their scales
            arrays += tuple(slot.absmax)
            names = ["", *(f" {k}" for k in CODE_KEYS + ABSMAX_KEYS)]
        for name, a in zip(names, arrays):
            if a is not None:
                guarded[("params" if single else f"params[{i}]") + name] = a
    return guarded
