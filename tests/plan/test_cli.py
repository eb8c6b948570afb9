"""`datamoat plan` through its real entry point: text, --json, the plot, and bad input as one line and exit 2."""

from __future__ import annotations

import json

import pytest
from dmtest import dm_main


def _args(files, *extra):
    return [
        "plan", str(files / "spec.json"), "--loadtest", str(files / "max.json"), "--loadtest", str(files / "half.json"),
        "--edge-bench", str(files / "edge.json"), "--candidates", str(files / "candidates.json"), "--max-sites", "12",
        *extra,
    ]  # fmt: skip


def test_text_json_and_plot(files, monkeypatch, capfd):
    code, out, err = dm_main(monkeypatch, capfd, None, *_args(files, "--plot", str(files / "cost.png")))
    assert code == 0, err
    assert "== edge: 41.46/month, 2 devices (meets the budget)" in out
    assert "edge and cloud-public: edge is cheaper below 10 sites, cloud-public from 10" in out
    assert f"per-replica throughput = 100 req/s  [{files / 'max.json'} throughput_rps]" in out
    assert "Recommendation: edge" in out and (files / "cost.png").read_bytes()[:4] == b"\x89PNG"
    code, out, err = dm_main(monkeypatch, capfd, None, *_args(files, "--json"))
    assert code == 0 and out.count("\n") == 1, err
    obj = json.loads(out)
    assert obj["recommendation"] == "edge" and obj["options"]["cloud-public"]["units"] == {"replicas": 2}
    assert obj["config"]["type"] == "PlanConfig" and obj["models"]["edge"]["pick"] == "small"  # no accuracy floor
    assert all(m["source"].startswith(str(files)) for m in obj["measured"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sites": [{"name": "a", "peak_rps": -5, "mean_rps": 1}]}, "site a: peak_rps must be a number >= 0, got -5"),
        (
            {"sites": [{"name": "a", "peak_rps": 5, "mean_rps": 1, "rtt_ms": 150}]},
            "site a: the p99 budget 100 ms is below its network round trip 150 ms",
        ),  # fmt: skip
        ({"edge": {"memory_mb": 64, "model": "big"}}, "the device's 64 MiB cannot hold the smallest candidate small"),
        ({"cloud": {"zones": 0}}, "cloud: zones must be a whole number >= 1"),
        ({"surprise": 1}, "PlanConfig has no field(s) surprise"),
    ],
)
def test_bad_spec_is_one_line_and_exit_2(files, monkeypatch, capfd, change, message):
    spec = json.loads((files / "spec.json").read_text())
    for k, v in change.items():
        spec[k] = {**spec[k], **v} if isinstance(v, dict) and isinstance(spec.get(k), dict) else v
    (files / "spec.json").write_text(json.dumps(spec))
    code, out, err = dm_main(monkeypatch, capfd, None, *_args(files))
    assert code == 2 and out == ""
    assert message in err and err.strip().count("\n") == 0, err


def test_an_unknown_loadtest_file_is_one_line_and_exit_2(files, monkeypatch, capfd):
    args = _args(files)
    args[args.index(str(files / "max.json"))] = str(files / "missing.json")
    code, out, err = dm_main(monkeypatch, capfd, None, *args)
    assert code == 2 and f"no loadtest file at {files / 'missing.json'}" in err and err.strip().count("\n") == 0
