"""`python -m costeer` as a user runs it: a child process, real model, real output."""
import json

import pytest

from conftest import run_cli, run_main

OSAKA = ("I am a strict vegetarian living in Osaka. I love jazz and quiet places. "
         "I always answer in short bullet points.")


@pytest.mark.slow
def test_generate_json_steered_differs_from_unsteered():
    r = run_cli(["-m", "costeer", "generate", "--json", "--max-new-tokens", "40", "--repetition-penalty", "1.1",
                 "--no-repeat-ngram-size", "4", "--prompt", "Suggest a plan for my Friday evening.", "--context", OSAKA])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"unsteered", "steered", "effective_strength", "params", "cloud_model", "local_model"}
    assert out["steered"].strip() and out["unsteered"].strip() and out["steered"] != out["unsteered"]
    assert abs(out["effective_strength"] - 1.783) < 1e-3
    assert out["params"] == {"T": 20, "eta": 10.0, "lam": 2.0, "alpha": 2.0, "beta": 1.0}
    assert "plays both roles" in r.stderr  # the stand-in is said plainly
    assert out["sampling"]["repetition_penalty"] == 1.1 and out["sampling"]["no_repeat_ngram_size"] == 4
    lat = out["latency"]
    assert 0 < lat["time_to_first_token_ms"] <= lat["total_ms"] and lat["tokens"]["unsteered"] >= 1
    assert set(lat["per_step_ms"]) == {"cloud", "device", "steering", "ui", "other"} and lat["per_step_ms"]["cloud"] > 0


def test_bad_arguments_exit_2_naming_the_field():
    for args, word in ((["--T", "0"], "T must be an integer in [1, 1000]"),
                       (["--eta", "-1"], "eta must be > 0"),
                       (["--lam", "nan"], "lam must be a finite number"),
                       (["--top-p", "2"], "top_p must be in (0, 1]"),
                       (["--repetition-penalty", "0.5"], "repetition_penalty must be in [1, 10]"),
                       (["--no-repeat-ngram-size", "-1"], "no_repeat_ngram_size must be an integer in [0, 20]")):
        r = run_main(["-m", "costeer", "generate", "--prompt", "hi", *args])
        assert r.returncode == 2 and word in r.stderr and "Traceback" not in r.stderr


def test_unloadable_model_is_one_line_exit_1(tmp_path):
    r = run_cli(["-m", "costeer", "generate", "--prompt", "hi", "--cloud-model", str(tmp_path / "missing")])
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "model load failed" in r.stderr and str(tmp_path / "missing") in r.stderr


