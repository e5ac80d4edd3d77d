"""Bad input: a clear TypeError/ValueError naming the argument, and nothing modified."""

import numpy as np
import pytest
from helpers import make_state

import fastadam

N = 37


def fresh(rng):
    param, grad, m, v, v_max = make_state(rng, N, np.float32)
    return {"param": param, "grad": grad, "m": m, "v": v, "v_max": v_max}


def bad_arrays(rng):
    """(case, changes to the keyword arguments, error type, text the message holds)."""
    buf = rng.standard_normal(2 * N).astype(np.float32)
    ro = rng.standard_normal(N).astype(np.float32)
    ro.flags.writeable = False
    return {
        "param list": ({"param": [1.0] * N}, TypeError, "param"),
        "grad None": ({"grad": None}, TypeError, "grad"),
        "m int": ({"m": np.zeros(N, np.int32)}, TypeError, "m"),
        "param int": ({"param": np.zeros(N, np.int64)}, TypeError, "param"),
        "param big-endian": ({"param": np.zeros(N, ">f4")}, TypeError, "param"),
        "v shape": ({"v": np.zeros(N + 1, np.float32)}, ValueError, "v"),
        "grad complex": ({"grad": np.zeros(N, np.complex64)}, TypeError, "grad"),
        "v dtype differs from m": ({"v": np.zeros(N, np.float64)}, TypeError, "v"),
        "v_max dtype differs from m": ({"v_max": np.zeros(N, np.float64)}, TypeError, "v_max"),
        "kahan_comp for float32": ({"kahan_comp": np.zeros(N, np.float32)}, ValueError,
                                   "kahan_comp"),
        "master_params for float32": ({"master_params": np.zeros(N, np.float32)}, ValueError,
                                      "master_params"),
        "param read-only": ({"param": ro}, ValueError, "param"),
        "v read-only": ({"v": ro}, ValueError, "v"),
        "param strided": ({"param": buf[::2]}, ValueError, "param"),
        "grad strided": ({"grad": buf[::2][:N]}, ValueError, "grad"),
        "param fortran": ({"param": np.zeros((N, 3), np.float32, order="F")}, ValueError, "param"),
        "param is grad": ("alias grad=param", ValueError, "param and grad"),
        "m is v": ("alias v=m", ValueError, "m and v"),
        "overlapping views": ({"m": buf[:N], "v": buf[N // 2 : N // 2 + N]}, ValueError, "m and v"),
        "v_max is v": ("alias v_max=v", ValueError, "v and v_max"),
        "v_max missing": ({"v_max": None}, ValueError, "v_max"),
        "v_max shape": ({"v_max": np.zeros(3, np.float32)}, ValueError, "v_max"),
    }


BAD_SCALARS = {
    "lr negative": ({"lr": -1e-3}, ValueError, "lr"),
    "lr nan": ({"lr": float("nan")}, ValueError, "lr"),
    "lr inf": ({"lr": float("inf")}, ValueError, "lr"),
    "lr str": ({"lr": "0.1"}, TypeError, "lr"),
    "lr None": ({"lr": None}, TypeError, "lr"),
    "beta1 one": ({"betas": (1.0, 0.999)}, ValueError, r"betas\[0\]"),
    "beta2 negative": ({"betas": (0.9, -0.1)}, ValueError, r"betas\[1\]"),
    "betas short": ({"betas": (0.9,)}, TypeError, "betas"),
    "betas str": ({"betas": "ab"}, TypeError, "betas"),
    "eps negative": ({"eps": -1e-8}, ValueError, "eps"),
    "weight_decay negative": ({"weight_decay": -0.1}, ValueError, "weight_decay"),
    "weight_decay nan": ({"weight_decay": float("nan")}, ValueError, "weight_decay"),
    "step zero": ({"step": 0}, ValueError, "step"),
    "step negative": ({"step": -3}, ValueError, "step"),
    "step float": ({"step": 1.5}, TypeError, "step"),
    "step bool": ({"step": True}, TypeError, "step"),
    "step None": ({"step": None}, TypeError, "step"),
    "amsgrad str": ({"amsgrad": "yes"}, TypeError, "amsgrad"),
    "grad_scale zero": ({"grad_scale": 0.0}, ValueError, "grad_scale"),
    "grad_scale nan": ({"grad_scale": float("nan")}, ValueError, "grad_scale"),
    "grad_scale str": ({"grad_scale": "8"}, TypeError, "grad_scale"),
    "eps_root negative": ({"eps_root": -1e-9}, ValueError, "eps_root"),
    "nesterov str": ({"nesterov": "yes"}, TypeError, "nesterov"),
    "bias_correction int": ({"bias_correction": 1}, TypeError, "bias_correction"),
    "decouple_lr without max_lr": ({"decouple_lr": True}, ValueError, "max_lr"),
    "max_lr zero": ({"decouple_lr": True, "max_lr": 0.0}, ValueError, "max_lr"),
    "maximize int": ({"maximize": 1}, TypeError, "maximize"),
    "backend unknown": ({"backend": "gpu"}, ValueError, "backend"),
    "num_threads zero": ({"num_threads": 0}, ValueError, "num_threads"),
    "num_threads huge": ({"num_threads": 10_000}, ValueError, "num_threads"),
    "num_threads float": ({"num_threads": 1.5}, TypeError, "num_threads"),
}


def call(kwargs):
    kw = dict(kwargs)
    arrays = [kw.pop(k) for k in ("param", "grad", "m", "v")]
    fastadam.adam_step(*arrays, **kw)


@pytest.mark.parametrize("case", list(bad_arrays(np.random.default_rng(0))) + list(BAD_SCALARS))
@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_adam_step_refuses_bad_input_unchanged(rng, case, backend):
    kwargs = {**fresh(rng), "step": 3, "amsgrad": True, "backend": backend}
    table = {**bad_arrays(rng), **BAD_SCALARS}
    change, error, text = table[case]
    if isinstance(change, str):  # "alias a=b": pass the same array twice
        a, b = change.split()[1].split("=")
        kwargs[a] = kwargs[b]
    else:
        kwargs.update(change)
    before = {k: a.copy() for k, a in kwargs.items() if isinstance(a, np.ndarray)}
    with pytest.raises(error, match=text):
        call(kwargs)
    for k, a in before.items():
        np.testing.assert_array_equal(kwargs[k], a, err_msg=f"{k} was modified")


def test_v_max_ignored_without_amsgrad(rng):
    kwargs = {**fresh(rng), "step": 1}
    kwargs["v_max"] = None
    call(kwargs)  # no v_max needed


# --- the stateful shell ------------------------------------------------------


def snapshot(opt):
    sd = opt.state_dict()
    return opt.params.copy(), sd


def assert_unchanged(opt, snap):
    params, sd = snap
    np.testing.assert_array_equal(opt.params, params)
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"]
    assert now["state"][0].keys() == sd["state"][0].keys()
    for k, a in sd["state"][0].items():
        np.testing.assert_array_equal(now["state"][0][k], a)


@pytest.fixture
def trained(rng):
    opt = fastadam.Adam(rng.standard_normal((7, 9)).astype(np.float32), amsgrad=True, lr=0.01)
    for _ in range(3):
        opt.step(rng.standard_normal((7, 9)).astype(np.float32))
    return opt


def bad_grads(opt):
    g = np.ones_like(opt.params)
    return {
        "list": (g.tolist(), TypeError),
        "None": (None, TypeError),
        "shape": (np.ones(63, np.float32), ValueError),
        "dtype": (g.astype(np.complex64), TypeError),
        "int": (g.astype(np.int32), TypeError),
        "strided": (np.ones((7, 18), np.float32)[:, ::2], ValueError),
        "is params": (opt.params, ValueError),
        "overlaps params": (opt.params[:, :], ValueError),
    }


@pytest.mark.parametrize(
    "case", ["list", "None", "shape", "dtype", "int", "strided", "is params", "overlaps params"]
)
def test_refused_step_changes_nothing(trained, case):
    grads, error = bad_grads(trained)[case]
    snap = snapshot(trained)
    with pytest.raises(error, match="grads"):
        trained.step(grads)
    assert trained.step_count == 3
    assert_unchanged(trained, snap)


def test_constructor_refuses_bad_params():
    with pytest.raises(TypeError, match="params"):
        fastadam.Adam([1.0, 2.0])
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="params"):
        fastadam.Adam(ro)
    with pytest.raises(ValueError, match="lr"):
        fastadam.AdamW(np.zeros(4), lr=-1)
    with pytest.raises(ValueError, match="backend"):
        fastadam.Adam(np.zeros(4), backend="tpu")


def test_lr_setter_validates(trained):
    with pytest.raises(ValueError, match="lr"):
        trained.lr = -0.5
    with pytest.raises(TypeError, match="lr"):
        trained.lr = "fast"
    assert trained.lr == 0.01
    trained.lr = 0.5
    assert trained.lr == 0.5


def mutations():
    def moment_shape(sd):
        sd["state"][0]["exp_avg"] = np.zeros(63, np.float32)

    def moment_list(sd):
        sd["state"][0]["exp_avg_sq"] = sd["state"][0]["exp_avg_sq"].tolist()

    def moment_int(sd):
        sd["state"][0]["exp_avg_sq"] = sd["state"][0]["exp_avg_sq"].astype(np.int64)

    def missing_max(sd):
        del sd["state"][0]["max_exp_avg_sq"]

    def negative_step(sd):
        sd["state"][0]["step"] = -1

    def bad_lr(sd):
        sd["param_groups"][0]["lr"] = float("nan")

    def two_groups(sd):
        sd["param_groups"].append(dict(sd["param_groups"][0]))

    def missing_key(sd):
        del sd["param_groups"][0]["eps"]

    def two_params(sd):
        sd["state"][1] = sd["state"][0]

    def not_a_dict(sd):
        sd.clear()

    return {
        f.__name__: f
        for f in (
            moment_shape,
            moment_list,
            moment_int,
            missing_max,
            negative_step,
            bad_lr,
            two_groups,
            missing_key,
            two_params,
            not_a_dict,
        )
    }


@pytest.mark.parametrize("case", list(mutations()))
def test_mismatched_state_dict_refused_unchanged(trained, case):
    sd = trained.state_dict()
    sd["state"][0]["exp_avg"] += 1  # would be visible if anything were loaded
    sd["param_groups"][0]["lr"] = 0.123
    mutations()[case](sd)
    snap = snapshot(trained)
    with pytest.raises((TypeError, ValueError), match="state_dict"):
        trained.load_state_dict(sd)
    assert trained.step_count == 3
    assert_unchanged(trained, snap)


def test_errors_advise_what_applies():
    """A gradient is only read: copying it is enough. A torch tensor points to the
    drop-ins. Nothing changes on either refusal."""
    torch = pytest.importorskip("torch")
    params = [np.zeros((4, 4), np.float32), np.zeros(3, np.float32)]
    opt = fastadam.Adam(params)
    strided = np.ones((4, 8), np.float32)[:, ::2]
    with pytest.raises(ValueError, match=r"ascontiguousarray\(grads\[0\]\) \(a copy is fine"):
        opt.step([strided, np.ones(3, np.float32)])
    with pytest.raises(ValueError, match="copy the result back"):
        fastadam.Adam(np.zeros((4, 8), np.float32)[:, ::2])
    for bad, name in ((torch.zeros(4), "params"), ([torch.zeros(4)], r"params\[0\]")):
        with pytest.raises(TypeError, match=name + " is a torch tensor: fastadam.torch"):
            fastadam.Adam(bad)
    assert opt.step_count == 0 and not params[0].any()
