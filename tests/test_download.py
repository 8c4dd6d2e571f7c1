"""Downloads against a local HTTP server (no internet): Range resume after a dropped connection, checksum and size
checks, HTTP errors naming the URL, pinning a file that has no published checksum."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.download import DownloadError, fetch, fetch_pinned, part_path, pinned_sha256

PAYLOAD = bytes(range(256)) * 4000  # 1,024,000 bytes


class Server:
    """Serves ``files`` with Range support; ``drop_after[name] = n`` closes the first response after n bytes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.honour_range = True
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
                if name not in outer.files:
                    self.send_error(404, "Not Found")
                    return
                data, start = outer.files[name], 0
                ranged = self.headers.get("Range") if outer.honour_range else None
                if ranged:
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                cut = outer.drop_after.pop(name, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    served = Server()
    served.files["train2014.zip"] = PAYLOAD
    yield served
    served.httpd.shutdown()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_dropped_connection_resumes_with_a_range_request_for_the_rest(server, tmp_path):
    server.drop_after["train2014.zip"] = 300_000
    target = tmp_path / "train2014.zip"
    digest = fetch(f"{server.url}/train2014.zip", target, size=len(PAYLOAD), sha256=sha(PAYLOAD), backoff=0.01,
                   progress=False)
    assert digest == sha(PAYLOAD) and target.read_bytes() == PAYLOAD and not part_path(target).exists()
    (first, no_range), (second, ranged) = server.requests
    assert first == second == "train2014.zip" and no_range is None
    resumed_at = int(ranged.removeprefix("bytes=").rstrip("-"))
    assert 200_000 < resumed_at <= 300_000  # only the remaining bytes were asked for (less the chunk in flight)
    # a second run downloads nothing: the file there is verified
    assert fetch(f"{server.url}/train2014.zip", target, size=len(PAYLOAD), sha256=sha(PAYLOAD)) == digest
    assert len(server.requests) == 2


def test_a_server_that_ignores_range_restarts_the_transfer(server, tmp_path):
    server.honour_range = False
    target = tmp_path / "train2014.zip"
    part_path(target).write_bytes(PAYLOAD[:1000])  # left by an earlier run
    fetch(f"{server.url}/train2014.zip", target, size=len(PAYLOAD), sha256=sha(PAYLOAD), progress=False)
    assert target.read_bytes() == PAYLOAD


def test_a_checksum_mismatch_names_both_digests_and_leaves_nothing_complete(server, tmp_path):
    target = tmp_path / "train2014.zip"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as raised:
        fetch(f"{server.url}/train2014.zip", target, size=len(PAYLOAD), sha256=wrong, progress=False)
    message = str(raised.value)
    assert wrong in message and sha(PAYLOAD) in message and "train2014.zip" in message
    assert not target.exists() and not part_path(target).exists()


def test_http_404_names_the_url_and_how_to_place_the_file_by_hand(server, tmp_path):
    target = tmp_path / "val2014.zip"
    with pytest.raises(DownloadError) as raised:
        fetch(f"{server.url}/val2014.zip", target, progress=False)
    assert f"{server.url}/val2014.zip" in str(raised.value) and "404" in str(raised.value)
    assert "by hand" in str(raised.value) and str(target) in str(raised.value)
    assert len(server.requests) == 1  # not retried
    # placed by hand, the same call verifies and accepts it
    target.write_bytes(PAYLOAD)
    assert fetch(f"{server.url}/val2014.zip", target, sha256=sha(PAYLOAD)) == sha(PAYLOAD)


def test_no_network_is_one_error_after_the_retries(tmp_path):
    with pytest.raises(DownloadError, match="no connection after 2 attempts"):
        fetch("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", retries=1, backoff=0.01, timeout=2, progress=False)


def test_a_disk_too_small_is_refused_before_the_transfer(server, tmp_path):
    with pytest.raises(DownloadError, match="free"):
        fetch(f"{server.url}/train2014.zip", tmp_path / "train2014.zip", size=len(PAYLOAD),
              extra_space=10 ** 18, progress=False)
    assert server.requests == []


def test_a_file_without_a_published_checksum_is_pinned_then_verified(server, tmp_path):
    url, lock = f"{server.url}/train2014.zip", tmp_path / "downloads.lock.json"
    fetch_pinned(url, tmp_path / "a.pth", lock, progress=False)
    assert pinned_sha256(lock, url) == sha(PAYLOAD)
    server.files["train2014.zip"] = PAYLOAD[::-1]  # the file behind the URL changed
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch_pinned(url, tmp_path / "b.pth", lock, progress=False)


def test_the_download_command_fails_with_one_error_line_naming_the_url(server, tmp_path):
    import subprocess
    import sys

    url = f"{server.url}/missing.zip"
    result = subprocess.run([sys.executable, "-m", "captioner", "download", "--url", url, "--out",
                             str(tmp_path / "missing.zip")], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "404" in errors[0]
    ok = subprocess.run([sys.executable, "-m", "captioner", "download", "--url", f"{server.url}/train2014.zip",
                         "--out", str(tmp_path / "t.zip"), "--sha256", sha(PAYLOAD)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "t.zip").read_bytes() == PAYLOAD


def zip_with_images(path, folders: dict[str, int]):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for folder, count in folders.items():
            for i in range(count):
                archive.writestr(f"{folder}/COCO_{folder}_{i:012d}.jpg", b"\xff\xd8" + bytes(100) + b"\xff\xd9")
        archive.writestr("dataset_coco.json", '{"images": []}')
    return path


def test_unpack_is_atomic_checks_counts_and_refuses_a_truncated_zip(tmp_path):
    from pipeline.download import unpack_zip

    archive = zip_with_images(tmp_path / "images.zip", {"train2014": 3, "val2014": 2})
    # an interrupted earlier unpack left a hidden folder: it is redone, never mistaken for the result
    (tmp_path / ".coco.unpacking/train2014").mkdir(parents=True)
    counts = unpack_zip(archive, tmp_path / "coco", {"train2014": 3, "val2014": 2})
    assert counts["train2014"] == 3 and (tmp_path / "coco/val2014").is_dir()
    assert not (tmp_path / ".coco.unpacking").exists()

    with pytest.raises(DownloadError, match=r"train2014/ has 3 files, expected 82,783"):
        unpack_zip(archive, tmp_path / "other", {"train2014": 82783})
    assert not (tmp_path / "other").exists() and not (tmp_path / ".other.unpacking").exists()

    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DownloadError, match="not a complete zip"):
        unpack_zip(truncated, tmp_path / "third")
    assert not (tmp_path / "third").exists()

    only = unpack_zip(archive, tmp_path / "karpathy", members=["dataset_coco.json"])
    assert only == {"dataset_coco.json": 1}


def test_a_damaged_member_fails_the_unpack_and_leaves_nothing(tmp_path):
    from pipeline.download import unpack_zip

    archive = zip_with_images(tmp_path / "images.zip", {"train2014": 2})
    data = bytearray(archive.read_bytes())
    data[90:94] = b"XXXX"  # past the 71-byte local header: the first member's data, whose CRC-32 no longer matches
    archive.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="cannot be unpacked"):
        unpack_zip(archive, tmp_path / "coco")
    assert not (tmp_path / "coco").exists() and not (tmp_path / ".coco.unpacking").exists()
