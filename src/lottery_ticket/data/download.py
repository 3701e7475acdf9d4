"""Downloads with checksum verification, and safe tar extraction.

A file is streamed to a temporary file in the destination directory, hashed while it is written,
and renamed into place only once its SHA-256 (and MD5, where given) matches: an interrupted or
corrupted download never leaves a file under the final name. Mirrors are tried in order; network
errors and HTTP 5xx are retried a few times with exponential backoff, while a 4xx or a checksum
mismatch moves on to the next mirror at once (that mirror will not get better by asking again).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from lottery_ticket.errors import LotteryError

USER_AGENT = "lottery_ticket-data/0.1 (python urllib)"
CHUNK_SIZE = 1 << 20


class _TryNextMirror(Exception):
    """This mirror cannot give the right file (HTTP 4xx, wrong checksum): do not retry it."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    filename: str,
    directory: str | Path,
    mirrors: Sequence[str],
    sha256: str,
    *,
    md5: str | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Fetch `<mirror>/<filename>` into `directory/filename`, trying each mirror in order.

    Raises LotteryError naming every URL tried and why it failed.
    """
    if not mirrors:
        raise LotteryError(f"cannot download {filename}: no mirrors configured")
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LotteryError(f"cannot create data directory {directory}: {error}") from None
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        reason = "not tried"
        for attempt in range(max(1, retries)):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            if not quiet:
                retry = f" (retry {attempt})" if attempt else ""
                print(
                    f"downloading {url} -> {directory / filename}{retry}",
                    file=sys.stderr,
                    flush=True,
                )
            try:
                _fetch(url, directory, filename, sha256, md5, timeout)
                return directory / filename
            except _TryNextMirror as error:
                reason = str(error)
                break
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                reason = _describe(error)  # network trouble or HTTP 5xx: worth retrying
        failures.append(f"{url}: {reason}")
    raise LotteryError(f"could not download {filename}; tried " + "; ".join(failures))


def _fetch(url: str, directory: Path, filename: str, sha256: str, md5: str | None, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
            try:
                sha = hashlib.sha256()
                md5_digest = hashlib.md5(usedforsecurity=False) if md5 else None
                received = 0
                with os.fdopen(fd, "wb") as out:
                    while chunk := response.read(CHUNK_SIZE):
                        received += len(chunk)
                        sha.update(chunk)
                        if md5_digest is not None:
                            md5_digest.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                # urllib returns a short body silently when the connection drops: check the length
                # so a cut transfer is retried rather than reported as a checksum mismatch.
                expected = response.headers.get("Content-Length", "")
                if expected.isdigit() and received != int(expected):
                    raise ConnectionError(f"connection closed after {received} of {expected} bytes")
                if sha.hexdigest() != sha256:
                    raise _TryNextMirror(
                        f"sha256 mismatch (got {sha.hexdigest()}, expected {sha256})"
                    )
                if md5_digest is not None and md5_digest.hexdigest() != md5:
                    raise _TryNextMirror(
                        f"md5 mismatch (got {md5_digest.hexdigest()}, expected {md5})"
                    )
                os.replace(temp_name, directory / filename)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp_name)
                raise
    except urllib.error.HTTPError as error:
        if error.code < 500:
            raise _TryNextMirror(f"HTTP {error.code} {error.reason}") from None
        raise


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"{error.reason}"
    return f"{type(error).__name__}: {error}"


def extract_tar(archive: str | Path, destination: str | Path) -> list[Path]:
    """Extract the regular files and directories of a .tar(.gz) under `destination`.

    Refuses absolute names, '..' components, links, devices and anything else that could write
    outside `destination` or create something other than plain files (the archive may come from a
    mirror we do not control). Returns the extracted files.
    """
    archive, destination = Path(archive), Path(destination)
    written = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if (
                    member.name.startswith(("/", "\\"))
                    or ".." in parts
                    or any("\\" in part or ":" in part for part in parts)
                    or not parts
                ):
                    raise LotteryError(f"{archive}: refusing unsafe member name {member.name!r}")
                if member.isdir():
                    destination.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise LotteryError(
                        f"{archive}: refusing member {member.name!r} (not a regular file or directory)"
                    )
                target = destination.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK_SIZE)
                written.append(target)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise LotteryError(f"{archive}: cannot extract ({error}); delete it and retry") from None
    return written
