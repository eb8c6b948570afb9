"""Capacity arithmetic on hand-computed cases, the p99 rule and bad inputs."""

import json

import pytest
from dmtest import dm

from datamoat.errors import BadInput
from datamoat.serve.capacity import capacity, from_loadtests, loadtest_hardware


def test_hand_computed_plan_shows_its_arithmetic():
    # 200 x 2 = 400 req/s; 950 x 0.7 = 665 usable; ceil(400/665) = 1; +1 spare = 2.
    plan = capacity(200, 2.0, 950)
    assert (plan.demand_rps, plan.usable_rps, plan.replicas_for_load, plan.replicas) == (400, 665, 1, 2)
    assert plan.p99_status == "none" and plan.utilisation == 0.7
    assert "demand = 200 sites x 2 req/s = 400 req/s" in plan.lines
    assert "usable per replica = 950 req/s x 0.70 headroom = 665 req/s" in plan.lines
    assert "replicas for the load = ceil(400 / 665) = ceil(0.602) = 1" in plan.lines
    assert "N+1" in plan.text and "= 2 (" in plan.text
    assert json.loads(json.dumps(plan.to_dict()))["replicas"] == 2


@pytest.mark.parametrize(
    ("sites", "rate", "per_replica", "headroom", "for_load"),
    [
        (250, 2.0, 1000, 0.5, 1),  # 500 / 500 = 1 exactly: no extra replica
        (251, 2.0, 1000, 0.5, 2),  # 502 / 500 = 1.004
        (133, 5.0, 950, 0.7, 1),  # 665 / (950 x 0.7): exact in decimals, not in binary floats
        (1330, 5.0, 950, 0.7, 10),  # 6650 / 665 = 10
        (1, 0.1, 1000, 1.0, 1),  # a tiny load still needs one replica
        (1000, 3.0, 100, 1.0, 30),
    ],
)
def test_ceil_boundaries_and_n_plus_one(sites, rate, per_replica, headroom, for_load):
    plan = capacity(sites, rate, per_replica, headroom=headroom)
    assert plan.replicas_for_load == for_load and plan.replicas == for_load + 1


def test_p99_met_keeps_headroom():
    # p99 30 ms at full load is within 50 ms, so every lighter load is too.
    plan = capacity(200, 2.0, 1000, p99_ms=50, measured_p99_ms=30.0)
    assert plan.p99_status == "met" and plan.utilisation == 0.7 and plan.replicas == 2
    assert "p99 target 50 ms: met" in plan.text


def test_p99_missed_at_full_load_lowers_utilisation_to_the_highest_load_that_meets_it():
    # 80 ms at 100% misses 50 ms; 20 ms at 40% meets it -> plan at 0.40:
    # 1000 x 0.4 = 400 usable; demand 200 x 3 = 600; ceil(1.5) = 2; +1 = 3.
    plan = capacity(200, 3.0, 1000, p99_ms=50, measured_p99_ms={1.0: 80.0, 0.4: 20.0})
    assert plan.p99_status == "lowered" and plan.utilisation == 0.4
    assert (plan.usable_rps, plan.replicas_for_load, plan.replicas) == (400, 2, 3)
    assert "lowered from 0.70 to 0.40" in plan.text
    assert "usable per replica = 1000 req/s x 0.40 utilisation (lowered for the p99 target) = 400 req/s" in plan.lines
    # Without the target the same data plans at headroom: 600 / 700 -> 1 + 1.
    assert capacity(200, 3.0, 1000, measured_p99_ms={1.0: 80.0, 0.4: 20.0}).replicas == 2


def test_p99_uses_only_loads_below_the_first_miss():
    # 45 ms at 90% would meet the target, but 60 ms at 50% does not: do not trust the higher point.
    plan = capacity(10, 1.0, 100, p99_ms=50, measured_p99_ms={0.3: 10.0, 0.5: 60.0, 0.9: 45.0})
    assert plan.utilisation == 0.3


def test_p99_not_met_anywhere_is_refused_with_a_next_step():
    with pytest.raises(BadInput, match=r"not met at any measured load.*--rate 700"):
        capacity(200, 2.0, 1000, p99_ms=20, measured_p99_ms={1.0: 80.0, 0.5: 25.0})


def test_p99_target_without_a_measurement_is_flagged_unchecked():
    plan = capacity(200, 2.0, 950, p99_ms=20)
    assert plan.p99_status == "unchecked" and plan.utilisation == 0.7 and "NOT CHECKED" in plan.text


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0, 2.0, 950), {}, "sites"),
        ((2.5, 2.0, 950), {}, "sites"),
        ((10, 0, 950), {}, "rate"),
        ((10, -1.0, 950), {}, "rate"),
        ((10, float("nan"), 950), {}, "rate"),
        ((10, 2.0, None), {}, "missing per-replica throughput"),
        ((10, 2.0, 0), {}, "per-replica"),
        ((10, 2.0, 950), {"headroom": 0}, "headroom"),
        ((10, 2.0, 950), {"headroom": 1.5}, "headroom"),
        ((10, 2.0, 950), {"p99_ms": -5}, "p99"),
        ((10, 2.0, 950), {"p99_ms": 50, "measured_p99_ms": {0.0: 5.0}}, "utilisation"),
    ],
)
def test_bad_inputs_are_refused(args, kwargs, match):
    with pytest.raises(BadInput, match=match):
        capacity(*args, **kwargs)


