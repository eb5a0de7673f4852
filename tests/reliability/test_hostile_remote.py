"""Hostile remotes: a mirror that trickles, a Ray address that accepts and never answers, ``ray://`` without Ray
Client, and a process of Ray's (an agent, the GCS) killed under a lab.

Every server here is a local one on 127.0.0.1 that stops by itself, and every threshold is made small, so each
test ends in seconds (the killed Ray processes: as long as a local Ray instance takes to start and to notice).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tricklab.cli.main import main
from tricklab.data import download
from tricklab.data.download import Pace, RemoteFile, default_pace, fetch
from tricklab.errors import DataError

REPO = Path(__file__).resolve().parents[2]
QUICK = Pace(min_rate=1000, window_s=0.5, grace_s=0.5, progress_s=0.2)  # stops a trickle within about a second
CONTENT = os.urandom(4000)  # incompressible: the .gz served is about as long
SPEC = RemoteFile("blob.gz", sha256=hashlib.sha256(CONTENT).hexdigest())
GZ = gzip.compress(CONTENT, mtime=0)


# --- local servers -------------------------------------------------------------------------------------------


class Paced(BaseHTTPRequestHandler):
    """Sends ``GZ`` in ``server.chunk``-byte pieces every ``server.interval`` s; with ``server.trickle_headers``,
    the headers themselves a byte at a time. Stops when the client goes, or after 20 s."""

    def do_GET(self):
        srv, end = self.server, time.monotonic() + 20
        srv.requests.append(self.path)
        try:
            if srv.trickle_headers:
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10**6:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(srv.interval)
                    if time.monotonic() > end:
                        return
            self.send_response(200)
            self.send_header("Content-Length", str(len(GZ)))
            self.end_headers()
            for i in range(0, len(GZ), srv.chunk):
                self.wfile.write(GZ[i : i + srv.chunk])
                self.wfile.flush()
                time.sleep(srv.interval)
                if time.monotonic() > end:
                    return
        except OSError:  # the client gave up and closed: what a slow mirror's client should do
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(request):
    """``start(chunk, interval, trickle_headers=False)`` → a paced server's base URL; every one is shut at the end."""

    def start(chunk: int, interval: float, trickle_headers: bool = False) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Paced)
        server.chunk, server.interval, server.trickle_headers, server.requests = chunk, interval, trickle_headers, []
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()

        def stop():
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        request.addfinalizer(stop)
        return f"http://127.0.0.1:{server.server_address[1]}"

    return start


