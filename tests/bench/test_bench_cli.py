"""The benchmark command, on tiny sizes: table, JSON records, plot, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import optional

from fastadam.bench import cli, configs, contenders, harness, sparse_suite, suites

FIELDS = {"backend", "n", "dtype", "median_s", "gb_per_s", "speedup_vs_numpy", "roofline_fraction"}


def run(capsys, *args):
    code = cli.main(["--no-progress", "--no-startup", "--repeats", "2", *args])
    assert code == 0
    return capsys.readouterr().out


def test_json_records(tmp_path, capsys):
    path = tmp_path / "out.json"
    out = run(capsys, "--sizes", "1000,4099", "--dtypes", "float32,float64",
              "--configs", "adam,amsgrad", "--json", str(path))
    doc = json.loads(path.read_text())
    rows = doc["rows"]
    assert {"cpu", "numba", "numpy", "fastadam"} <= set(doc["machine"])
    # numpy, cpu and roofline on 1 and all threads, for 2 sizes x 2 dtypes x 2 configs
    threads = sorted({1, harness.all_threads()})
    assert len(rows) == 2 * 2 * 2 * (1 + 2 * len(threads))
    for r in rows:
        assert FIELDS <= set(r)
        assert r["median_s"] > 0 and r["gb_per_s"] > 0
        item = np.dtype(r["dtype"]).itemsize
        per_element = {"adam": 7, "amsgrad": 9}[r["config"]] * item  # read 4 (5), write 3 (4)
        assert r["bytes_per_element"] == per_element
        assert r["gb_per_s"] == pytest.approx(per_element * r["n"] / r["median_s"] / 1e9)
        if r["backend"] == "numpy":
            assert r["speedup_vs_numpy"] == 1.0
        if r["backend"] == "roofline":
            assert r["roofline_fraction"] is None
        else:
            assert r["roofline_fraction"] > 0
    assert {(r["n"], r["dtype"], r["config"]) for r in rows} == {
        (n, d, c) for n in (1000, 4099) for d in ("float32", "float64") for c in ("adam", "amsgrad")
    }
    assert "x numpy" in out and "4,099" in out


@pytest.mark.parametrize("dtype,config,per_element", [
    ("float32", "adam", 28), ("float64", "amsgrad", 72), ("float32", "skip_nonfinite", 32),
    # bf16 param (2+2) and grad (2), float32 m and v (8+8): 22; Kahan's buffer (the
    # default) +4; master params +8 instead; bfloat16 m and v: 8 less.
    ("bfloat16", "no_kahan", 22), ("bfloat16", "adam", 26), ("bfloat16", "kahan", 26),
    ("bfloat16", "master", 30), ("bfloat16", "bf16_state", 18), ("float16", "adam", 26),
    ("float16", "skip_nonfinite", 28), ("float32", "bf16_state", 20),
])
def test_traffic_is_what_the_configuration_moves(dtype, config, per_element):
    optional("ml_dtypes")
    _, opt, grad = contenders.fastadam_contenders(10, dtype, config, np.random.default_rng(0), [1])
    assert harness.traffic_bytes(opt, grad) == 10 * per_element


@pytest.mark.parametrize("dtype,per_element", [("float32", 16), ("bfloat16", 14)])
def test_traffic_of_8bit_states(dtype, per_element):
    """Codes of m and v read and written (4), params (bf16: and the Kahan buffer) and grad,
    and each moment's absmax per block of 256, read and written."""
    optional("ml_dtypes")
    n = 5000
    _, opt, grad = contenders.fastadam_contenders(n, dtype, "8bit", np.random.default_rng(0), [1])
    assert harness.traffic_bytes(opt, grad) == n * per_element + 2 * 2 * 20 * 4


def test_8bit_peers(capsys):
    optional("torch")
    optional("bitsandbytes")
    out = run(capsys, "--sizes", "5000", "--dtypes", "float32", "--configs", "8bit", "--peers")
    assert "torch-fused-fp32" in out and "bitsandbytes-8bit" in out
    assert "8bit" in out and "roofline" in out


