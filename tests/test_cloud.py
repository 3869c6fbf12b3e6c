"""The cloud as its own process (OpenAI-compatible subset) and the device talking to it."""
import inspect
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from apprunner import free_port
from cloudrunner import remote_cloud, remote_engine, running_cloud
from conftest import run_cli
from costeer.engine.cloud import CloudError, RemoteCloud
from costeer.engine.decoding import Sampling, build_prompts
from costeer.engine.spec import DecodeSpec

FRIDAY = [{"role": "user", "content": "Suggest a plan for my Friday evening."}]
OSAKA = "I am a strict vegetarian living in Osaka. I love jazz and quiet places. I always answer in short bullet points."


@pytest.fixture(scope="module")
def cloud_url():
    with running_cloud(None, "--max-logprobs", "100") as url:
        yield url


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if not isinstance(body, bytes) else body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_health_models_and_completion_shape(cloud_url, lm):
    with urllib.request.urlopen(cloud_url + "/health") as r:
        assert json.loads(r.read()) == {"status": "ok"}
    with urllib.request.urlopen(cloud_url + "/v1/models") as r:
        assert json.loads(r.read())["data"][0]["id"] == lm.name
    ids, _ = build_prompts(lm.tokenizer, FRIDAY, "")
    status, out = _post(cloud_url + "/v1/completions", {"prompt": ids, "max_tokens": 1, "logprobs": 5,
                                                         "temperature": 0, "return_tokens_as_token_ids": True})
    assert status == 200 and out["object"] == "text_completion"
    top = out["choices"][0]["logprobs"]["top_logprobs"][0]
    assert len(top) == 5 and all(k.startswith("token_id:") for k in top)
    # the same numbers as the model in this process
    with torch.inference_mode():
        ref = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0, -1].float(), -1)
    for k, v in top.items():
        assert abs(ref[int(k.split(":")[1])] - v) < 1e-3
    status, text_out = _post(cloud_url + "/v1/completions", {"prompt": "Hello", "max_tokens": 3})
    assert status == 200 and text_out["choices"][0]["text"]


def test_prefix_cache_makes_a_step_incremental(cloud_url, lm):
    ids, _ = build_prompts(lm.tokenizer, [{"role": "user", "content": "Tell me about cache reuse #7"}], "")
    _, first = _post(cloud_url + "/v1/completions", {"prompt": ids, "max_tokens": 1, "logprobs": 1})
    _, second = _post(cloud_url + "/v1/completions", {"prompt": ids + [100], "max_tokens": 1, "logprobs": 1})
    assert second["usage"]["cache_hits"] == first["usage"]["cache_hits"] + 1
    assert second["usage"]["cache_misses"] == first["usage"]["cache_misses"]
    # the bound counts what a kept batch holds besides its KV cache: a row's log-probs are a whole
    # vocabulary (issue 23: --cache-mb 64 reported 61.9 MiB while the RSS grew 330 MB)
    with urllib.request.urlopen(cloud_url + "/stats") as r:
        stats = json.loads(r.read())
    assert stats["cache_bytes"] >= stats["cache_batches"] * lm.vocab_size * 4


@pytest.mark.parametrize("body, message", [
    ({"prompt": [10, 999999]}, "token ids must be integers in [0, 49152)"),
    ({"prompt": []}, "prompt must be text"),
    ({"prompt": [1, 2], "logprobs": 101}, "logprobs must be an integer in [0, 100]"),
    ({"prompt": [1, 2], "temperature": 0.7}, "only temperature 0"),
    (b"{broken", "not valid JSON"),
])
def test_bad_requests_are_400_with_a_reason(cloud_url, body, message):
    status, out = _post(cloud_url + "/v1/completions", body)
    assert status == 400 and message in out["detail"]


