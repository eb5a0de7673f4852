"""Fixtures of the download tests: a local mirror on 127.0.0.1 (``serve``) and an empty data root (``cache``)."""

from __future__ import annotations

import threading
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from local_mirror import CountingHandler, Mirror


@pytest.fixture
def serve(request):
    """Start a threaded HTTP server on 127.0.0.1 (free port) serving ``folder``; shut down after the test."""

    def start(folder: Path, handler=CountingHandler) -> Mirror:
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
        server.requests = []
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()

        def stop():
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        request.addfinalizer(stop)
        return Mirror(f"http://127.0.0.1:{server.server_address[1]}", server.requests)

    return start


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty data root, set as TRICKLAB_DATA; no proxy may intercept requests to 127.0.0.1."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("TRICKLAB_DATA", str(root))
    return root