def test_sixteen_bit_sweep(capsys, tmp_path):
    path = tmp_path / "rows.json"
    optional("ml_dtypes")
    run(capsys, "--sizes", "999", "--dtypes", "bfloat16,float16", "--json", str(path))
    rows = json.loads(path.read_text())["rows"]
    # Every option, each on the defaults a user gets (Kahan summation on 16-bit params).
    assert {(r["dtype"], r["config"]) for r in rows if r["backend"] == "cpu"} == {
        (d, c) for d in ("bfloat16", "float16") for c in configs.DEFAULT_CONFIGS[d]}
    assert {"no_kahan", "master", "amsgrad", "skip_nonfinite", "bf16_state"} <= set(
        configs.DEFAULT_CONFIGS["float16"])


def test_plot_file(tmp_path, capsys):
    optional("matplotlib")
    path = tmp_path / "bench.png"
    run(capsys, "--sizes", "1000,2000", "--dtypes", "float32", "--configs", "adam",
        "--plot", str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peers(capsys):
    optional("torch")
    out = run(capsys, "--sizes", "777", "--dtypes", "float32", "--configs", "adamw", "--peers")
    assert "torch-fused" in out and "torch-foreach" in out


def test_default_sweep_fits_memory():
    gib = 1 << 30
    assert configs.largest_size("float32", False, 24 * gib) == 1 << 28  # 256M on a 24 GiB machine
    assert configs.largest_size("float64", True, 24 * gib) < 1 << 28


@pytest.mark.parametrize("args", [["--sizes", "abc"], ["--sizes", "0"], ["--dtypes", "int8"],
                                  ["--configs", "sgd"], ["--repeats", "0"], ["--threads", "999"]])
def test_bad_arguments_exit_with_usage(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "fastadam", "bench", "--sizes", "1000", "--dtypes", "float32",
         "--configs", "adam", "--repeats", "1"],
        capture_output=True, text=True, check=True,
    )
    assert "roofline" in out.stdout and "[1/2]" in out.stderr and "[2/2]" in out.stderr
    assert "s left" in out.stderr and "% roofline  the row's speed" in out.stdout
    assert "First step in a new process" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "fastadam"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
    listed = subprocess.run([sys.executable, "-m", "fastadam", "--help"], capture_output=True,
                            text=True)
    assert listed.returncode == 0
    assert all(name in listed.stdout for name in ("bench", "precompile", "cache"))


def test_many_arrays_case(tmp_path, capsys):
    path = tmp_path / "many.json"
    out = run(capsys, "--sizes", "500", "--dtypes", "float32", "--configs", "adam",
              "--many", "20x300", "--json", str(path))
    assert "cpu-list" in out and "cpu-flat" in out
    rows = [r for r in json.loads(path.read_text())["rows"] if r["config"] == "20x300"]
    assert {r["backend"] for r in rows} == {"cpu-list", "cpu-flat"}
    assert all(r["n"] == 6000 and r["median_s"] > 0 for r in rows)
    with pytest.raises(SystemExit):
        cli.main(["--many", "lots"])


def test_many_arrays_against_torch(capsys):
    optional("torch")
    out = run(capsys, "--sizes", "500", "--dtypes", "float32", "--configs", "adam",
              "--many", "20x300", "--peers", "--repeats", "2")
    assert "torch-fused-list" in out and "fastadam.torch-list" in out


def test_call_overhead_rows(capsys):
    out = run(capsys, "--sizes", "500", "--dtypes", "float32", "--configs", "adam", "--calls",
              "--repeats", "1")
    assert "Adam.step" in out and "cpu-kernel" in out and "back to back" in out


def test_transformer_rows():
    optional("torch")
    optional("ml_dtypes")
    rows = suites.transformer_rows(["bfloat16"], repeats=1)
    assert [r.backend for r in rows] == ["torch-fused", "fastadam.torch"]
    assert {r.config for r in rows} == {"transformer-72"} and rows[0].n == rows[1].n > 4_000_000