@pytest.mark.slow
def test_remote_engine_steers_among_the_clouds_top_k(cloud_url, lm, engine):
    r_engine = remote_engine(cloud_url, lm, top_k=20)
    assert r_engine.cloud.model_id == lm.name
    greedy = Sampling(max_new_tokens=16)
    events = list(r_engine.stream(FRIDAY, OSAKA, DecodeSpec("side_by_side", sampling=greedy)))
    local = {}
    for ev in engine.stream(FRIDAY, OSAKA, DecodeSpec("side_by_side", sampling=greedy)):
        local.setdefault(ev.stream, []).append(ev.token_id)
    remote_ids = {}
    for ev in events:
        remote_ids.setdefault(ev.stream, []).append(ev.token_id)
    assert remote_ids["unsteered"] == local["unsteered"]  # greedy on the cloud: top-k holds the argmax
    assert remote_ids["steered"] and any(ev.changed for ev in events if ev.stream == "steered")
    for ev in events:  # everything steering can pick is one of the cloud's top-k
        assert sum(p for _, p in ev.top_steered) <= 1.0 + 1e-4


def test_tokenizer_mismatch_is_refused(cloud_url, tmp_path, lm):
    class Shifted:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [i + 1 for i in lm.tokenizer(text, add_special_tokens=False)["input_ids"]]}

    with pytest.raises(CloudError, match="tokenizes differently"):
        RemoteCloud(cloud_url, Shifted(), lm.vocab_size, lm.eos_ids).connect()


def test_cloud_interface_takes_token_ids_only():
    params = list(inspect.signature(RemoteCloud.next_logprobs).parameters)
    assert params == ["self", "rows"]


# -- faults, caused for real by a misbehaving HTTP server on loopback ------------------------------
class _Faulty(BaseHTTPRequestHandler):
    mode = "500"
    hits = 0

    def log_message(self, *a):
        pass

    def _send(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode = type(self).mode
        if mode == "500":
            self._send(500, b"boom")
        elif mode == "429":
            self._send(429, b"slow down", [("Retry-After", "0")])
        elif mode == "json":
            self._send(200, b"{not json")
        elif mode == "slow":
            time.sleep(3)
            self._send(200, b"{}")
        elif mode == "vocab":
            body = {"choices": [{"index": 0, "logprobs": {"top_logprobs": [{"token_id:99999999": -0.1}]}}]}
            self._send(200, json.dumps(body).encode())
        elif mode == "nan":
            self._send(200, b'{"choices": [{"index": 0, "logprobs": {"top_logprobs": [{"token_id:5": NaN}]}}]}')
        elif mode == "empty":
            self._send(200, b'{"choices": [{"index": 0, "logprobs": {"top_logprobs": [{}]}}]}')
        elif mode == "llama-cpp-python":  # a stand-in for its server: /tokenize is missing, /extras/tokenize is there
            if self.path == "/extras/tokenize":
                self._send(200, b'{"tokens": [1, 2]}')
            else:
                self._send(404, b'{"detail": "Not Found"}')

    def do_GET(self):
        self._send(200, b'{"object": "list", "data": [{"id": "stand-in", "object": "model", "owned_by": "me"}]}')


@pytest.fixture
def faulty():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Faulty.hits = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode, words, attempts", [
    ("500", "failed after 3 attempts: HTTP 500", 3),
    ("429", "failed after 3 attempts: HTTP 429", 3),
    ("json", "malformed JSON", 3),
    ("slow", "timed out", 3),
    ("vocab", "outside the vocabulary", 1),
    ("nan", "which is not a log-probability", 1),
    ("empty", "returned no top log-probs", 1),
])
def test_faults_end_in_a_clear_error_never_a_hang(faulty, lm, mode, words, attempts):
    _Faulty.mode = mode
    cloud = remote_cloud(faulty, lm, timeout=1.0, connect_timeout=1.0, retries=2)
    start = time.time()
    with pytest.raises(CloudError) as err:
        cloud.next_logprobs([[1, 2, 3]])
    assert faulty in str(err.value) and words in str(err.value)
    assert _Faulty.hits == attempts
    assert time.time() - start < 15


def test_connection_refused_is_retried_then_reported(lm):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.time()
    with pytest.raises(CloudError, match="failed after 3 attempts: cannot connect"):
        remote_cloud(url, lm, retries=2).connect()
    assert time.time() - start < 15


