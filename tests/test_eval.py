"""The evaluation harness: its arithmetic on known inputs, its input formats, resume, and one real run."""
import json

import pytest

from conftest import ROOT, run_cli, run_main
from costeer.engine.decoding import ConfidenceGate
from costeer.evaluation.eval import load_rows, method_spec, parse_method, summarize, sweep_methods
from costeer.steering.policy import SteeringParams, effective_strength

SAMPLE = ROOT / "assets" / "eval" / "sample.jsonl"


def _r(id, method, r1, rl, text="a b c", tokens=10, seconds=2.0):
    return {"id": id, "method": method, "rouge1": r1, "rougeL": rl, "text": text, "tokens": tokens, "seconds": seconds}


def test_summary_arithmetic_on_known_inputs():
    results = [_r("1", "llm", 0.2, 0.1), _r("2", "llm", 0.4, 0.3), _r("3", "llm", 0.6, 0.5),
               _r("1", "costeer", 0.3, 0.2, text="a b c d e", tokens=20, seconds=4.0),
               _r("2", "costeer", 0.4, 0.3), _r("3", "costeer", 0.5, 0.4)]
    s = summarize(results, ["llm", "costeer"])
    assert s["llm"]["n"] == 3 and s["llm"]["rouge1"] == pytest.approx(0.4) and s["llm"]["rougeL"] == pytest.approx(0.3)
    lo, hi = s["llm"]["rougeL_ci"]
    assert 0.1 <= lo <= 0.3 <= hi <= 0.5
    assert s["costeer"]["tokens_per_s"] == pytest.approx(40 / 8.0)
    assert s["costeer"]["mean_words"] == pytest.approx((5 + 3 + 3) / 3)
    paired = s["costeer"]["vs_llm"]
    assert paired["n"] == 3 and paired["win_share"] == pytest.approx(1 / 3) and paired["tie_share"] == pytest.approx(1 / 3)
    assert paired["rougeL_diff"] == pytest.approx(0.0)
    assert s["costeer"]["effective_strength"] == pytest.approx(effective_strength(SteeringParams()))
    assert "vs_llm" not in s["llm"]


def test_the_overlap_set_is_hard_by_design():
    """assets/eval/overlap.jsonl: ten personas whose interests overlap (four cook, two cycle, three
    play or love music, three eat no meat), every question asked of four to six of them, so the
    topic alone does not name the user and chance is 10 %."""
    rows = load_rows(ROOT / "assets" / "eval" / "overlap.jsonl")
    users = {r.user for r in rows}
    asked = {}
    for r in rows:
        asked.setdefault(r.query, set()).add(r.user)
        assert r.excludes and r.reference.strip() and len(r.profile) == 5
    assert len(users) == 10 and len(rows) == 30 and all(4 <= len(u) <= 6 for u in asked.values())
    assert all(sum(r.user == u for r in rows) == 3 for u in users)


def test_gated_variant_and_its_skip_share():
    assert method_spec("costeer:gate=0.2,patience=3") == (SteeringParams(), ConfidenceGate(0.2, 3))
    with pytest.raises(ValueError, match="patience and mode need gate"):
        method_spec("costeer:patience=3")
    with pytest.raises(ValueError, match="gate threshold must be in"):
        method_spec("costeer:gate=1.5")
    rows = [dict(_r("1", "costeer:gate=0.2", 0.1, 0.1, tokens=10), device_skipped=4),
            dict(_r("2", "costeer:gate=0.2", 0.1, 0.1, tokens=30), device_skipped=6)]
    assert summarize(rows, ["costeer:gate=0.2"])["costeer:gate=0.2"]["device_skip_share"] == pytest.approx(10 / 40)


def test_identical_values_have_a_degenerate_interval():
    s = summarize([_r(str(i), "llm", 0.25, 0.25) for i in range(10)], ["llm"])
    assert s["llm"]["rouge1_ci"] == [0.25, 0.25]


def test_method_names():
    assert parse_method("llm") is None and parse_method("costeer") == SteeringParams()
    assert parse_method("costeer:T=5,lam=1") == SteeringParams(T=5, lam=1.0)
    for bad, words in (("gpt", "unknown method"), ("costeer:lam=x", "must be a number"),
                       ("costeer:zeta=1", "key in T, eta, lam"), ("costeer:lam=0", "lam must be > 0")):
        with pytest.raises(ValueError, match=words):
            parse_method(bad)
    assert sweep_methods("lam=0.5,1,2") == ("lam", [0.5, 1.0, 2.0], ["costeer:lam=0.5", "costeer:lam=1", "costeer:lam=2"])
    assert sweep_methods("T=1,20")[2] == ["costeer:T=1", "costeer:T=20"]


def test_sample_set_and_longlamp_rows(tmp_path):
    rows = load_rows(SAMPLE)
    assert 15 <= len(rows) <= 30 and len({r.id.split("-")[0] for r in rows}) >= 3
    assert all(r.profile and r.reference and r.query for r in rows)
    f = tmp_path / "longlamp.jsonl"
    f.write_text(json.dumps({"id": "x1", "input": "Generate an abstract for the title: GNNs", "output": "We study...",
                             "profile": [{"title": "t", "abstract": "An abstract."}, {"id": 3, "title": "no text"}]}) + "\n"
                 + json.dumps({"input": "q", "output": "r", "top_5": [{"review": "Great."}]}) + "\n")
    rows = load_rows(f)
    assert rows[0].profile == [{"title": "t", "text": "An abstract."}] and rows[1].id == "2"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_rows(bad)


@pytest.mark.slow
def test_real_run_json_resume_and_sweep_plot(tmp_path):
    out, plot = tmp_path / "rows.jsonl", tmp_path / "sweep.png"
    args = ["-m", "costeer", "eval", "--data", str(SAMPLE), "--limit", "2", "--max-new-tokens", "6",
            "--json", "--no-progress", "--out", str(out)]
    r = run_cli(args)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert set(result["methods"]) == {"llm", "slm_ctx", "llm_ctx", "costeer"}
    for m in result["methods"].values():
        assert m["n"] == 2 and 0 <= m["rougeL"] <= 1 and len(m["rougeL_ci"]) == 2 and m["tokens_per_s"] > 0
    assert "WordNet" in result["meteor"]
    lines = out.read_text().splitlines()
    assert len(lines) == 8
    r2 = run_cli(args)  # resumes: nothing new to run, the same summary
    assert len(out.read_text().splitlines()) == 8
    assert json.loads(r2.stdout)["methods"]["costeer"]["rougeL"] == result["methods"]["costeer"]["rougeL"]
    r3 = run_cli(["-m", "costeer", "eval", "--data", str(SAMPLE), "--limit", "2", "--max-new-tokens", "6",
                  "--sweep", "lam=1,2", "--plot", str(plot), "--json", "--no-progress"])
    assert r3.returncode == 0, r3.stderr
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert set(json.loads(r3.stdout)["methods"]) == {"costeer:lam=1", "costeer:lam=2"}


def test_bad_eval_arguments_exit_2():
    r = run_main(["-m", "costeer", "eval", "--data", str(SAMPLE), "--methods", "gpt4"])
    assert r.returncode == 2 and "unknown method 'gpt4'" in r.stderr
    r = run_main(["-m", "costeer", "eval", "--data", "/nonexistent.jsonl"])
    assert r.returncode == 2 and "nonexistent.jsonl" in r.stderr
