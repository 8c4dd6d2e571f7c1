"""The downloader against servers that misbehave as real mirrors, proxies and CDNs do (a local HTTP server): a 206
from the wrong offset, gzip with a dropped connection, a stale partial file larger than the remote file, a corrupt
deflate stream in a zip, transient 429/5xx answers. In each case nothing corrupt or partial reaches the target
name, and the command line either succeeds or prints one ``error:`` line."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import time
import zipfile
from email.utils import formatdate
from pathlib import Path

import pytest

from pipeline.download import DownloadError, fetch, fetch_pinned, part_path, pinned_sha256, unpack_zip
from tests.faults.helpers import clean_error
from tests.http_server import Server

# incompressible, so that gzip changes the byte count but not much the length (drops land inside the stream)
PAYLOAD = random.Random(29).randbytes(600_000)
NAME = "detector.pth"
FAST = dict(backoff=0.01, progress=False)


@pytest.fixture
def server():
    served = Server()
    served.files[NAME] = PAYLOAD
    yield served
    served.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_command(url: str, out: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner", "download", "--url", url, "--out", str(out), *options],
                          capture_output=True, text=True, timeout=120)


# 1. a 206 whose Content-Range does not start where the Range asked


@pytest.mark.parametrize("served_from", [0, 50_000, 250_000])
def test_a_206_from_the_wrong_offset_is_not_appended(server, tmp_path, served_from):
    """A partial file of 100,000 bytes; the proxy answers the resume with bytes from ``served_from`` (0: some proxies
    always serve from the start). No size, no checksum: nothing but the Content-Range check can catch it."""
    server.range_from[NAME] = served_from
    target = tmp_path / NAME
    part_path(target).write_bytes(PAYLOAD[:100_000])
    lock = tmp_path / "lock.json"
    fetch_pinned(f"{server.url}/{NAME}", target, lock, **FAST)
    assert target.read_bytes() == PAYLOAD and not part_path(target).exists()
    assert pinned_sha256(lock, f"{server.url}/{NAME}") == sha(PAYLOAD)  # the right file was pinned
    assert server.requested(NAME)[-1] is None  # the attempt after the mismatch fetched the whole file


def test_a_206_from_the_wrong_offset_with_a_known_size_starts_over_at_once(server, tmp_path):
    server.range_from[NAME] = 0
    target = tmp_path / NAME
    part_path(target).write_bytes(PAYLOAD[:100_000])
    assert fetch(f"{server.url}/{NAME}", target, size=len(PAYLOAD), sha256=sha(PAYLOAD), **FAST) == sha(PAYLOAD)
    assert server.requested(NAME) == ["bytes=100000-", None]  # not a whole wrong transfer before the check


# 2. Content-Encoding with a dropped connection


def test_identity_encoding_is_asked_so_a_gzip_server_resumes_in_file_bytes(server, tmp_path):
    server.gzip.add(NAME)  # gzip for clients that accept it (requests does by default)
    server.drop_after[NAME] = 200_000
    target = tmp_path / NAME
    fetch(f"{server.url}/{NAME}", target, **FAST)
    assert target.read_bytes() == PAYLOAD
    assert all(headers.get("Accept-Encoding") == "identity" for headers in server.headers)
    no_range, ranged = server.requested(NAME)
    assert no_range is None and 200_000 - 65_536 <= int(ranged[6:-1]) <= 200_000  # resumed (less the chunk in flight)


def test_a_server_that_gzips_anyway_restarts_after_a_drop_instead_of_resuming(server, tmp_path):
    server.force_gzip.add(NAME)
    server.drop_after[NAME] = 200_000  # bytes of the gzip stream: the partial file holds decoded ones
    target = tmp_path / NAME
    fetch(f"{server.url}/{NAME}", target, **FAST)
    assert target.read_bytes() == PAYLOAD and server.requested(NAME) == [None, None]


def test_a_partial_file_an_earlier_run_left_is_not_continued_with_an_encoded_range(server, tmp_path):
    server.force_gzip.add(NAME)
    target = tmp_path / NAME
    part_path(target).write_bytes(PAYLOAD[:150_000])  # decoded bytes of an earlier, dropped transfer
    fetch(f"{server.url}/{NAME}", target, **FAST)
    assert target.read_bytes() == PAYLOAD and server.requested(NAME) == ["bytes=150000-", None]


def test_an_undecodable_body_is_one_error_line_and_leaves_no_partial_file(server, tmp_path):
    server.corrupt_gzip.add(NAME)
    target = tmp_path / NAME
    result = download_command(f"{server.url}/{NAME}", target, "--retries", "1")
    clean_error(result, f"{server.url}/{NAME}", "failed after 2 attempts")
    assert not target.exists() and not part_path(target).exists()  # the rerun starts clean
    server.corrupt_gzip.clear()
    assert download_command(f"{server.url}/{NAME}", target).returncode == 0 and target.read_bytes() == PAYLOAD


# 3. a stale partial file larger than the remote file


def test_a_stale_partial_file_larger_than_the_remote_file_is_not_taken_as_complete(server, tmp_path):
    target = tmp_path / NAME
    part_path(target).write_bytes(PAYLOAD + b"an older, longer file of the same name")
    fetch(f"{server.url}/{NAME}", target, **FAST)  # no size or checksum: only the 416's length tells
    assert target.read_bytes() == PAYLOAD
    assert server.requested(NAME) == [f"bytes={len(PAYLOAD) + 38}-", None]


def test_a_partial_file_as_long_as_the_remote_file_is_complete(server, tmp_path):
    target = tmp_path / NAME
    part_path(target).write_bytes(PAYLOAD)  # the earlier run died between the last byte and the rename
    fetch(f"{server.url}/{NAME}", target, **FAST)
    assert target.read_bytes() == PAYLOAD and server.requested(NAME) == [f"bytes={len(PAYLOAD)}-"]


def test_a_partial_file_longer_than_the_expected_size_is_dropped_without_asking(server, tmp_path):
    target = tmp_path / NAME
    part_path(target).write_bytes(PAYLOAD + b"stale")
    fetch(f"{server.url}/{NAME}", target, size=len(PAYLOAD), **FAST)
    assert target.read_bytes() == PAYLOAD and server.requested(NAME) == [None]


def test_a_remote_file_of_another_size_fails_before_its_transfer(server, tmp_path):
    target = tmp_path / NAME
    with pytest.raises(DownloadError, match=f"a file of {len(PAYLOAD):,} bytes, expected {len(PAYLOAD) + 1:,}"):
        fetch(f"{server.url}/{NAME}", target, size=len(PAYLOAD) + 1, **FAST)
    assert not target.exists() and not part_path(target).exists()


# 4. a zip whose deflate stream is corrupt (not truncated)


def corrupt_deflate_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("val2014/a.jpg", b"picture " * 5000)
        archive.writestr("val2014/b.jpg", b"another " * 5000)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("val2014/b.jpg")
    # local header: 30 bytes, then the name and the extra field, then the deflate stream
    name_length = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    stream = info.header_offset + 30 + name_length + extra_length
    data[stream] = 0b111  # final block of the reserved type 3: "invalid block type"
    path.write_bytes(bytes(data))
    return path


def test_a_corrupt_deflate_stream_is_one_error_and_nothing_half_unpacked_stays(tmp_path):
    archive = corrupt_deflate_zip(tmp_path / "val2014.zip")
    with pytest.raises(DownloadError, match="cannot be unpacked .*error"):
        unpack_zip(archive, tmp_path / "coco/val2014", top="val2014")
    assert sorted(p.name for p in (tmp_path / "coco").iterdir()) == []  # no staging folder, no target
    result = subprocess.run([sys.executable, "-m", "captioner", "unpack", "--zip", str(archive), "--entry", "val2014",
                             "--out", str(tmp_path / "coco/val2014")], capture_output=True, text=True, timeout=120)
    clean_error(result, str(archive), "delete it")
    assert list((tmp_path / "coco").iterdir()) == []


# 5. transient server errors: retried with back-off, after the server's Retry-After


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_errors_are_retried(server, tmp_path, status):
    server.fail_next[NAME] = [(status, {}), (status, {})]
    fetch(f"{server.url}/{NAME}", tmp_path / NAME, **FAST)
    assert (tmp_path / NAME).read_bytes() == PAYLOAD and len(server.requested(NAME)) == 3


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured(server, tmp_path, form):
    retry_after = "2" if form == "seconds" else formatdate(time.time() + 3, usegmt=True)  # whole seconds: 2-3 s
    server.fail_next[NAME] = [(503, {"Retry-After": retry_after})]
    started = time.monotonic()
    fetch(f"{server.url}/{NAME}", tmp_path / NAME, **FAST)
    assert time.monotonic() - started >= 1.9 and (tmp_path / NAME).read_bytes() == PAYLOAD


def test_a_retry_after_longer_than_the_wait_limit_fails_at_once(server, tmp_path):
    server.fail_next[NAME] = [(503, {"Retry-After": "86400"})]
    with pytest.raises(DownloadError, match="retry in 86400 s"):
        fetch(f"{server.url}/{NAME}", tmp_path / NAME, **FAST)
    assert len(server.requested(NAME)) == 1 and not (tmp_path / NAME).exists()


def test_a_server_that_keeps_failing_is_one_error_line_after_the_retries(server, tmp_path):
    server.fail_next[NAME] = [(503, {"Retry-After": "0"})] * 10
    result = download_command(f"{server.url}/{NAME}", tmp_path / NAME, "--retries", "1")
    clean_error(result, f"{server.url}/{NAME}", "503", "failed after 2 attempts", "by hand")
    assert len(server.requested(NAME)) == 2 and not (tmp_path / NAME).exists()


def test_torch_hub_weights_retry_transient_errors_too(server, tmp_path):
    from pipeline.hub_download import fetch_hub_file

    name = f"tiny-{sha(PAYLOAD)[:8]}.pth"
    server.files[name] = PAYLOAD
    server.fail_next[name] = [(503, {"Retry-After": "0"}), (429, {})]
    assert fetch_hub_file(f"{server.url}/{name}", tmp_path / "tiny.pth", backoff=0.01, progress=False) == sha(PAYLOAD)
    assert len(server.requested(name)) == 3


# every case through the command line: it succeeds with the right bytes, or fails cleanly with nothing in place


@pytest.mark.parametrize("case", ["wrong-206", "gzip-drop", "forced-gzip-drop", "stale-larger", "flaky-503"])
def test_the_download_command_ends_with_the_file_or_one_error_line(server, tmp_path, case):
    target = tmp_path / NAME
    if case == "wrong-206":
        server.range_from[NAME] = 0
        part_path(target).write_bytes(PAYLOAD[:100_000])
    elif case in ("gzip-drop", "forced-gzip-drop"):
        (server.gzip if case == "gzip-drop" else server.force_gzip).add(NAME)
        server.drop_after[NAME] = 200_000
    elif case == "stale-larger":
        part_path(target).write_bytes(PAYLOAD * 2)
    else:
        server.fail_next[NAME] = [(503, {"Retry-After": "1"})]
    result = download_command(f"{server.url}/{NAME}", target, "--lock", str(tmp_path / "lock.json"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert target.read_bytes() == PAYLOAD and not part_path(target).exists()