def test_from_loadtests_takes_the_best_closed_loop_run_and_places_every_p99():
    runs = {
        "c32.json": {"mode": "closed", "concurrency": 32, "throughput_rps": 800.0, "p99_ms": 90.0},
        "c8.json": {"mode": "closed", "concurrency": 8, "throughput_rps": 600.0, "p99_ms": 30.0},
        "half.json": {"mode": "open", "throughput_rps": 400.0, "p99_ms": 12.0, "errors": 2, "requests": 4000},
    }
    rps, points, notes = from_loadtests(runs)
    assert rps == 800.0 and points == {1.0: 90.0, 0.75: 30.0, 0.5: 12.0}
    assert "from c32.json" in notes[0] and any("half.json had 2 failed" in n for n in notes)
    with pytest.raises(BadInput, match="open loop"):
        from_loadtests({"half.json": runs["half.json"]})
    with pytest.raises(BadInput, match="throughput_rps"):
        from_loadtests({"x.json": {"mode": "closed", "throughput_rps": 0.0}})


@pytest.mark.slow
def test_cli_json_and_text(tmp_path):
    out = json.loads(dm(None, "capacity", "--sites", "200", "--rate", "2", "--per-replica-rps", "950", "--json").stdout)
    assert out["replicas"] == 2 and out["demand_rps"] == 400 and out["lines"][0].startswith("demand = 200 sites")
    text = dm(None, "capacity", "--sites", "200", "--rate", "2", "--per-replica-rps", "950").stdout
    assert "ceil(400 / 665)" in text and "2 replicas" in text
    f = tmp_path / "max.json"
    f.write_text(json.dumps({"mode": "closed", "concurrency": 32, "throughput_rps": 1000.0, "p99_ms": 40.0}))
    out = json.loads(
        dm(
            None, "capacity", "--sites", "350", "--rate", "2", "--from-loadtest", str(f), "--p99-ms", "50", "--json"
        ).stdout
    )
    assert out["per_replica_rps"] == 1000 and out["p99_status"] == "met" and out["replicas"] == 2  # 700 / 700 = 1, +1


@pytest.mark.parametrize(
    "args",
    [
        ["--sites", "0", "--rate", "2", "--per-replica-rps", "950"],
        ["--sites", "10", "--rate", "0", "--per-replica-rps", "950"],
        ["--sites", "10", "--rate", "2", "--per-replica-rps", "950", "--headroom", "1.2"],
        ["--sites", "10", "--rate", "2"],
        ["--sites", "10", "--rate", "2", "--from-loadtest", "/nonexistent/lt.json"],
    ],
)
@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_2(args):
    proc = dm(None, "capacity", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error:")


CPU = {"device": "cpu", "provider": "CPUExecutionProvider", "cpu": "Xeon", "cores": 4, "cpu_limit": None, "gpus": []}
GPU = {**CPU, "device": "cuda", "provider": "CUDAExecutionProvider", "gpus": ["NVIDIA H100"]}


def test_a_plan_names_the_hardware_its_loadtests_measured_and_refuses_a_mix():
    runs = {
        "max.json": {"mode": "closed", "throughput_rps": 800.0, "p99_ms": 40.0, "server_hardware": CPU},
        # another onnxruntime build on the same machine is the same kind of replica
        "half.json": {"mode": "open", "throughput_rps": 400.0, "p99_ms": 12.0, "server_hardware": {**CPU, "x": 1}},
    }
    _, _, notes = from_loadtests(runs)
    assert loadtest_hardware(runs) == CPU
    assert notes[1] == "a replica is what was measured: CPU: Xeon, 4 cores"
    gpu = {**runs, "gpu.json": {"mode": "closed", "throughput_rps": 5000.0, "p99_ms": 9.0, "server_hardware": GPU}}
    with pytest.raises(BadInput, match="measured different hardware .*CUDA: 1 x NVIDIA H100") as e:
        from_loadtests(gpu)
    assert "own loadtests" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BadInput, match="measured different hardware"):
        loadtest_hardware({**runs, "limited.json": {**runs["max.json"], "server_hardware": {**CPU, "cpu_limit": 2.0}}})
    bare = {"max.json": {"mode": "closed", "throughput_rps": 800.0}}  # from a server that did not say
    assert loadtest_hardware(bare) is None and "hardware not recorded" in from_loadtests(bare)[2][1]


@pytest.mark.slow
def test_cli_capacity_reports_the_replicas_hardware_and_refuses_a_mix_in_one_line(tmp_path):
    cpu, gpu = tmp_path / "cpu.json", tmp_path / "gpu.json"
    cpu.write_text(json.dumps({"mode": "closed", "throughput_rps": 1000.0, "p99_ms": 40.0, "server_hardware": CPU}))
    gpu.write_text(json.dumps({"mode": "closed", "throughput_rps": 9000.0, "p99_ms": 8.0, "server_hardware": GPU}))
    base = ["capacity", "--sites", "350", "--rate", "2"]
    out = json.loads(dm(None, *base, "--from-loadtest", str(gpu), "--json").stdout)
    assert out["hardware"] == GPU and out["replicas"] == 2  # 700 / (9000 x 0.7) -> 1, +1
    assert "CUDA: 1 x NVIDIA H100" in dm(None, *base, "--from-loadtest", str(gpu)).stdout
    mixed = dm(None, *base, "--from-loadtest", str(cpu), "--from-loadtest", str(gpu), "--json")
    assert mixed.returncode == 2 and mixed.stdout == "" and len(mixed.stderr.strip().splitlines()) == 1
    assert "measured different hardware" in mixed.stderr
