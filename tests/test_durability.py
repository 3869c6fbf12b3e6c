"""Durability: acknowledged writes survive SIGKILL; two processes writing at once lose nothing."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

from conftest import ROOT
from user_store import UserStore

WRITER = """
import sys
sys.path.insert(0, {root!r})
from user_store import UserStore
s = UserStore({db!r})
s.add_user({user!r})
for i in range({n}):
    eid = s.add_entry({user!r}, "entry %d from {user}" % i)
    print(eid, flush=True)  # acknowledged: the call returned
"""


def _writer(db, user, n):
    code = WRITER.format(root=str(ROOT), db=str(db), user=user, n=n)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_acknowledged_writes_survive_sigkill(tmp_path):
    db = tmp_path / "kill.db"
    UserStore(db).close()
    proc = _writer(db, "victim", 100_000)
    acked = []
    deadline = time.time() + 60
    while len(acked) < 150 and time.time() < deadline:
        acked.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(acked) >= 150
    conn = sqlite3.connect(str(db))
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    present = {r[0] for r in conn.execute("SELECT id FROM entries")}
    assert set(acked) <= present
    conn.close()
    s = UserStore(db)  # reopens cleanly, search index intact
    assert len(s.search("victim", "entry", k=5)) == 5


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    db = tmp_path / "two.db"
    UserStore(db).close()
    procs = [_writer(db, f"user{i}", 200) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    s = UserStore(db)
    for i, out in enumerate(outs):
        ids = [int(x) for x in out.split()]
        assert len(ids) == 200
        assert sorted(e["id"] for e in s.entries(f"user{i}")) == sorted(ids)