def test_sparse_table(capsys, tmp_path, monkeypatch):
    """--sparse: fastadam, the NumPy formulas, the memory-only pass and (torch installed)
    torch's SparseAdam, per case; the step really moves the table."""
    monkeypatch.setattr(cli, "SPARSE_CASES", ((3001, 16, 300), (2000, 7, 0)))
    path = tmp_path / "sparse.json"
    out = run(capsys, "--sparse", "--json", str(path))
    assert "Row-sparse Adam" in out and "sparse 3,001x16" in out
    rows = json.loads(path.read_text())["rows"]
    backends = {r["backend"] for r in rows}
    assert {"cpu", "roofline", "numpy"} <= backends
    optional("torch")
    assert {"torch-sparse-adam", "fastadam.torch-sparse-adam"} <= backends
    for r in rows:
        assert r["median_s"] > 0 and (r["n"] == 0 or r["gb_per_s"] > 0)
    cpu = next(r for r in rows if r["backend"] == "cpu" and r["n"] == 300)
    assert cpu["roofline_fraction"] > 0 and cpu["speedup_vs_numpy"] > 0
    assert cpu["speedup_vs_torch"] > 0 and "x torch" in out
    # traffic: the values once, each distinct row of param, m, v read and written
    assert 16 * 4 < cpu["bytes_per_element"] <= 7 * 16 * 4 + 8


def test_ratios_pair_the_runs_of_one_repeat():
    """A ratio is the median of per-repeat ratios, not a ratio of medians: a load burst
    that slows both contenders in one repeat leaves it alone."""
    a, b = harness.Contender("a", 1, None), harness.Contender("b", 1, None)
    t = harness.Timings({id(a): [2.0, 2.0, 9.0], id(b): [1.0, 9.0, 9.0]}, {})
    assert t.median(a) == 2.0 and t.median(b) == 9.0
    assert t.speedup(a, b) == 1.0  # per repeat: 2, 2/9, 1


def test_sparse_lookups_have_hot_rows():
    indices = sparse_suite.sparse_lookups(np.random.default_rng(0), 1_000_000, 16_384)
    assert indices.min() >= 0 and indices.max() < 1_000_000
    assert np.unique(indices).size < 0.9 * indices.size  # duplicates, as embeddings see them


def test_first_step_in_a_new_process_cold_and_warm():
    """The startup line: a cold cache compiles, a warm one loads; both above the floor of
    numpy + numba + one cached kernel."""
    from fastadam.bench import startup

    s = startup.startup_seconds(torch=False, repeats=1)
    assert s["cold"] > s["warm"] > 0 and s["floor"] > 0
    line = startup.format_startup(s)
    assert "cold" in line and "warm" in line and "floor" in line


def test_clip_rows(capsys):
    out = run(capsys, "--sizes", "3000", "--dtypes", "float32", "--configs", "adam", "--clip")
    assert "cpu-clipped" in out and "cpu-unclipped" in out and "Clipping by the global norm" in out
    assert "x clipped" in out.split("Clipping by the global norm")[1]


@pytest.mark.parametrize("text,n", [("4096", 4096), ("1e6", 1_000_000), ("2**26", 1 << 26),
                                    ("16M", 1 << 24), ("1G", 1 << 30), ("4k", 4096),
                                    ("1_000", 1000)])
def test_sizes_in_every_common_spelling(text, n):
    from fastadam.bench.progress import parse_size

    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["abc", "0", "1.5", "-4M", "2**"])
def test_bad_sizes_are_refused_with_the_spellings(bad):
    from fastadam.bench.progress import parse_size

    with pytest.raises(ValueError, match="size|whole number"):
        parse_size(bad)


