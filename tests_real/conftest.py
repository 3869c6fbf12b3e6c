"""The real-server suite: vLLM and llama.cpp's llama-server, started by the tests on free loopback
ports (VLLM_PYTHON and LLAMA_SERVER name them; scripts/test_real_servers.sh installs both)."""
import json
import os
import sys
import threading
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from apprunner import free_port, running_command  # noqa: E402
FIGURES = ROOT / "artifacts" / "real_servers.json"


def record_figure(name: str, value):
    """Measured figures go to artifacts/real_servers.json; the script prints them after the run."""
    FIGURES.parent.mkdir(exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[name] = value
    FIGURES.write_text(json.dumps(data, indent=1))


def _binary(var: str) -> str:
    path = os.environ.get(var)
    if not path or not Path(path).exists():
        pytest.fail(f"{var} is not set to an installed server; run this suite with scripts/test_real_servers.sh")
    return path


@contextmanager
def vllm(model_folder: Path, tmp: Path):
    port = free_port()
    cmd = [_binary("VLLM_PYTHON"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_folder),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "4096",
           "--max-logprobs", "20"]
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    url = f"http://127.0.0.1:{port}"
    with running_command(cmd, url + "/v1/models", tmp / f"vllm-{model_folder.name}.log", 900, env):
        yield url


@contextmanager
def llama_server(gguf: Path, tmp: Path):
    port = free_port()
    cmd = [_binary("LLAMA_SERVER"), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", "8192",
           "-np", "4", "-t", "2", "--no-webui"]
    url = f"http://127.0.0.1:{port}"
    with running_command(cmd, url + "/health", tmp / "llama-server.log", 300):
        yield url


class RecordingProxy:
    """A loopback HTTP proxy in front of a real server: records every request it forwards, and can
    answer 404 for a path or hand back a reshaped response (faults a real server won't make)."""

    def __init__(self, target: str):
        self.target, self.records = target, []
        self.missing: set[str] = set()
        self.reshape = None  # callable(path, json) -> json
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _forward(self, method):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))) if method == "POST" else None
                proxy.records.append({"path": self.path, "body": json.loads(body) if body else {}})
                if self.path in proxy.missing:
                    return self._send(404, b'{"error": "Not Found"}')
                req = urllib.request.Request(proxy.target + self.path, data=body, method=method,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=300) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as err:
                    status, data = err.code, err.read()
                if proxy.reshape and status == 200:
                    data = json.dumps(proxy.reshape(self.path, json.loads(data))).encode()
                self._send(status, data)

            def _send(self, status, data):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def lm():
    from costeer.models.load import load_model

    return load_model()
