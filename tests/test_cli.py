"""`python -m costeer` as a user runs it: a child process, real model, real output."""
import json

from conftest import run_cli

OSAKA = ("I am a strict vegetarian living in Osaka. I love jazz and quiet places. "
         "I always answer in short bullet points.")


def test_generate_json_steered_differs_from_unsteered():
    r = run_cli(["-m", "costeer", "generate", "--json", "--max-new-tokens", "40",
                 "--prompt", "Suggest a plan for my Friday evening.", "--context", OSAKA])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"unsteered", "steered", "effective_strength", "params", "cloud_model", "local_model"}
    assert out["steered"].strip() and out["unsteered"].strip() and out["steered"] != out["unsteered"]
    assert abs(out["effective_strength"] - 1.783) < 1e-3
    assert out["params"] == {"T": 20, "eta": 10.0, "lam": 2.0, "alpha": 2.0, "beta": 1.0}
    assert "plays both roles" in r.stderr  # the stand-in is said plainly


def test_bad_arguments_exit_2_naming_the_field():
    for args, word in ((["--T", "0"], "T must be an integer in [1, 1000]"),
                       (["--eta", "-1"], "eta must be > 0"),
                       (["--lam", "nan"], "lam must be a finite number"),
                       (["--top-p", "2"], "top_p must be in (0, 1]")):
        r = run_cli(["-m", "costeer", "generate", "--prompt", "hi", *args])
        assert r.returncode == 2 and word in r.stderr and "Traceback" not in r.stderr


def test_unloadable_model_is_one_line_exit_1(tmp_path):
    r = run_cli(["-m", "costeer", "generate", "--prompt", "hi", "--cloud-model", str(tmp_path / "missing")])
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "model load failed" in r.stderr and str(tmp_path / "missing") in r.stderr


def test_bench_reports_every_figure():
    r = run_cli(["-m", "costeer", "bench", "--tokens", "4", "--repeats", "1", "--json"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for k in ("plain", "steered", "side_by_side", "naive_steered"):
        assert out[f"{k}_ms_per_token"] > 0 and out[f"{k}_time_to_first_token_ms"] > 0
    assert out["steered_over_plain"] == round(out["steered_ms_per_token"] / out["plain_ms_per_token"], 3) or \
        abs(out["steered_over_plain"] - out["steered_ms_per_token"] / out["plain_ms_per_token"]) < 0.01
    assert out["naive_over_steered"] > 0 and out["peak_rss_mb"] > 0
    for k in (5, 20, 100):
        assert 0 <= out[f"top{k}_agreement"] <= 1
    assert out["top5_agreement"] <= out["top100_agreement"] + 1e-9 or out["agreement_steps"] < 10
    assert out["http_steered_ms_per_token"] > 0 and out["in_process_steered_ms_per_token"] > 0
