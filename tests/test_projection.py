"""'Will it run on my PC?': the projection's arithmetic, and `bench --project` on this machine."""
import json

import pytest

from conftest import run_cli
from costeer.bench.projection import PAIRS, Measured, Pair, project
from costeer.engine.speculative import expected_speedup

HERE = Measured(device_ms=50.0, steer_ms=1.0, first_token_ms=400.0, weight_bytes=540_000_000, params=135_000_000,
                cpu="test CPU")


def test_the_device_step_scales_with_weight_bytes_and_the_first_token_with_parameters():
    pair = Pair("p", "dev", 0.54, 2.0, "cloud", cloud_ms=20.0, cloud_prefill_ms=80.0, rtt_ms=50.0)
    r = project(HERE, pair, acceptance=0.7, K=4)
    assert r["device_ms_per_step"] == pytest.approx(50.0 * 0.54e9 * 2.0 / 540e6, abs=0.05)  # 100 ms: twice the bytes
    assert r["ms_per_token"] == pytest.approx(50 + 20 + 100 + 1, abs=0.05)
    assert r["time_to_first_token_ms"] == pytest.approx(50 + 80 + 400 * 4, abs=0.5)  # 4x the parameters
    speedup = expected_speedup(0.7, 4, 50.0, 21.0, 100.0)
    assert r["speculate_4_ms_per_token"] == pytest.approx(171.0 / speedup, abs=0.05)
    assert "0.54B params, 16 bits/weight" in r["inputs"] and "50 ms round trip" in r["inputs"]


def test_speculation_pays_off_only_when_the_round_trip_outweighs_the_drafting():
    fast = Measured(5.0, 0.5, 100.0, 540_000_000, 135_000_000, "x")
    far = Pair("far", "d", 0.135, 4.0, "c", 20.0, 80.0, rtt_ms=100.0)
    assert project(fast, far)["speculate_4_ms_per_token"] < project(fast, far)["ms_per_token"]
    slow = Measured(250.0, 0.5, 100.0, 540_000_000, 135_000_000, "x")
    near = Pair("near", "d", 0.135, 4.0, "c", 20.0, 80.0, rtt_ms=5.0)
    assert project(slow, near)["speculate_4_ms_per_token"] > project(slow, near)["ms_per_token"]


@pytest.mark.slow
def test_bench_project_measures_here_and_states_its_inputs():
    r = run_cli(["-m", "costeer", "bench", "--project", "--tokens", "8", "--json"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["measured"]["device_ms"] > 0 and out["measured"]["params"] > 100e6 and "cores" in out["measured"]["cpu"]
    assert [p["pair"] for p in out["projections"]] == [p.name for p in PAIRS]
    assert all(p["ms_per_token"] > 0 and "round trip" in p["inputs"] for p in out["projections"])
