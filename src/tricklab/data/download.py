"""Find dataset files in the cache, or download them from mirrors, verified and written atomically.

Every file is checked before use: the SHA-256 of its decompressed content where it is published, else the
MD5 of the compressed file as its authors publish it. An archive read member by member (CIFAR-10's .tar.gz)
is kept compressed: its MD5 is checked and its bytes are returned as they are. A download goes to a
temporary file in the target folder, is verified, fsynced and only then renamed into place, so an
interrupted or corrupt download never leaves a file that looks valid.

Nothing is read without a bound, so a damaged or hostile file (a gzip bomb: 13 MB that inflate to 3 GB of
zeros) costs at most what a valid one would. A .gz is decompressed as a stream, hashed as it goes, and
stopped as soon as its content passes the size its format allows: the exact ``size`` of the spec when it is
known (the four MNIST files), else the exact size its header declares (``header_size``: an IDX header's
dimensions), never more than :data:`MAX_CONTENT`. A file in the cache or a download is read only up to the
size its content allows (compressed, a little more than the content; :data:`MAX_FILE` without a size).

Nor does a download take time without bound: besides each read's own timeout, a download slower than a minimum
rate (:class:`Pace`, ``$TRICKLAB_MIN_RATE``) is stopped, so a mirror that trickles a byte every few seconds is
given up (and the next one tried) instead of holding the command forever. A long download prints its progress
on stderr.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import http.client
import io
import os
import socket
import stat
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from tricklab.errors import DataError
from tricklab.outputs import atomic_write

ENV_DATA = "TRICKLAB_DATA"
ENV_MIRRORS = "TRICKLAB_MIRRORS"  # comma-separated base URLs, tried instead of the built-in mirrors
ENV_MIN_RATE = "TRICKLAB_MIN_RATE"  # bytes per second: the slowest download allowed (Pace.min_rate)
DEFAULT_ROOT = Path("~/.cache/tricklab")
TIMEOUT_S = 30
#: The most a .gz is ever decompressed to (when neither its spec nor its header gives the exact size).
MAX_CONTENT = 256 * 2**20
#: The largest file read or downloaded whose spec gives no size (CIFAR-10's archive is 163 MiB).
MAX_FILE = 512 * 2**20
CHUNK = 2**20


@dataclass(frozen=True)
class RemoteFile:
    """A gzip-compressed file and its check: ``sha256`` of its decompressed bytes, or ``md5`` of the .gz.

    With ``decompress=False`` the file is used as it is (an archive its reader opens): both checks are then
    of the file's own bytes. ``size``: the exact size of the content (decompressed) when it is known;
    ``header_size``: the exact size of the content given its first bytes (None while more bytes are needed,
    ValueError if they are not the format's header), e.g. :func:`tricklab.data.idx.idx_size`.
    """

    name: str
    sha256: str | None = None
    md5: str | None = None
    decompress: bool = True
    size: int | None = None
    header_size: Callable[[bytes], int | None] | None = None

    def content_limit(self) -> int:
        """The most bytes the (decompressed) content may have."""
        return self.size if self.size is not None else MAX_CONTENT if self.decompress else MAX_FILE

    def file_limit(self) -> int:
        """The most bytes the file itself may have: the content's limit, plus deflate's worst-case overhead
        (5 bytes per 64 KiB stored block) and room for the gzip header when it is compressed."""
        limit = self.content_limit()
        return limit + limit // 8192 + 2**16 if self.decompress else limit


def data_root(configured: str | os.PathLike | None = None) -> Path:
    """The cache root: ``data.dir`` if set, else env ``TRICKLAB_DATA``, else ``~/.cache/tricklab``."""
    root = configured or os.environ.get(ENV_DATA) or DEFAULT_ROOT
    return Path(root).expanduser().resolve()


def mirrors_for(default: tuple[str, ...]) -> list[str]:
    env = os.environ.get(ENV_MIRRORS, "").strip()
    return [m.strip() for m in env.split(",") if m.strip()] if env else list(default)


def check_file(raw: bytes, spec: RemoteFile, where: str) -> bytes:
    """Decompress ``raw`` (unless ``spec.decompress`` is false) and verify it against ``spec``; return the
    content or raise DataError. The content is decompressed as a stream, hashed as it goes, and refused as
    soon as it passes the size ``spec`` allows (:meth:`RemoteFile.content_limit`, ``spec.header_size``)."""
    if len(raw) > spec.file_limit():
        raise DataError(f"{where} is corrupt: {len(raw)} bytes, more than the {spec.file_limit()} bytes it can have")
    if spec.md5 is not None:
        got = hashlib.md5(raw).hexdigest()
        if got != spec.md5:
            raise DataError(f"{where} is corrupt: md5 {got} != expected {spec.md5}")
    if not spec.decompress:
        data = raw
        digest = hashlib.sha256(data).hexdigest() if spec.sha256 is not None else None
    else:
        data, digest = _inflate(raw, spec, where)
    size = "" if spec.size is None or len(data) == spec.size else f" ({len(data)} bytes, expected {spec.size})"
    if spec.sha256 is not None and digest != spec.sha256:
        raise DataError(
            f"{where} is corrupt: sha256 of its content {digest[:16]}… != expected {spec.sha256[:16]}…{size}"
        )
    if size:
        what = "it decompresses to" if spec.decompress else "it has"
        raise DataError(f"{where} is corrupt: {what} {len(data)} bytes, expected {spec.size}")
    return data


def _inflate(raw: bytes, spec: RemoteFile, where: str) -> tuple[bytes, str]:
    """The decompressed content of gzip ``raw`` and its sha256, read in chunks and stopped at the size allowed."""
    limit = spec.content_limit()
    chunks: list[bytes] = []
    got = 0
    sha = hashlib.sha256()
    header_checked = spec.header_size is None
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb") as f:
            while chunk := f.read(min(CHUNK, limit + 1 - got)):
                chunks.append(chunk)
                got += len(chunk)
                sha.update(chunk)
                if not header_checked:
                    declared = spec.header_size(b"".join(chunks) if len(chunks) > 1 else chunk)
                    if declared is not None:
                        header_checked = True
                        if declared > limit:
                            raise DataError(
                                f"{where} is corrupt: its header declares {declared} bytes of content, more than "
                                f"the {limit} allowed"
                            )
                        limit = declared
                if got > limit:
                    raise DataError(f"{where} is corrupt: it decompresses to more than the {limit} bytes allowed")
                if got == limit and f.read(1):
                    raise DataError(f"{where} is corrupt: it decompresses to more than the {limit} bytes allowed")
                if got == limit:
                    break
    except (OSError, EOFError, zlib.error) as e:  # bad header / CRC, truncated, corrupt deflate stream
        raise DataError(f"{where} is corrupt: not a valid gzip file ({e})") from None
    except ValueError as e:  # header_size: not the format's header
        raise DataError(f"{where} is corrupt: {e}") from None
    if not header_checked:
        raise DataError(f"{where} is corrupt: its content ({got} bytes) is too short for its header")
    return b"".join(chunks), sha.hexdigest()


@dataclass(frozen=True)
class Pace:
    """How slow a download may be. Once it has run ``grace_s`` seconds, a download whose bytes over the last
    ``window_s`` seconds average less than ``min_rate`` bytes per second is stopped (waiting for the headers counts
    as receiving nothing). So a download of N bytes ends, done or stopped, within about ``grace_s + window_s +
    N / min_rate`` seconds whatever the mirror does. A download still going after ``progress_s`` seconds prints a
    progress line on stderr, then one every ``progress_s`` seconds.

    The default rate, 8 KiB/s, lets MNIST's largest file (9.9 MB) take 20 minutes; ``$TRICKLAB_MIN_RATE``
    (bytes per second) sets another.
    """

    min_rate: float = 8 * 2**10
    window_s: float = 30.0
    grace_s: float = 30.0
    progress_s: float = 10.0


#: The pace every download keeps unless told otherwise.
PACE = Pace()


def default_pace() -> Pace:
    """:data:`PACE`, with ``min_rate`` from ``$TRICKLAB_MIN_RATE`` when it is set."""
    raw = os.environ.get(ENV_MIN_RATE, "").strip()
    if not raw:
        return PACE
    try:
        rate = float(raw)
    except ValueError:
        rate = float("nan")
    if not 0 < rate < float("inf"):
        raise DataError(f"${ENV_MIN_RATE} = {raw[:40]!r}: must be a positive number of bytes per second")
    return replace(PACE, min_rate=rate)


def _size(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n:.0f} B"


class _Watch:
    """One download, watched from a thread: its bytes counted, its progress printed, and, when it is slower than
    its :class:`Pace`, its connection shut down, so that the read blocked on it returns at once (a read's own
    timeout never fires on a mirror that sends a byte every few seconds).

    The connection is reached through a duplicate of its socket's descriptor, taken as it connects
    (:meth:`connect`): shutting that down ends the connection whatever wraps it (TLS), and closing it never
    closes a descriptor the download still uses.
    """

    def __init__(self, url: str, pace: Pace, stream: TextIO):
        self.url, self.pace, self.stream = url, pace, stream
        self.start = time.monotonic()
        self.received = 0
        self.expected: int | None = None
        self.stopped: str | None = None  # why it was stopped: the rule, with the figures
        self._samples = collections.deque([(self.start, 0)])  # (time, bytes received by then)
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._next_progress = self.start + pace.progress_s
        self._thread = threading.Thread(target=self._run, name="tricklab-download-watch", daemon=True)
        self._thread.start()

    def connect(self, address, timeout, source_address=None) -> socket.socket:
        """``socket.create_connection``, keeping a duplicate of the new socket to shut down when it is too slow."""
        sock = socket.create_connection(address, timeout, source_address)
        dup = socket.socket(fileno=os.dup(sock.fileno()))
        with self._lock:
            self._sockets.append(dup)
            if self.stopped:
                _shut(dup)
        return sock

    def add(self, n: int) -> None:
        with self._lock:
            self.received += n

    def finish(self) -> None:
        """Stop watching (before the connection is closed) and let go of the duplicates."""
        self._done.set()
        self._thread.join()
        with self._lock:
            for dup in self._sockets:
                dup.close()
            self._sockets.clear()

    def _run(self) -> None:
        pace = self.pace
        tick = max(0.01, min(0.5, pace.window_s / 4, pace.progress_s / 2))
        while not self._done.wait(tick):
            now = time.monotonic()
            with self._lock:
                received = self.received
                samples = self._samples
                samples.append((now, received))
                while len(samples) > 2 and samples[1][0] <= now - pace.window_s:
                    samples.popleft()  # keep the newest sample at least window_s old
                since, then = samples[0]
                span = now - since
                if now - self.start >= pace.grace_s and span > 0 and (received - then) / span < pace.min_rate:
                    self.stopped = (
                        f"too slow: {received} bytes received in {now - self.start:.0f} s, "
                        f"{(received - then) / span:.0f} bytes/s over the last {span:.0f} s, under the minimum of "
                        f"{pace.min_rate:g} bytes/s (${ENV_MIN_RATE})"
                    )
                    for dup in self._sockets:
                        _shut(dup)
                    return
            if now >= self._next_progress:
                self._next_progress = now + pace.progress_s
                self._progress(now, received, (received - then) / span if span > 0 else 0.0)

    def _progress(self, now: float, received: int, rate: float) -> None:
        expected = self.expected
        of = f" of {_size(expected)} ({received / expected:.0%})" if expected else ""
        eta = f", eta {(expected - received) / rate:.0f} s" if expected and rate > 0 else ""
        line = f"downloading {self.url}: {_size(received)}{of}, {_size(rate)}/s, {now - self.start:.0f} s{eta}"
        try:
            print(line, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stderr: the download goes on without it
            pass


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by the other side
        pass


class _WatchedOpen:
    """A urllib handler whose connections connect through :meth:`_Watch.connect` (redirects and proxies too)."""

    def __init__(self, watch: _Watch):
        super().__init__()
        self.watch = watch

    def do_open(self, http_class, req, **kwargs):
        def connection(*args, **kw):
            conn = http_class(*args, **kw)
            conn._create_connection = self.watch.connect  # how http.client opens its socket
            return conn

        return super().do_open(connection, req, **kwargs)


class _WatchedHTTP(_WatchedOpen, urllib.request.HTTPHandler):
    pass


class _WatchedHTTPS(_WatchedOpen, urllib.request.HTTPSHandler):
    pass


def _download(url: str, limit: int, pace: Pace | None = None, stream: TextIO | None = None) -> bytes:
    """The body at ``url``; ValueError once it passes ``limit`` bytes (read in chunks, never more), TimeoutError
    (saying the rule and the bytes received) once it is slower than ``pace`` (:func:`default_pace`)."""
    watch = _Watch(url, pace or default_pace(), stream or sys.stderr)
    opener = urllib.request.build_opener(_WatchedHTTP(watch), _WatchedHTTPS(watch))
    req = urllib.request.Request(url, headers={"User-Agent": "tricklab"})
    try:
        with opener.open(req, timeout=TIMEOUT_S) as r:
            length = r.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise ValueError(f"{length} bytes, more than the {limit} bytes it can have")
            watch.expected = int(length) if length is not None and length.isdigit() else None
            body = bytearray()
            while chunk := r.read1(min(CHUNK, limit + 1 - len(body))):  # what has come, not a wait for CHUNK bytes
                body += chunk
                watch.add(len(chunk))
                if len(body) > limit:
                    raise ValueError(f"more than the {limit} bytes it can have")
            missing = getattr(r, "length", None)
            if missing:  # the connection ended before the Content-Length it promised
                raise http.client.IncompleteRead(bytes(body), missing)
            watch.finish()
    except (OSError, http.client.HTTPException, ValueError):
        watch.finish()
        if watch.stopped:  # what failed is the connection it shut down: say why it did
            raise TimeoutError(watch.stopped) from None
        raise
    finally:
        watch.finish()
    if watch.stopped:
        raise TimeoutError(watch.stopped)
    return bytes(body)


def _read_cached(path: Path, limit: int) -> bytes:
    """The bytes of cached file ``path``; DataError if it is not a regular file or longer than ``limit``."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))  # a pipe: no wait
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path} is not a regular file")
        raw = f.read(min(st.st_size, limit) + 1)  # not a buffer of `limit` bytes for a small file
    if len(raw) > limit:
        raise DataError(f"{path} is corrupt: {st.st_size} bytes, more than the {limit} bytes it can have")
    return raw