def test_a_missing_optional_package_skips_its_rows_up_front(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_missing", lambda module: module in ("ml_dtypes", "torch"))
    out = run(capsys, "--sizes", "2000", "--dtypes", "float32,bfloat16",
              "--configs", "adam,bf16_state", "--peers")
    lines = out.splitlines()
    assert lines[0].startswith("skipped: ") and "ml_dtypes" in out and "torch" in out
    assert "float32     adam" in out.replace("  ", " ") or " float32 " in out
    assert "bfloat16" not in "".join(line for line in lines if line.strip().startswith("cpu"))


def test_a_failing_case_reports_its_error_and_the_rest_runs(capsys, monkeypatch):
    real = cli.run_case

    def failing(n, dtype, config, **kw):
        if config == "amsgrad":
            raise RuntimeError("boom")
        return real(n, dtype, config, **kw)

    monkeypatch.setattr(cli, "run_case", failing)
    out = run(capsys, "--sizes", "2000", "--dtypes", "float32", "--configs", "adam,amsgrad")
    assert "failed: n=2,000 float32 amsgrad: RuntimeError: boom" in out
    assert "adam" in out


def test_the_thread_warning_fires_only_when_threads_lose_in_most_repeats():
    one, many = harness.Contender("cpu", 1, None), harness.Contender("cpu", 2, None)
    # Slower by 10% in the median, but in only half the repeats: noise, no warning.
    mixed = harness.Timings({id(one): [1.0] * 8, id(many): [1.3, 0.9] * 4}, {})
    assert not mixed.loses(one, many)
    steady = harness.Timings({id(one): [1.0] * 8, id(many): [1.2] * 6 + [0.9] * 2}, {})
    assert steady.loses(one, many)
    row = lambda lose: harness.Row("cpu", 2, 1000, "float32", "adam", 1.0, 1.0,  # noqa: E731
                                   None, None, None, 8, 28.0, threads_lose=lose)
    assert cli.threads_warning([row(None), row(True)]).startswith("warning: more threads")
    assert cli.threads_warning([row(False), row(None)]) is None


def test_the_limit_is_the_fastest_memory_only_variant_in_each_repeat():
    variant = lambda threads, name: harness.Contender("roofline", threads, None, name)  # noqa: E731
    flat1, flat2, chunked2, serial = (variant(1, "flat"), variant(2, "flat"),
                                      variant(2, "chunked"), variant(1, "serial"))
    # On two threads the limit may also be what one thread did, in the same repeat.
    step = harness.Contender("cpu", 2, None)
    t = harness.Timings({id(flat1): [4, 4, 1.5], id(flat2): [3, 1, 3], id(chunked2): [2, 3, 3],
                         id(serial): [5, 5, 0.5], id(step): [2, 2, 2]},
                        {id(c): 9 for c in (flat1, flat2, chunked2, serial, step)})
    one, two = harness.limits(t, [flat1, flat2, step, chunked2, serial], [1, 2])
    assert (one.threads, two.threads) == (1, 2) and one.backend == "roofline"
    assert t.samples[id(one)] == [4, 4, 0.5] and t.samples[id(two)] == [2, 1, 0.5]
    t.samples[id(serial)] = [5, 5, 5]
    one, two = harness.limits(t, [flat1, flat2, step, chunked2, serial], [1, 2])
    assert t.samples[id(one)] == [4, 4, 1.5] and t.samples[id(two)] == [2, 1, 1.5]
    assert t.speedup(two, step) == 0.75  # the median of 2/2, 1/2 and 1.5/2


def test_each_timed_run_follows_a_lead_in_of_the_same_contender(monkeypatch):
    order = []
    contenders = [harness.Contender(name, 1, lambda name=name: order.append(name))
                  for name in ("a", "b")]
    monkeypatch.setattr(harness, "LEAD_IN_S", 0.0)
    harness.measure(contenders, 3)
    timed = order[4:]  # after two warm runs each
    assert timed == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]


def test_the_thread_table_runs_every_condition_and_concludes(monkeypatch):
    """``bench --threads``: the defaults against one thread (and, alone, all threads) under
    each condition, and a closing line against the target (its code, not its speed)."""
    from fastadam.bench import thread_suite

    monkeypatch.setattr(thread_suite, "BUDGET_S", 0.01)
    records = thread_suite.thread_rows([1024], torch_peer=False)
    conditions = {r["condition"] for r in records}
    assert conditions == {"alone", "after a NumPy matmul", "a core busy"}
    assert {r["elements"] for r in records} == {"MLP (4,810)", "1,024"}
    alone = [r for r in records if r["condition"] == "alone"]
    assert all("all threads" in r and r["defaults"]["median_ms"] > 0 for r in alone)
    table = thread_suite.format_thread_rows(records)
    assert table.splitlines()[-1].startswith("The defaults took at most")
    assert len(table.splitlines()) == 2 + len(records) + 1


