"""Downloads against a real HTTP server on 127.0.0.1, and safe tar extraction."""

import gzip
import hashlib
import http.server
import io
import os
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from lottery_ticket.data import datasets, download_file, ensure_cifar10, extract_tar, load_dataset
from lottery_ticket.errors import LotteryError


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """Serves `routes[path] = (status, body, mode)`; mode "truncate" promises more bytes than it
    sends and drops the connection. Counts requests per path."""

    def __init__(self):
        self.routes = {}
        self.hits = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                status, body, mode = server.routes.get(self.path, (404, b"not found", "normal"))
                self.send_response(status)
                length = len(body) + (1000 if mode == "truncate" else 0)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)
                if mode == "truncate":
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{prefix}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


FAST = {"retries": 2, "backoff": 0.01, "timeout": 5.0}
PAYLOAD = idx_gz(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))


def test_download_verifies_and_reports_progress(server, tmp_path, capsys):
    server.routes["/a/file.gz"] = (200, PAYLOAD, "normal")
    path = download_file("file.gz", tmp_path / "d", [server.url("a")], sha256(PAYLOAD), **FAST)
    assert path == tmp_path / "d" / "file.gz"
    assert path.read_bytes() == PAYLOAD
    assert sorted(os.listdir(tmp_path / "d")) == ["file.gz"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "downloading http://127.0.0.1" in err


def test_quiet_prints_nothing(server, tmp_path, capsys):
    server.routes["/a/file.gz"] = (200, PAYLOAD, "normal")
    download_file("file.gz", tmp_path, [server.url("a")], sha256(PAYLOAD), quiet=True, **FAST)
    assert capsys.readouterr().err == ""


def test_first_mirror_404_second_works(server, tmp_path):
    server.routes["/good/file.gz"] = (200, PAYLOAD, "normal")
    mirrors = [server.url("missing"), server.url("good")]
    path = download_file("file.gz", tmp_path, mirrors, sha256(PAYLOAD), quiet=True, **FAST)
    assert path.read_bytes() == PAYLOAD
    assert server.hits["/missing/file.gz"] == 1  # a 404 is not retried


def test_checksum_mismatch_names_every_mirror_and_leaves_nothing(server, tmp_path):
    server.routes["/a/file.gz"] = (200, b"corrupted bytes", "normal")
    server.routes["/b/file.gz"] = (200, PAYLOAD + b"x", "normal")
    mirrors = [server.url("a"), server.url("b")]
    with pytest.raises(LotteryError) as info:
        download_file("file.gz", tmp_path, mirrors, sha256(PAYLOAD), quiet=True, **FAST)
    message = str(info.value)
    assert mirrors[0] + "file.gz" in message and mirrors[1] + "file.gz" in message
    assert message.count("sha256 mismatch") == 2
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file left behind
    assert server.hits["/a/file.gz"] == 1  # a wrong checksum is not retried on the same mirror


def test_md5_is_checked_too(server, tmp_path):
    server.routes["/a/file.gz"] = (200, PAYLOAD, "normal")
    with pytest.raises(LotteryError, match="md5 mismatch"):
        download_file(
            "file.gz",
            tmp_path,
            [server.url("a")],
            sha256(PAYLOAD),
            md5="0" * 32,
            quiet=True,
            **FAST,
        )
    assert list(tmp_path.iterdir()) == []
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    download_file("file.gz", tmp_path, [server.url("a")], sha256(PAYLOAD), md5=md5, quiet=True)


def test_dropped_connection_is_retried_then_fails_without_partial_file(server, tmp_path):
    server.routes["/a/file.gz"] = (200, PAYLOAD, "truncate")
    server.routes["/b/file.gz"] = (500, b"oops", "normal")
    mirrors = [server.url("a"), server.url("b")]
    with pytest.raises(LotteryError, match="connection closed after") as info:
        download_file("file.gz", tmp_path, mirrors, sha256(PAYLOAD), quiet=True, **FAST)
    assert "HTTP 500" in str(info.value)
    assert server.hits["/a/file.gz"] == 2 and server.hits["/b/file.gz"] == 2  # retried
    assert list(tmp_path.iterdir()) == []


def test_unreachable_mirror_then_working_one(server, tmp_path):
    server.routes["/a/file.gz"] = (200, PAYLOAD, "normal")
    dead = "http://127.0.0.1:9/"  # discard port: connection refused
    path = download_file(
        "file.gz", tmp_path, [dead, server.url("a")], sha256(PAYLOAD), quiet=True, **FAST
    )
    assert path.is_file()


def test_existing_file_is_not_replaced_by_a_failed_download(server, tmp_path):
    (tmp_path / "file.gz").write_bytes(b"user data")
    server.routes["/a/file.gz"] = (200, b"bad", "normal")
    with pytest.raises(LotteryError):
        download_file("file.gz", tmp_path, [server.url("a")], sha256(PAYLOAD), quiet=True, **FAST)
    assert (tmp_path / "file.gz").read_bytes() == b"user data"


def test_no_mirrors(tmp_path):
    with pytest.raises(LotteryError, match="no mirrors"):
        download_file("file.gz", tmp_path, [], "0" * 64)


# --- load_dataset's lookup and download path -------------------------------------------------


def test_missing_files_without_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    for name, hint in (
        ("mnist", "train-images"),
        ("fashion_mnist", "train-images"),
        ("cifar10", "cifar-10-batches-py"),
    ):
        with pytest.raises(LotteryError, match=hint) as info:
            load_dataset(name, tmp_path, download=False)
        assert "downloads are disabled" in str(info.value)


def test_corrupted_local_file_asks_to_delete_it(tmp_path):
    directory = tmp_path / "mnist"
    directory.mkdir()
    for spec in datasets.MNIST_FILES.values():
        (directory / spec.name).write_bytes(idx_gz(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(LotteryError, match="delete the file") as info:
        load_dataset("mnist", tmp_path, download=False)
    assert "train-images-idx3-ubyte.gz" in str(info.value)


def real_mnist_dir() -> Path:
    root = os.environ.get("LTH_DATA") or "/work/shared/data"
    directory = Path(root) / "mnist"
    if not (directory / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST files not found under {directory} (set LTH_DATA)")
    return directory


def test_mnist_end_to_end_from_a_local_mirror(server, tmp_path):
    """The real files served locally: download, verify, read, split (no internet needed)."""
    source = real_mnist_dir()
    for spec in datasets.MNIST_FILES.values():
        server.routes[f"/m/{spec.name}"] = (200, (source / spec.name).read_bytes(), "normal")
    server.routes.pop("/m/t10k-labels-idx1-ubyte.gz")
    server.routes["/n/t10k-labels-idx1-ubyte.gz"] = (
        200,
        (source / "t10k-labels-idx1-ubyte.gz").read_bytes(),
        "normal",
    )
    splits = load_dataset("mnist", tmp_path, mirrors=[server.url("m"), server.url("n")], quiet=True)
    assert splits.train_x.shape == (55000, 1, 28, 28)
    assert splits.test_y[:3].tolist() == [7, 2, 1]
    files = sorted(p.name for p in (tmp_path / "mnist").iterdir())
    assert files == sorted(spec.name for spec in datasets.MNIST_FILES.values())


# --- CIFAR-10 archive handling and safe extraction -------------------------------------------


def make_tar(members) -> bytes:
    """members: list of (TarInfo, bytes or None)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def test_extract_tar_writes_regular_files(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    folder = tarfile.TarInfo("top")
    folder.type = tarfile.DIRTYPE
    archive.write_bytes(make_tar([(folder, None), (tarfile.TarInfo("top/a.bin"), b"abc")]))
    written = extract_tar(archive, tmp_path / "out")
    assert written == [tmp_path / "out" / "top" / "a.bin"]
    assert written[0].read_bytes() == b"abc"


@pytest.mark.parametrize("name", ["/etc/evil", "../evil", "top/../../evil", "top\\..\\evil"])
def test_extract_tar_refuses_unsafe_names(tmp_path, name):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(make_tar([(tarfile.TarInfo(name), b"x")]))
    with pytest.raises(LotteryError, match="unsafe member name"):
        extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE])
def test_extract_tar_refuses_links_and_devices(tmp_path, kind):
    link = tarfile.TarInfo("top/link")
    link.type = kind
    link.linkname = "/etc/passwd"
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(make_tar([(link, None)]))
    with pytest.raises(LotteryError, match="not a regular file"):
        extract_tar(archive, tmp_path / "out")


def test_extract_tar_reports_a_corrupt_archive(tmp_path):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(make_tar([(tarfile.TarInfo("a"), b"x" * 5000)])[:40])
    with pytest.raises(LotteryError, match="cannot extract"):
        extract_tar(archive, tmp_path / "out")


def fake_cifar_archive() -> bytes:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    return make_tar([(tarfile.TarInfo(f"cifar-10-batches-py/{n}"), n.encode()) for n in names])


def test_cifar_download_extracts_atomically(server, tmp_path, monkeypatch):
    blob = fake_cifar_archive()
    fake = datasets.ArchiveFile(
        "cifar-10-python.tar.gz", sha256(blob), hashlib.md5(blob).hexdigest()
    )
    monkeypatch.setattr(datasets, "CIFAR10_ARCHIVE", fake)
    server.routes["/c/cifar-10-python.tar.gz"] = (200, blob, "normal")
    directory = ensure_cifar10(tmp_path, mirrors=[server.url("c")], quiet=True)
    assert directory == tmp_path / "cifar10" / "cifar-10-batches-py"
    assert (directory / "test_batch").read_bytes() == b"test_batch"
    # the downloaded archive and the staging directory are gone
    assert sorted(p.name for p in (tmp_path / "cifar10").iterdir()) == ["cifar-10-batches-py"]
    assert ensure_cifar10(tmp_path, download=False) == directory  # found locally now


def test_cifar_local_archive_with_wrong_checksum_is_refused(tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(fake_cifar_archive())
    with pytest.raises(LotteryError, match="delete it"):
        ensure_cifar10(tmp_path, download=False)


def test_cifar_incomplete_directory_is_refused(tmp_path):
    directory = tmp_path / "cifar10" / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    (directory / "data_batch_1").write_bytes(b"x")
    with pytest.raises(LotteryError, match="incomplete .*data_batch_2"):
        ensure_cifar10(tmp_path)