@pytest.mark.slow
def test_cli_with_a_dead_cloud_is_one_line_exit_1():
    r = run_cli(["-m", "costeer", "generate", "--prompt", "hi", "--cloud-url", f"http://127.0.0.1:{free_port()}/v1"])
    assert r.returncode == 1 and "cannot connect" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_app_runs_against_the_remote_cloud(cloud_url, tmp_path):
    """Two processes: `serve-cloud` and `app.py --cloud-url`, the same demo as one process."""
    from gradio_client import Client

    from apprunner import running_app
    from user_store import UserStore

    db = tmp_path / "c.db"
    store = UserStore(db)
    store.add_user("kenji")
    store.add_entry("kenji", OSAKA, kind="profile")
    with running_app(db, "--cloud-url", cloud_url + "/v1") as url:
        with urllib.request.urlopen(url) as r:
            assert cloud_url.encode() in r.read()  # the page says which cloud it uses
        unsteered, steered = Client(url, verbose=False).predict("kenji", "Suggest a plan for my Friday evening.",
                                                                 20, 10, 2, 24, api_name="/generate_pair")
        assert unsteered.strip() and steered.strip() and unsteered != steered


# -- serve-cloud under abuse: limits, cancellation, shutdown (loopback only) ------------------------
@pytest.fixture(scope="module")
def small_cloud():
    with running_cloud(None, "--max-rows", "4", "--max-request-tokens", "3000") as url:
        yield url


@pytest.mark.parametrize("rows, length, words", [
    (5, 10, "at most 4 prompts per request (--max-rows)"),
    (1, 8200, "exceed the model's context of 8192 tokens"),
    (2, 1600, "exceed the request limit of 3000 (--max-request-tokens)"),
])
def test_requests_over_a_limit_are_400_naming_it(small_cloud, rows, length, words):
    status, out = _post(small_cloud + "/v1/completions", {"prompt": [[17] * length] * rows, "max_tokens": 1})
    assert status == 400 and words in out["detail"]