@pytest.fixture
def quick(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", download.ENV_MIN_RATE):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(download, "PACE", QUICK)


def listener(answer: bool = False, close: bool = False) -> tuple[str, threading.Event]:
    """A TCP server on 127.0.0.1 that accepts connections and then never answers (or closes them at once); it stops
    when the returned event is set (or after 30 s)."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.05)
    stop, held = threading.Event(), []

    def serve():
        end = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            if close:
                conn.close()
            else:
                held.append(conn)
        for c in held:
            c.close()
        srv.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{srv.getsockname()[1]}", stop


# --- downloads -----------------------------------------------------------------------------------------------


def test_a_mirror_that_trickles_is_given_up_naming_the_url_the_bytes_and_the_rule(mirror, quick, tmp_path):
    slow = mirror(chunk=1, interval=0.05)  # 20 bytes/s, for ever
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        fetch(tmp_path / "cache", SPEC, [slow], "blobs")
    took = time.monotonic() - start
    msg = str(err.value)
    assert took < 5, f"gave up after {took:.1f} s"
    assert f"{slow}/blob.gz (too slow: " in msg and " bytes received in " in msg, msg
    assert "under the minimum of 1000 bytes/s" in msg and "TRICKLAB_MIN_RATE" in msg and "\n" not in msg
    received = int(msg.split("too slow: ")[1].split(" bytes")[0])
    assert 0 < received < 200
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing kept, no .part


def test_headers_trickled_a_byte_at_a_time_are_given_up_and_the_next_mirror_used(mirror, quick, tmp_path):
    slow, good = mirror(chunk=1, interval=0.05, trickle_headers=True), mirror(chunk=len(GZ), interval=0)
    start = time.monotonic()
    data = fetch(tmp_path / "cache", SPEC, [slow, good], "blobs")
    assert time.monotonic() - start < 5
    assert data == CONTENT and (tmp_path / "cache" / "blob.gz").read_bytes() == GZ


def test_a_slow_download_above_the_minimum_rate_completes_and_shows_its_progress(mirror, quick, tmp_path, capsys):
    slow = mirror(chunk=250, interval=0.05)  # about 5000 bytes/s: 4 KB take about 0.8 s
    data = fetch(tmp_path / "cache", SPEC, [slow], "blobs")
    assert data == CONTENT
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("downloading ")]
    assert len(lines) >= 2, lines
    assert all(line.startswith(f"downloading {slow}/blob.gz: ") and " of 3.9 KiB (" in line for line in lines)


def test_the_minimum_rate_comes_from_the_environment_and_a_bad_one_is_refused(monkeypatch):
    monkeypatch.setenv("TRICKLAB_MIN_RATE", "512")
    assert default_pace().min_rate == 512 and default_pace().window_s == Pace().window_s
    for bad in ("0", "-3", "fast", "inf", "nan"):
        monkeypatch.setenv("TRICKLAB_MIN_RATE", bad)
        with pytest.raises(DataError, match=r"\$TRICKLAB_MIN_RATE = .*: must be a positive number of bytes per sec"):
            default_pace()


# --- Ray addresses -------------------------------------------------------------------------------------------

STUDY = """
name: tiny
dataset: synthetic
base: {model: {depth: 1, width: 16}, data: {batch_size: 64}, train: {epochs: %(epochs)d}, schedule: {name: constant}}
baseline: plain
variants:
  plain: {}
  dropout: {model.dropout: 0.3}
seeds: 2
"""


def write_study(tmp_path: Path, epochs: int = 1) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(STUDY % {"epochs": epochs})
    return path


@pytest.mark.parametrize("scheme", ["", "ray://"])
@pytest.mark.parametrize("close", [False, True], ids=["silent", "closing"])
def test_a_ray_address_that_accepts_but_never_answers_is_refused_in_one_line(
    tmp_path, capsys, monkeypatch, scheme, close
):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'tricklab[ray]')")
    pytest.importorskip("grpc", reason="Ray Client is not installed (pip install 'tricklab[ray]')")
    from tricklab.lab import ray_executor

    monkeypatch.setattr(ray_executor, "ANSWER_TIMEOUT_S", 0.5)
    address, stop = listener(close=close)
    start = time.monotonic()
    try:
        code = main(["lab", "--config", str(write_study(tmp_path)), "--executor", "ray", "--address", scheme + address,
                     "-o", str(tmp_path / "lab")])  # fmt: skip
    finally:
        stop.set()
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 10
    assert len(err.strip().splitlines()) == 1, err
    how = "closes them without answering" if close else "does not answer within 0.5 s"
    assert err.startswith(f"error: --address = '{scheme}{address}': it accepts connections but {how}"), err
    assert not (tmp_path / "lab").exists()


def test_a_ray_address_without_ray_client_installed_names_the_extra(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'tricklab[ray]')")
    from tricklab.lab.ray_executor import EXTRA

    address, stop = listener()  # something listens: only the missing module can stop it
    monkeypatch.setitem(sys.modules, "grpc", None)  # as if grpcio were not installed
    try:
        code = main(["lab", "--config", str(write_study(tmp_path)), "--executor", "ray", "--address",
                     f"ray://{address}", "-o", str(tmp_path / "lab")])  # fmt: skip
    finally:
        stop.set()
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--address = 'ray://{address}': a ray:// address needs Ray Client (grpcio): {EXTRA}" in err


def test_the_ray_extra_installs_what_ray_client_needs_and_it_is_pinned():
    tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python 3.11's tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("ray", "dev"):
        assert any(d.startswith("ray[client]") for d in extras[extra]), extras[extra]
    pins = (REPO / "constraints.txt").read_text().splitlines()
    assert any(p.startswith("grpcio==") for p in pins)


# --- Ray's raylet killed under a lab -------------------------------------------------------------------------


def session_processes(sid: int) -> dict[int, str]:
    """The processes of session ``sid`` (pid → command line), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session
            found[int(entry.name)] = cmdline
    return found


def rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT variant, seed, status, error FROM runs ORDER BY variant, seed").fetchall()
    finally:
        con.close()


KILLED = {  # which of the local Ray instance's processes is killed → how the lab's error line starts
    "ray::DashboardAgent": "error: lab stopped: Ray's raylet on this machine died",  # the raylet follows its agent
    "gcs_server": "error: lab stopped: Ray's GCS at ",  # Ray's driver would wait 60 s, then exit 1 without a word
}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's processes in /proc")
@pytest.mark.parametrize("victim", list(KILLED))
def test_a_killed_ray_process_stops_the_lab_in_one_line_and_its_running_runs_go_back_to_pending(tmp_path, victim):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'tricklab[ray]')")
    out, db = tmp_path / "lab", tmp_path / "lab" / "results.sqlite"
    cmd = [sys.executable, "-m", "tricklab", "lab", "--config", str(write_study(tmp_path, epochs=300)), "--out",
           str(out), "--executor", "ray", "--workers", "2"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if db.exists() and any(r[2] == "running" for r in rows(db)):
                    break
            except sqlite3.OperationalError:  # the lab is still creating its tables
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"no run started in 120 s: {proc.stderr.read().decode()[-2000:]}")
        found = [pid for pid, cmdline in session_processes(proc.pid).items() if cmdline.startswith(victim)]
        found += [pid for pid, cmdline in session_processes(proc.pid).items() if f"/{victim} " in cmdline]
        assert len(found) == 1, session_processes(proc.pid)
        os.kill(found[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what Ray left of its instance, if anything
        except ProcessLookupError:
            pass
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2, lines[-5:]
    assert lines[-1].startswith(KILLED[victim]), lines[-5:]
    assert "running runs put back to pending; rerun the same command" in lines[-1]
    statuses = [r[2] for r in rows(db)]
    assert "running" not in statuses and "pending" in statuses, rows(db)
    lost = [r for r in rows(db) if r[3] and KILLED[victim].split(": ")[-1] in r[3]]
    assert lost and all(r[2] == "pending" for r in lost)