def test_the_main_table_ends_with_its_conclusion():
    from fastadam.bench.report import conclusion

    def row(backend, threads, n, seconds, limit=None, numpy=None):
        return harness.Row(backend, threads, n, "float32", "adam", seconds, 1.0, numpy, limit,
                           None, 7, 28.0)

    rows = [row("cpu", 2, 1 << 10, 1e-6, 3.0, 2.0),  # in cache: left out
            row("cpu", 1, 1 << 21, 2.0, 0.99, 10.0), row("cpu", 2, 1 << 21, 1.0, 0.95, 20.0),
            row("torch-fused", 2, 1 << 21, 1.1), row("cpu", 2, 1 << 22, 2.0, 0.9, 25.0)]
    text = conclusion(rows, from_n=1 << 20)
    assert text.startswith("Conclusion: from 1,048,576 elements, the fused step on 2 thread")
    assert "90-95% of the memory-only limit" in text and "20.0-25.0x naive NumPy" in text
    assert "1.10x torch's fused Adam" in text and "(2 case(s))" in text
    assert conclusion(rows[:1], from_n=1 << 20) is None
    assert conclusion(rows).startswith("Conclusion: from 4,194,304 elements")


def test_the_harness_check_times_each_row_against_a_fresh_process(capsys):
    out = run(capsys, "--check-harness", "--sizes", "5000")
    lines = out.splitlines()
    assert "harness ms" in lines[1] and "fresh ms" in lines[1]
    rows = [line.split() for line in lines[2:-1]]
    assert [r[:2] for r in rows] == [["5,000", str(t)] for t in sorted({1, harness.all_threads()})]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)
    assert "15%" in lines[-1]


def test_inline_rows():
    from fastadam.bench.inline_suite import inline_rows

    lines = inline_rows(n=4099, repeats=1, rng=np.random.default_rng(0), torch=False,
                        data_size=(300, 200, 8, 5000))
    text = "\n".join(lines)
    for expected in ("in a @njit loop", "us per step", "fused in a prange loop",
                     "% of its memory limit", "all in Numba", "SparseAdam from Python", "RMSE"):
        assert expected in text


@pytest.mark.parametrize("n", [999, 1000, 4099])
@pytest.mark.parametrize("params", ["float32", "float16"])
def test_the_limit_stays_inside_every_array(params, n):
    """4-bit codes hold two elements a byte: beside an odd count of elements no view of
    one element count exists, and the memory-only loop once ran on past the codes' end
    (a heap corruption that crashed a later garbage collection). It stops at the
    smallest array's end; bytes after each array stay as they were."""
    import fastadam
    from fastadam.bench import roofline

    rng = np.random.default_rng(n)
    opt = fastadam.Adam(rng.standard_normal(n).astype(params), state_dtype="4bit")
    grad = rng.standard_normal(n).astype(params)
    reads, writes = harness.roofline_arrays(opt, grad)
    arrays = reads + writes
    guard = max(a.nbytes for a in arrays)  # room for anything a loop could overrun
    guarded = []
    for a in arrays:  # each array again, followed by its guard bytes
        room = np.zeros(a.nbytes + guard, np.uint8)
        copy = room[:a.nbytes].view(a.dtype)
        copy[:] = a
        guarded.append((room, copy))
    for variant in roofline.VARIANTS:
        kernel = roofline.memory_only_kernel(len(reads), len(writes), variant)
        kernel(*(copy for _, copy in guarded))
        assert all(not room[-guard:].any() for room, _ in guarded)


def test_the_thread_contenders_step_the_same_arrays():
    """Each contender of ``bench --threads`` steps one optimizer, its arrays the same,
    through its own plan for its thread count: where arrays lie in memory moved steps
    more than thread counts did."""
    from fastadam.bench import thread_suite

    rng = np.random.default_rng(3)
    steps = thread_suite._optimizers([(1001,)], ["defaults", "1 thread", "all threads"], rng)
    opts = {step.args[0] for step in steps.values()}
    assert len(opts) == 1
    plans = {name: step.args[1] for name, step in steps.items()}
    assert [plans[k].num_threads for k in ("defaults", "1 thread")] == [None, 1]
    assert plans["all threads"].num_threads == harness.all_threads()
    opt = opts.pop()
    before = opt.params.copy()
    grad = rng.standard_normal(1001).astype(np.float32)
    for name, step in steps.items():
        step(grad)
        assert opt._plans is plans[name]
    assert opt.step_count == 3 and not np.array_equal(opt.params, before)