@pytest.mark.slow
def test_bench_reports_every_figure():
    r = run_cli(["-m", "costeer", "bench", "--tokens", "4", "--repeats", "1", "--json"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for k in ("plain", "steered", "side_by_side", "naive_steered", "steered_repetition_control"):
        assert out[f"{k}_ms_per_token"] > 0 and out[f"{k}_time_to_first_token_ms"] > 0
    assert out["steered_over_plain"] == round(out["steered_ms_per_token"] / out["plain_ms_per_token"], 3) or \
        abs(out["steered_over_plain"] - out["steered_ms_per_token"] / out["plain_ms_per_token"]) < 0.01
    assert out["naive_over_steered"] > 0 and out["peak_rss_mb"] > 0 and out["repetition_control_over_steered"] > 0
    for k in (5, 20, 100):
        assert 0 <= out[f"top{k}_agreement"] <= 1
    assert out["top5_agreement"] <= out["top100_agreement"] + 1e-9 or out["agreement_steps"] < 10
    assert out["http_steered_ms_per_token"] > 0 and out["in_process_steered_ms_per_token"] > 0
    assert 0 < out["matmul_floor_ms_per_token"] and out["plain_over_matmul_floor"] == pytest.approx(
        out["plain_ms_per_token"] / out["matmul_floor_ms_per_token"], rel=0.01)
    assert out["linear_orientation"] in ("stock", "weight-left") and out["matmul_hot_cache_ms_per_token"] > 0
    assert out["serve_cloud_requests_per_s_1_clients"] > 0 and out["serve_cloud_requests_per_s_4_clients"] > 0
    assert out["deny_list_ids"] > 0 and out["deny_over_plain_steered"] > 0 and out["noise_over_plain_steered"] > 0
    assert "llama_server_ms_per_token" in out  # a figure, or why it was not measured


def _one_line_error(r, code=2):
    assert r.returncode == code, (r.returncode, r.stderr[-500:])
    assert "Traceback" not in r.stderr and r.stderr.strip()
    return r.stderr


def test_bad_text_and_files_are_one_line_errors(tmp_path):
    """Each of these printed a traceback before."""
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Café in São Paulo".encode("latin-1"))
    assert "is not UTF-8 text" in _one_line_error(run_main(["-m", "costeer", "generate", "--prompt", "hi",
                                                          "--context-file", str(bad)]))
    # "\udcff" is how Python hands over the raw byte 0xff from a shell argument
    assert "--prompt is not valid UTF-8 text" in _one_line_error(run_main(["-m", "costeer", "generate", "--prompt", "\udcff"]))
    assert "not valid UTF-8 text" in _one_line_error(run_main(["-m", "user_store", "--db", str(tmp_path / "s.db"),
                                                              "add", "Ana", "\udcff"]))
    (tmp_path / "notes.db").write_text("just some text, not a database\n" * 20)
    for db in (tmp_path / "notes.db", tmp_path, "/proc/costeer.db"):
        err = _one_line_error(run_main(["-m", "user_store", "--db", str(db), "users"]))
        assert "cannot open the database" in err and str(db) in err
    assert (tmp_path / "notes.db").read_text().startswith("just some text")  # nothing written into it


@pytest.mark.slow
def test_too_long_a_prompt_is_refused_in_words():
    err = _one_line_error(run_cli(["-m", "costeer", "generate", "--prompt", "word " * 9000, "--max-new-tokens", "4"]))
    assert "conversation too long" in err and "context of 8192 tokens" in err


def test_eval_checks_its_output_paths_before_the_work(tmp_path):
    data = "assets/eval/sample.jsonl"
    for args, words in ((["--out", str(tmp_path)], "--out: "),
                        (["--sweep", "lam=1,2", "--plot", "/nonexistent/p.png"], "--plot: the folder /nonexistent does not exist")):
        err = _one_line_error(run_main(["-m", "costeer", "eval", "--data", data, "--limit", "1", *args]))
        assert words in err and "model" not in err.split(words)[0][-40:]


def test_eval_does_not_send_the_context_to_a_cloud_unasked():
    err = _one_line_error(run_main(["-m", "costeer", "eval", "--data", "assets/eval/sample.jsonl", "--limit", "1",
                                   "--cloud-url", "http://127.0.0.1:9/v1", "--methods", "llm", "llm_ctx"]))
    assert "llm_ctx" in err and "--allow-context-to-cloud" in err and "personal data" in err


def test_app_checks_top_k():
    err = _one_line_error(run_main(["app.py", "--top-k", "0"]))
    assert "--top-k must be an integer in [1, 1000]" in err


@pytest.mark.parametrize("args, said", [
    (["--raters-url", "http://example.org"], "--raters-url needs --raters-host"),
    (["--raters-host", "0.0.0.0", "--raters-url", "ftp://x"], "--raters-url must start with http:// or https://"),
    (["--raters-host", "127.0.0.1", "--raters-port", "7860"], "--raters-port must differ from --port"),
    (["--raters-host", "0.0.0.0", "--raters-port", "0"], "--raters-port must be an integer in [1, 65535]"),
])
def test_app_checks_the_raters_server_options(args, said):
    assert said in _one_line_error(run_main(["app.py", *args]))


def test_issue_23_cli_inputs_are_one_line_errors(tmp_path):
    """Each printed a traceback (or hung) before: a huge -k, /dev/zero and a FIFO as import files,
    a broken --cloud-url, eval rows nested deeply, with a NUL or integer title, a lone surrogate."""
    import os

    db = ["-m", "user_store", "--db", str(tmp_path / "s.db")]
    assert run_main([*db, "add-user", "Ana"]).returncode == 0 and run_main([*db, "add", "Ana", "Likes fado"]).returncode == 0
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    for args, words in ((["search", "Ana", "fado", "-k", str(10**20)], "k must be an integer in [1, 1000]"),
                        (["context", "Ana", "fado", "--max-tokens", str(10**22)], "max_tokens must be an integer in"),
                        (["import", "/dev/zero", "--user", "Ana"], "not a regular file"),
                        (["import", str(fifo), "--user", "Ana"], "not a regular file")):
        assert words in _one_line_error(run_main([*db, *args])), args
    assert "--cloud-url: not a URL" in _one_line_error(run_main(["-m", "costeer", "generate", "--prompt", "hi",
                                                                "--cloud-url", "http://[::1"]))
    rows = {"nested": '{"id": "1", "query": "q", "reference": "r", "profile": ' + "[" * 5000 + "]" * 5000 + "}",
            "nul": json.dumps({"query": "q", "reference": "r", "profile": [{"title": "a\x00b", "text": "t"}]}),
            "int": json.dumps({"query": "q", "reference": "r", "profile": [{"title": 5, "text": "t"}]}),
            "surrogate": '{"query": "a\\ud800b", "reference": "r", "profile": [{"text": "t"}]}'}
    for name, words in (("nested", ":2: nested too deeply"), ("nul", ":2: profile[0].title contains a NUL"),
                        ("int", ":2: profile[0].title must be text, got int"),
                        ("surrogate", ":2: query contains a lone surrogate")):
        data = tmp_path / f"{name}.jsonl"
        data.write_text('{"query": "q", "reference": "r", "profile": []}\n' + rows[name] + "\n", encoding="utf-8")
        assert words in _one_line_error(run_main(["-m", "costeer", "eval", "--data", str(data), "--methods", "llm"])), name


def test_replace_of_another_users_history_needs_yes(tmp_path):
    db = ["-m", "user_store", "--db", str(tmp_path / "s.db")]
    assert run_cli([*db, "add-user", "Ana"]).returncode == 0 and run_cli([*db, "add", "Ana", "Likes fado"]).returncode == 0
    f = tmp_path / "ana.json"
    f.write_text(json.dumps({"user": "Ana", "entries": [{"text": "New"}]}), encoding="utf-8")
    assert "would delete the 1 entries of 'Ana'; add --yes" in _one_line_error(run_cli([*db, "import", str(f), "--mode", "replace"]))
    assert "Likes fado" in run_cli([*db, "entries", "Ana"]).stdout  # nothing deleted
    assert run_cli([*db, "import", str(f), "--mode", "replace", "--yes"]).returncode == 0
    assert "Likes fado" not in run_cli([*db, "entries", "Ana"]).stdout


@pytest.mark.slow
def test_the_installed_commands_are_the_modules_commands(tmp_path):
    """`pip install -e .` (scripts/install.sh) gives `costeer`, `costeer-store` and `costeer-studio`:
    the same parsers as `python -m costeer`, `python -m user_store` and `python app.py`, from any folder."""
    import shutil
    import subprocess

    for command, word in (("costeer", "serve-cloud"), ("costeer-store", "import"), ("costeer-studio", "--cloud-model")):
        path = shutil.which(command)
        assert path, f"{command} is not on PATH: run scripts/install.sh"
        r = subprocess.run([path, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert r.returncode == 0 and word in r.stdout, (command, r.stderr[-500:])
    r = subprocess.run([shutil.which("costeer"), "generate", "--prompt", "hi", "--T", "0"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "T must be an integer in [1, 1000]" in r.stderr and "Traceback" not in r.stderr


def test_canary_refuses_out_of_range_trials_and_runs_on_the_bundled_model():
    err = _one_line_error(run_main(["-m", "costeer", "canary", "--trials", "0"]))
    assert "--trials must be an integer in [1, 500], got 0" in err
    r = run_main(["-m", "costeer", "canary", "--trials", "1", "--max-new-tokens", "8", "--json", "--no-progress"])
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result["settings"]) == {"paper defaults", "copy guard 6", "marked sensitive"}
    assert result["settings"]["marked sensitive"]["verbatim"] == 0.0