@pytest.mark.parametrize("body, words", [
    ({"prompt": [1, 2], "max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
    ({"prompt": [1, True]}, "prompt"),
    ({"prompt": [1, 2], "logprobs": "5"}, "logprobs"),
    ([1, 2], "request body must be a JSON object"),
])
def test_malformed_requests_name_the_field(small_cloud, body, words):
    status, out = _post(small_cloud + "/v1/completions", body)
    assert status == 400 and words in out["detail"]


def test_two_rows_extending_one_cached_prompt_both_hit(cloud_url, lm):
    """Side by side: both streams extend the same prompt at their first step."""
    ids, _ = build_prompts(lm.tokenizer, [{"role": "user", "content": f"Cache check {time.time()}"}], "")
    _, first = _post(cloud_url + "/v1/completions", {"prompt": [ids, ids], "max_tokens": 1, "logprobs": 1})
    _, second = _post(cloud_url + "/v1/completions", {"prompt": [ids + [11], ids + [12]], "max_tokens": 1, "logprobs": 1})
    assert second["usage"]["cache_misses"] == first["usage"]["cache_misses"]
    assert second["usage"]["cache_hits"] == first["usage"]["cache_hits"] + 1


@pytest.mark.slow
def test_health_answers_while_busy_and_a_client_that_leaves_cancels_its_work(small_cloud):
    import http.client
    import socket

    body = json.dumps({"prompt": [[17] * 2900], "max_tokens": 1}).encode()
    before = json.loads(urllib.request.urlopen(small_cloud + "/stats").read())
    host, port = small_cloud.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    time.sleep(0.3)
    start = time.time()
    with urllib.request.urlopen(small_cloud + "/health", timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok"}
    assert time.time() - start < 5
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-request
    conn.close()
    deadline = time.time() + 60
    while time.time() < deadline:
        now = json.loads(urllib.request.urlopen(small_cloud + "/stats").read())
        if now["cancelled"] > before["cancelled"] or now["completed"] > before["completed"]:
            break
        time.sleep(0.2)
    assert now["cancelled"] == before["cancelled"] + 1 and now["completed"] == before["completed"]


@pytest.mark.slow
def test_sigterm_stops_a_busy_server_promptly(tmp_path):
    import signal
    import subprocess
    import sys as _sys

    from conftest import ROOT

    port = free_port()
    proc = subprocess.Popen([_sys.executable, "-m", "costeer", "serve-cloud", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        worker = threading.Thread(target=_post, args=(url + "/v1/completions",
                                                      {"prompt": [[17] * 8000] * 2, "max_tokens": 1}), daemon=True)
        worker.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)  # it used to keep computing for minutes
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_unwritable_audit_log_is_refused_at_start():
    r = run_cli(["-m", "costeer", "serve-cloud", "--audit-log", "/nonexistent/x.jsonl"])
    assert r.returncode == 2 and "--audit-log: cannot write /nonexistent/x.jsonl" in r.stderr
    assert "Traceback" not in r.stderr


def test_llama_cpp_pythons_server_is_refused_saying_why(faulty, lm):
    _Faulty.mode = "llama-cpp-python"
    with pytest.raises(CloudError, match="llama-cpp-python's server.*no token-id prompts.*llama-server or vLLM"):
        remote_cloud(faulty, lm).connect()


def test_http_errors_name_the_path(faulty, lm):
    _Faulty.mode = "llama-cpp-python"  # 404 everywhere but /extras/tokenize
    with pytest.raises(CloudError, match="POST /v1/completions was refused: HTTP 404"):
        remote_cloud(faulty, lm).next_logprobs([[1, 2]])


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _post_big(url: str, path: str, body: dict) -> tuple[int, dict]:
    """POST as a client that keeps sending while the server may already have refused: the reply
    is read whatever happened to the rest of the body."""
    import http.client

    data = json.dumps(body).encode()
    host, port = url.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    try:
        for i in range(0, len(data), 1 << 16):
            conn.send(data[i:i + (1 << 16)])
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before the body was read: what is being tested
    r = conn.getresponse()
    out = r.status, json.loads(r.read())
    conn.close()
    return out


@pytest.mark.slow
def test_huge_bodies_are_refused_before_any_work_and_health_keeps_answering(tmp_path):
    """Issue 23: a 20 MB text prompt froze /health for 25 s and kept ~2 GB; a 5 MB /tokenize took
    6.8 s; refused bodies were written to the audit log in full; logprobs over the vocabulary
    gave a 500 with a traceback; a half-sent body was held 50 s+."""
    import socket

    audit = tmp_path / "audit.jsonl"
    with running_cloud(audit, "--max-logprobs", "100000", process=True) as (url, proc):
        _post(url + "/v1/completions", {"prompt": "warm up", "max_tokens": 1})
        before = _rss_mb(proc.pid)
        health = []

        def probe():
            while len(health) < 1000 and not done.is_set():
                t = time.perf_counter()
                with urllib.request.urlopen(url + "/health", timeout=30) as r:
                    assert r.status == 200
                health.append(time.perf_counter() - t)
                time.sleep(0.05)

        done = threading.Event()
        prober = threading.Thread(target=probe)
        prober.start()
        try:
            for path, body, words in (
                    ("/v1/completions", {"prompt": "word " * 4_000_000, "max_tokens": 1}, "the limit is"),
                    ("/tokenize", {"prompt": "x" * 5_000_000}, "the limit is"),
                    ("/v1/completions", {"prompt": "y" * 200_000, "max_tokens": 1}, "checked before tokenizing"),
                    ("/tokenize", {"content": "z" * 200_000}, "checked before tokenizing"),
                    ("/v1/completions", {"prompt": [1, 2], "max_tokens": 1, "logprobs": 60000},
                     "logprobs must be an integer in [0, 49152]")):
                t = time.perf_counter()
                status, out = _post_big(url, path, body)
                took = time.perf_counter() - t
                assert status in (400, 413) and words in out["detail"], (path, status, out)
                assert took < 2.0, (path, took)
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30) as s:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"prompt\": ")  # and then nothing
                t = time.perf_counter()
                reply = b""
                while chunk := s.recv(4096):  # the server closes after its answer
                    reply += chunk
                reply = reply.decode()
                assert " 408 " in reply.split("\r\n")[0] and "not received within" in reply
                assert time.perf_counter() - t < 15
        finally:
            done.set()
            prober.join()
        assert max(health) < 1.0, max(health)
        assert _rss_mb(proc.pid) - before < 200, (before, _rss_mb(proc.pid))
        assert audit.stat().st_size < 20_000  # refused bodies are summarized, never written
        assert [json.loads(line).get("refused", "")[:30] for line in open(audit)][-3:] != ["", "", ""]
