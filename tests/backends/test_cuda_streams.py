"""Stream order without host waits, checked without a GPU: a step's stream waits, on the
device, for each other stream that made its inputs (once per stream), and flattening a
device input keeps the stream its interface named."""

import os

import pytest

cuda = pytest.importorskip("numba.cuda")
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the simulator has one stream order", allow_module_level=True)

from fastadam._backends.cuda import runtime  # noqa: E402
from fastadam._core import array_checks  # noqa: E402


class Stream:  # what the code reads of numba's streams: the handle
    def __init__(self, handle):
        self.handle = handle

    def synchronize(self):
        pass


class Imported:  # a device array imported with the stream its interface named
    def __init__(self, stream):
        self.stream = stream

    def reshape(self, *shape):
        return Imported(0)  # as numba's reshape: the stream is dropped


def test_a_step_waits_on_the_device_for_each_producer_once(monkeypatch):
    calls = []

    class Event:
        def record(self, stream):
            calls.append(("record", runtime.stream_handle(stream)))

        def wait(self, stream):
            calls.append(("wait", runtime.stream_handle(stream)))

    monkeypatch.setattr(runtime.cuda, "event", lambda timing=False: Event())
    monkeypatch.setattr(runtime, "_orderings", {})
    inputs = [Imported(0), Imported(Stream(9)), Imported(Stream(9)), Imported(Stream(7)),
              Imported(Stream(1))]
    runtime.wait_for_producers(inputs, Stream(7))
    # none for no stream, one for 9, none for the step's own, one for the legacy stream
    assert calls == [("record", 9), ("wait", 7), ("record", 1), ("wait", 7)]
    calls.clear()
    runtime.wait_for_producers(inputs, Stream(0))  # 1 and 0 are both the legacy stream
    assert calls == [("record", 9), ("wait", 0), ("record", 7), ("wait", 0)]


def test_flattening_keeps_the_producer_stream():
    producer = Stream(5)
    assert array_checks.flat(Imported(producer)).stream is producer
    assert array_checks.flat(Imported(0)).stream == 0
