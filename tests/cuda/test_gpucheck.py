"""The device check runs end to end (on numba's simulator with --tiny: its code paths, not
its timings), so that it works the first time a GPU is at hand."""

import json

import pytest

pytest.importorskip("numba.cuda")
pytest.importorskip("ml_dtypes")


def test_every_section_of_the_device_check_runs(tmp_path):
    from fastadam.bench import gpucheck

    assert gpucheck.main(["--tiny", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpucheck.json").read_text())
    sections = {k: v for k, v in record.items() if isinstance(v, dict) and "ok" in v}
    assert set(sections) == set(gpucheck.SECTIONS)
    assert all(v["ok"] for v in sections.values())
    past = sections["past 32-bit indexing"]["result"]
    assert past["dense"]["ok"] and past["8bit"]["ok"]
    assert sections["bad input on the device"]["result"]["params and step count unchanged"]
    assert "NOT REFUSED" not in json.dumps(sections["bad input on the device"]["result"])
