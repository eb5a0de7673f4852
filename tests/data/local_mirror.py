"""A local HTTP mirror on 127.0.0.1 for the download tests (MNIST, CIFAR-10): files served from a folder, every
request counted, and a URL nothing listens on. The fixtures ``serve`` and ``cache`` are in conftest.py."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler
from pathlib import Path


class CountingHandler(SimpleHTTPRequestHandler):
    """Serves files from its folder and records every requested path on ``server.requests``."""

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep pytest output clean
        pass


class DroppingHandler(CountingHandler):
    """Promises the whole file, sends half of it, then hangs up (a connection lost mid-transfer)."""

    def do_GET(self):
        self.server.requests.append(self.path)
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True


@dataclass
class Mirror:
    url: str
    requests: list[str]


def dead_url() -> str:
    """A URL on a port nothing listens on (bound, then closed): connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
