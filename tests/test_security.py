"""Privacy and security posture, tested against the real app server."""
import os
import socket
import stat
import urllib.error
import urllib.request

import pytest

from apprunner import free_port, running_app
from conftest import ROOT, run_cli
from costeer.models.load import cache_dir
from ui.security import bind_refusal, is_loopback
from user_store import StoreError, UserStore


def _get(url, host=None, method="GET", data=None, headers=None):
    req = urllib.request.Request(url, method=method, data=data, headers=dict(headers or {}))
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def app():
    """The database where a real user's lives: under the app's working directory (./data)."""
    import shutil
    import uuid

    folder = ROOT / "data" / f"test-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    db = folder / "costeer.db"
    UserStore(db).add_user("ana")
    try:
        with running_app(db) as url:
            yield url, db
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_suite_blocks_egress_except_loopback(request):
    """pytest-socket is configured in pytest.ini: sockets may only reach loopback."""
    allowed = request.config.getoption("allow_hosts")
    allowed = set(allowed if isinstance(allowed, list) else str(allowed).split(","))
    assert allowed and all(is_loopback(h) for h in allowed)  # 127.0.0.2: the raters' server's alias in tests
    import pytest_socket

    assert socket.socket.connect is not pytest_socket._true_connect


@pytest.mark.slow
def test_database_is_not_served_by_the_file_route(app):
    url, db = app
    for path in (db.resolve(), db.resolve().parent / "costeer.db-wal", db.relative_to(ROOT)):
        status, body = _get(f"{url}gradio_api/file={path}")
        assert status in (403, 404) and not body.startswith(b"SQLite format 3")



def test_monitoring_endpoint_is_off(app):
    status, _ = _get(f"{app[0]}gradio_api/monitoring")
    assert status in (403, 404)


def test_spoofed_host_header_gets_403(app):
    url = app[0]
    port = url.rsplit(":", 1)[1].strip("/")
    assert _get(url, host="evil.example")[0] == 403
    assert _get(url, host=f"attacker.test:{port}")[0] == 403
    assert _get(f"{url}gradio_api/info", host="rebind.example")[0] == 403
    for ok in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert _get(url, host=ok)[0] == 200


def test_upload_over_the_cap_is_refused(app):
    boundary = "costeerboundary"
    payload = b"x" * (6 * 1024 * 1024)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.json\"\r\n"
            "Content-Type: application/json\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    status, text = _get(f"{app[0]}gradio_api/upload", method="POST", data=body,
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 413 and b"5" in text


def test_import_over_the_cap_is_refused_by_the_store(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b"[" + b" " * 5_100_000 + b"]")
    store = UserStore(tmp_path / "c.db")
    with pytest.raises(StoreError, match="big.json is 5.1 MB; the limit is 5 MB"):
        store.import_file(big, user="ana")
    assert store.users() == []


def test_gradio_temp_dir_is_private(app):
    tmp = cache_dir() / "gradio-tmp"
    assert tmp.is_dir() and stat.S_IMODE(tmp.stat().st_mode) == 0o700


def test_non_loopback_bind_without_auth_refuses_to_start(tmp_path):
    r = run_cli(["app.py", "--host", "0.0.0.0", "--port", str(free_port()), "--db", str(tmp_path / "c.db")])
    assert r.returncode == 2
    assert "refusing to bind 0.0.0.0 without --auth" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "c.db").exists()  # refused before touching anything


@pytest.mark.slow
def test_non_loopback_bind_with_insecure_flag_starts(tmp_path):
    with running_app(tmp_path / "c.db", "--host", "0.0.0.0", "--insecure-no-auth") as url:
        assert _get(url)[0] == 200


@pytest.mark.slow
def test_auth_protects_the_app(tmp_path):
    with running_app(tmp_path / "c.db", "--auth", "demo:s3cret") as url:
        status, _ = _get(f"{url}gradio_api/info")
        assert status in (401, 403)
        status, body = _get(f"{url}login", method="POST", data=b"username=demo&password=wrong",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status in (400, 401)
        status, _ = _get(f"{url}login", method="POST", data=b"username=demo&password=s3cret",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200


def test_bind_rules_and_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert bind_refusal("127.0.0.1", None, False) is None
    assert bind_refusal("0.0.0.0", "u:p", False) is None
    assert bind_refusal("0.0.0.0", None, True) is None
    assert "--auth" in bind_refusal("0.0.0.0", None, False)


def test_cli_and_app_switch_the_hub_off(tmp_path):
    code = ("import os, sys; sys.argv=['x']; from costeer.models.load import set_offline; set_offline(False); "
            "print(os.environ['HF_HUB_OFFLINE'], os.environ['HF_HUB_DISABLE_TELEMETRY'], os.environ['GRADIO_ANALYTICS_ENABLED'])")
    env_clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "GRADIO_ANALYTICS_ENABLED")}
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env_clean)
    assert out.stdout.split() == ["1", "1", "False"]
    r = run_cli(["-m", "costeer", "generate", "--prompt", "hi", "--cloud-model", "Qwen/Qwen2.5-0.5B-Instruct"],
                env=env_clean | {"PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and "--allow-downloads" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_strangers_get_bounded_work_from_the_raters_page_and_the_login(tmp_path):
    """Issue 23: without any token, the raters' page took 50 uploads (110 MB), held 3,000 unread
    queue joins (+210 MB), answered an unknown fn_index with a 500 and a traceback; the login took
    443 wrong passwords a second."""
    import json

    db = tmp_path / "c.db"
    with running_app(db, "--auth", "demo:s3cret", "--rater-joins", "40,5") as url:  # the default is 600,100
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.json\"\r\n"
                "Content-Type: application/json\r\n\r\n{}\r\n" f"--{boundary}--\r\n").encode()
        status, text = _get(f"{url}study/gradio_api/upload", method="POST", data=body,
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert status == 403 and b"no uploads" in text

        def join(fn_index):
            data = json.dumps({"data": [], "fn_index": fn_index, "session_hash": "s", "event_data": None,
                               "trigger_id": None}).encode()
            return _get(f"{url}study/gradio_api/queue/join", method="POST", data=data,
                        headers={"Content-Type": "application/json"})

        for bad in (10_000, -1, "0", None, 10**30):
            status, text = join(bad)
            assert status == 404 and b"no such function" in text, (bad, status, text[:200])
        statuses = [join(0)[0] for _ in range(150)]  # a real function of the page: its load
        assert statuses[:30] == [200] * 30 and statuses.count(429) >= 50, statuses  # the 5 above counted too

        login = []
        for _ in range(12):
            login.append(_get(f"{url}login", method="POST", data=b"username=demo&password=wrong",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})[0])
        assert login[:3] == [400, 400, 400] or login[:3] == [401, 401, 401], login
        assert login.count(429) >= 8, login  # after the free tries, each waits longer
    log = open(f"{db}.app.log", encoding="utf-8").read()
    assert "Traceback" not in log, log[-2000:]