def fetch(folder: Path, spec: RemoteFile, mirrors: list[str], dataset: str) -> bytes:
    """The verified (decompressed) content of ``spec``: from ``folder`` if there, else downloaded into it."""
    path = folder / spec.name
    if path.exists():
        try:
            raw = _read_cached(path, spec.file_limit())
        except DataError as e:
            raise DataError(f"{dataset}: {e}; delete it to download it again") from None
        except OSError as e:
            raise DataError(f"{dataset}: cannot read {path}: {e.strerror or e}") from None
        try:
            return check_file(raw, spec, str(path))
        except DataError as e:  # never replace a cached file behind the user's back: it may be theirs
            raise DataError(f"{dataset}: {e}; delete it to download it again") from None
    tried: list[str] = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + spec.name
        try:
            raw = _download(url, spec.file_limit())
            data = check_file(raw, spec, url)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError, DataError) as e:
            reason = getattr(e, "reason", None) or e
            tried.append(f"{url} ({reason})")
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, raw)
        except OSError as e:
            raise DataError(f"{dataset}: downloaded {spec.name} but cannot write it to {folder}: {e}") from None
        return data
    raise DataError(
        f"{dataset}: {spec.name} is not in {folder} and could not be downloaded "
        f"(tried {'; '.join(tried) or 'no mirrors'}). Put the files in {folder}, or point data.dir or "
        f"${ENV_DATA} at a folder holding {folder.name}/"
    )
