"""Find dataset files in the cache, or download them from mirrors, verified and written atomically.

Every file is checked before use: the SHA-256 of its decompressed content where it is published, else the
MD5 of the compressed file as its authors publish it. An archive read member by member (CIFAR-10's .tar.gz)
is kept compressed: its MD5 is checked and its bytes are returned as they are. A download goes to a
temporary file in the target folder, is verified, fsynced and only then renamed into place, so an
interrupted or corrupt download never leaves a file that looks valid.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from tricklab.errors import DataError

ENV_DATA = "TRICKLAB_DATA"
ENV_MIRRORS = "TRICKLAB_MIRRORS"  # comma-separated base URLs, tried instead of the built-in mirrors
DEFAULT_ROOT = Path("~/.cache/tricklab")
TIMEOUT_S = 30


@dataclass(frozen=True)
class RemoteFile:
    """A gzip-compressed file and its check: ``sha256`` of its decompressed bytes, or ``md5`` of the .gz.

    With ``decompress=False`` the file is used as it is (an archive its reader opens): both checks are then
    of the file's own bytes.
    """

    name: str
    sha256: str | None = None
    md5: str | None = None
    decompress: bool = True


def data_root(configured: str | os.PathLike | None = None) -> Path:
    """The cache root: ``data.dir`` if set, else env ``TRICKLAB_DATA``, else ``~/.cache/tricklab``."""
    root = configured or os.environ.get(ENV_DATA) or DEFAULT_ROOT
    return Path(root).expanduser().resolve()


def mirrors_for(default: tuple[str, ...]) -> list[str]:
    env = os.environ.get(ENV_MIRRORS, "").strip()
    return [m.strip() for m in env.split(",") if m.strip()] if env else list(default)


def check_file(raw: bytes, spec: RemoteFile, where: str) -> bytes:
    """Decompress ``raw`` (unless ``spec.decompress`` is false) and verify it against ``spec``; return the
    content or raise DataError."""
    if spec.md5 is not None:
        got = hashlib.md5(raw).hexdigest()
        if got != spec.md5:
            raise DataError(f"{where} is corrupt: md5 {got} != expected {spec.md5}")
    if not spec.decompress:
        data = raw
    else:
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # bad header / CRC, truncated, corrupt deflate stream
            raise DataError(f"{where} is corrupt: not a valid gzip file ({e})") from None
    if spec.sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != spec.sha256:
            raise DataError(f"{where} is corrupt: sha256 of its content {got[:16]}… != expected {spec.sha256[:16]}…")
    return data


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder: fsync, then os.replace.

    The file gets the usual permissions (0666 less the umask), not the owner-only 0600 of ``mkstemp``, so a
    shared data cache or run directory stays readable by the people it is shared with.
    """
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _download(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "tricklab"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
        return r.read()


def fetch(folder: Path, spec: RemoteFile, mirrors: list[str], dataset: str) -> bytes:
    """The verified (decompressed) content of ``spec``: from ``folder`` if there, else downloaded into it."""
    path = folder / spec.name
    if path.exists():
        try:
            raw = path.read_bytes()
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
            raw = _download(url)
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
