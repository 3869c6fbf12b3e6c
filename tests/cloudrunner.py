"""Start `python -m costeer serve-cloud` as a separate process on a free port; always stop it."""
import tempfile
from contextlib import contextmanager

from apprunner import free_port, running_process


@contextmanager
def running_cloud(audit_log=None, *extra, timeout=180, process=False):
    """Yields the URL (and, with `process`, the Popen too)."""
    port = free_port()
    args = ["-m", "costeer", "serve-cloud", "--port", str(port), *extra]
    if audit_log:
        args += ["--audit-log", str(audit_log)]
    log = f"{audit_log}.server.log" if audit_log else tempfile.mktemp(suffix=".cloud.log")
    url = f"http://127.0.0.1:{port}"
    with running_process(args, url + "/health", log, timeout) as proc:
        yield (url, proc) if process else url


def remote_cloud(url, lm, **kw):
    """A RemoteCloud at `url` that shares the bundled model's tokenizer (the device's)."""
    from costeer.engine.cloud import RemoteCloud

    return RemoteCloud(url, lm.tokenizer, lm.vocab_size, lm.eos_ids, **kw)


def remote_engine(url, lm, **kw):
    from costeer.engine.decoding import CoSteerEngine
    from costeer.engine.device import DeviceLM

    return CoSteerEngine(remote_cloud(url, lm, **kw).connect(), DeviceLM(lm))
