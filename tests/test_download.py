"""Downloads against a local HTTP server (no internet): Range resume after a dropped connection, checksum and size
checks, HTTP errors naming the URL, pinning a file that has no published checksum."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.download import DownloadError, fetch, fetch_pinned, part_path, pinned_sha256
from tests.http_server import Server

PAYLOAD = bytes(range(256)) * 4000  # 1,024,000 bytes


@pytest.fixture
def server():
    served = Server()
    served.files["train2014.zip"] = PAYLOAD
    yield served
    served.close()


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


def test_a_transfer_an_earlier_run_left_is_resumed_from_its_length(server, tmp_path):
    target = tmp_path / "train2014.zip"
    part_path(target).write_bytes(PAYLOAD[:123_456])  # the run was killed (or gave up) after these bytes
    fetch(f"{server.url}/train2014.zip", target, size=len(PAYLOAD), sha256=sha(PAYLOAD), progress=False)
    assert target.read_bytes() == PAYLOAD and server.requested("train2014.zip") == ["bytes=123456-"]


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
    with pytest.raises(DownloadError, match="failed after 2 attempts"):
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


def test_unpack_of_one_top_level_entry_renames_it_into_place(tmp_path):
    from pipeline.download import unpack_zip

    archive = zip_with_images(tmp_path / "train2014.zip", {"train2014": 3, "val2014": 1})
    counts = unpack_zip(archive, tmp_path / "coco/train2014", {"train2014": 3}, top="train2014")
    assert counts == {"train2014": 3}  # only the entry's members were unpacked
    assert sorted(p.name for p in (tmp_path / "coco/train2014").iterdir()) == [
        f"COCO_train2014_{i:012d}.jpg" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "coco").iterdir()) == ["train2014"]  # no staging left
    assert unpack_zip(archive, tmp_path / "coco/train2014", top="train2014") == {"train2014": 3}  # a rerun: kept
    unpack_zip(archive, tmp_path / "coco/dataset_coco.json", top="dataset_coco.json")
    assert (tmp_path / "coco/dataset_coco.json").read_text() == '{"images": []}'
    with pytest.raises(DownloadError, match="has no top-level test2014"):
        unpack_zip(archive, tmp_path / "coco/test2014", top="test2014")
    assert not (tmp_path / "coco/test2014").exists()


def test_the_unpack_command_names_a_wrong_count_in_one_error_line(tmp_path):
    import subprocess
    import sys

    archive = zip_with_images(tmp_path / "val2014.zip", {"val2014": 2})
    result = subprocess.run([sys.executable, "-m", "captioner", "unpack", "--zip", str(archive), "--entry", "val2014",
                             "--out", str(tmp_path / "val2014"), "--expect-files", "40504"],
                            capture_output=True, text=True)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "val2014/ has 2 files, expected 40,504" in errors[0]
    assert not (tmp_path / "val2014").exists()


def test_many_files_are_fetched_with_bounded_concurrency_and_a_list_of_failures(server, tmp_path):
    from pipeline.download import fetch_many

    for i in range(12):
        server.files[f"val/{i:04d}.jpg"] = bytes([i]) * 5000
    server.delay = 0.05
    items = [(f"{server.url}/val/{i:04d}.jpg", tmp_path / f"{i:04d}.jpg") for i in range(12)]
    items.insert(3, (f"{server.url}/val/gone.jpg", tmp_path / "gone.jpg"))
    failures = fetch_many(items, workers=3, retries=1, backoff=0.01, progress=False)
    assert failures == [(f"{server.url}/val/gone.jpg", failures[0][1])] and "404" in failures[0][1]
    assert all((tmp_path / f"{i:04d}.jpg").read_bytes() == bytes([i]) * 5000 for i in range(12))
    assert 1 < server.max_active <= 3
    assert server.requested("val/gone.jpg") == [None]  # a 404 is not retried
    assert not (tmp_path / "gone.jpg").exists()


def test_torch_hub_style_weights_are_checked_by_the_digest_prefix_in_their_name(server, tmp_path):
    from pipeline.hub_download import fetch_hub_file

    prefix = sha(PAYLOAD)[:8]
    server.files[f"tiny-{prefix}.pth"] = PAYLOAD
    server.files["tiny-00000000.pth"] = PAYLOAD
    target = tmp_path / "weights/tiny.pth"
    assert fetch_hub_file(f"{server.url}/tiny-{prefix}.pth", target, progress=False) == sha(PAYLOAD)
    assert target.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="checksum mismatch") as raised:
        fetch_hub_file(f"{server.url}/tiny-00000000.pth", tmp_path / "bad.pth", progress=False)
    assert sha(PAYLOAD) in str(raised.value) and not (tmp_path / "bad.pth").exists()
    assert list(tmp_path.glob("*.partial")) == []  # torch.hub's temporary file is gone too
    with pytest.raises(DownloadError, match="HTTP 404.*by hand"):
        fetch_hub_file(f"{server.url}/missing-{prefix}.pth", tmp_path / "missing.pth", progress=False)
    # a file placed by hand gets the same check
    (tmp_path / "placed.pth").write_bytes(PAYLOAD[::-1])
    with pytest.raises(DownloadError, match=f"starting {prefix}"):
        fetch_hub_file(f"{server.url}/tiny-{prefix}.pth", tmp_path / "placed.pth", progress=False)
