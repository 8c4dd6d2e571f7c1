"""Resumable, verified downloads of multi-GB files (COCO zips, Karpathy's splits, detector weights).

Why not a library for the transfer itself: pooch and fsspec verify hashes but restart an interrupted transfer
from byte 0 (a 13.5 GB ``train2014.zip`` over a flaky link may never finish), and Snakemake's HTTP storage
plugin neither resumes nor checks a SHA-256. So the transfer is ``requests`` (streaming, HTTP Range) and the rest
is here: bytes go to a hidden ``.NAME.part`` beside the target; an interruption is resumed from its length with
``Range: bytes=N-`` (a server that ignores Range restarts it); failures are retried with exponential back-off; the
size and SHA-256 are checked before the file is renamed onto its final name, so a file there is always complete.

A file without a published checksum (the bottom-up detector weights) is pinned on first download in a lock file
(``{url: sha256}``) and verified against it afterwards.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import sys
import time
import zipfile
import zlib
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.digest import sha256_of
from pipeline.errors import InputError

NET_CHUNK = 1 << 16  # 64 KiB per network read: a dropped connection loses at most the chunk being read


class DownloadError(InputError):
    """A transfer failed, or what arrived is not the file expected."""


def part_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.part")


def by_hand(url: str, target: Path) -> str:
    return f"download it by hand (e.g. `curl -L -o {target} '{url}'`), place it at {target} and rerun"


def check_space(folder: Path, needed: int, url: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DownloadError(f"{url}: needs {needed / 1e9:.1f} GB free in {folder} (the download and what is unpacked "
                            f"from it), only {free / 1e9:.1f} GB are; free space or point the data folder elsewhere")


def verify(path: Path, url: str, size: int | None, sha256: str | None) -> str:
    """The file's SHA-256, after checking its size and digest against the expected ones (where given)."""
    if size is not None and path.stat().st_size != size:
        raise DownloadError(f"{url}: {path} has {path.stat().st_size:,} bytes, expected {size:,}")
    actual = sha256_of(path)
    if sha256 is not None and actual != sha256.lower():
        raise DownloadError(f"{url}: checksum mismatch for {path}: expected sha256 {sha256.lower()}, got {actual}")
    return actual


# answers a busy or briefly broken server gives (rate limit, 5xx from a proxy or CDN): retried like a dropped
# connection, after the server's Retry-After where it sends one
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 900.0  # seconds: a server asking for a longer wait fails the download now (rerun later)


class TransientError(ConnectionError):
    """An attempt that failed in a way the next one may not: retried with back-off. ``retry_after``: the least
    wait the server asked for (seconds), if it said."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds: delta-seconds, or an HTTP date (RFC 9110, 10.2.3); None if absent or
    unreadable."""
    from email.utils import parsedate_to_datetime

    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def retry_wait(url: str, attempt: int, backoff: float, retry_after: float | None) -> float:
    """The back-off before attempt ``attempt + 1``: exponential, or longer where the server asked for longer."""
    wait = backoff * 2 ** attempt
    if retry_after is not None:
        if retry_after > MAX_RETRY_AFTER:
            raise DownloadError(f"{url}: the server asks to retry in {retry_after:.0f} s (Retry-After), longer than "
                                f"the {MAX_RETRY_AFTER:.0f} s this waits; rerun later")
        wait = max(wait, retry_after)
    return wait


def content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total length) of a ``Content-Range`` header (``bytes 100-199/1000``, ``bytes */1000``);
    None where it does not say (a ``*`` total, or no header)."""
    if not header or not header.strip().lower().startswith("bytes "):
        return None, None
    span, _, total = header.strip()[6:].partition("/")
    start = span.split("-")[0].strip()
    return (int(start) if start.isdigit() else None), (int(total) if total.strip().isdigit() else None)


def _start_over(part: Path, reason: str) -> TransientError:
    """The partial file cannot be continued: delete it; the next attempt fetches the whole file."""
    part.unlink(missing_ok=True)
    return TransientError(f"{reason}; starting over")


def _transfer(url: str, part: Path, size: int | None, timeout: float, progress: bool) -> None:
    """One attempt: append the rest of ``url`` to ``part`` (from its current length).

    What a server answers is checked before a byte is appended: a ``206`` must start at the offset asked for (some
    proxies serve every range from 0), a ``416`` must say the file is as long as the partial one (else the partial
    file is stale, left by another file of that name), and a resumed transfer must not be content-encoded (a
    gzip-encoded range counts bytes of the encoding, not of the file). Otherwise the partial file is dropped and the
    attempt fails with :class:`TransientError`, so the next one starts from byte 0.
    """
    import requests
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        raise _start_over(part, f"the partial file {part} holds {have:,} bytes, more than the {size:,} expected")
    if size is not None and have == size:
        return  # complete already (the previous attempt died before the rename)
    # identity: the bytes of the file itself, the ones Range counts (requests asks for gzip by default)
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True) as response:
        status = response.status_code
        if status == 416 and have:  # nothing at or after byte `have`: complete, or a stale partial file
            _, total = content_range(response.headers.get("Content-Range"))
            if total == have:
                return
            raise _start_over(part, f"the server has {'an unknown number of' if total is None else f'{total:,}'} "
                                    f"bytes, the partial file {have:,}")
        if status in TRANSIENT_STATUS:
            raise TransientError(f"HTTP {status} {response.reason}",
                                 retry_after_seconds(response.headers.get("Retry-After")))
        response.raise_for_status()  # 403, 404, ...: an HTTPError, not retried
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        encoded = encoding not in ("", "identity")
        start, total = content_range(response.headers.get("Content-Range")) if status == 206 else (0, None)
        if status == 206 and start != have:
            # a range from elsewhere (a proxy serving from 0): appended at `have`, it would make a wrong file
            raise _start_over(part, f"the server sent bytes from offset {start} when asked for {have:,}")
        if status == 206 and have and encoded:
            raise _start_over(part, f"the server sends the rest {encoding}-encoded, which cannot continue a file")
        if status != 206:
            have = 0  # a whole file (the server ignored Range, or none was asked): from the start
        if total is None and not encoded and "Content-Length" in response.headers:
            total = have + int(response.headers["Content-Length"])
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: the server has a file of {total:,} bytes, expected {size:,}")
        try:
            with open(part, "ab" if have else "wb") as handle, \
                    tqdm(total=size or total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=part.name.removesuffix(".part").lstrip("."), disable=not progress, file=sys.stderr,
                         mininterval=2) as bar:
                for block in response.iter_content(NET_CHUNK):
                    handle.write(block)
                    bar.update(len(block))
        except (requests.exceptions.ContentDecodingError, requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as error:
            if encoded:  # decoded bytes: no Range request can continue them
                raise _start_over(part, f"{encoding}-encoded transfer failed ({error})") from None
            raise
    if size is not None and part.stat().st_size < size:
        raise ConnectionError(f"connection closed after {part.stat().st_size:,} of {size:,} bytes")


def fetch(url: str, target: str | Path, size: int | None = None, sha256: str | None = None,
          retries: int = 5, backoff: float = 2.0, timeout: float = 60.0, extra_space: int = 0,
          progress: bool = True) -> str:
    """Download ``url`` to ``target`` (resuming a partial transfer), verify it, rename it into place.

    A ``target`` already there (a rerun, or a file placed by hand) is verified instead of fetched. Returns the
    file's SHA-256. A checksum mismatch deletes what arrived, so the rerun fetches it again from the start.
    Dropped connections, timeouts and transient HTTP statuses (429, 5xx) are retried with exponential back-off
    (at least the server's Retry-After); other HTTP errors are not.
    """
    import requests

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return verify(target, url, size, sha256)
    part = part_path(target)
    have = part.stat().st_size if part.exists() else 0
    if size is not None:
        check_space(target.parent, size - min(have, size) + extra_space, url)
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, size, timeout, progress)
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError, ConnectionError) as error:
            if attempt == retries:
                raise DownloadError(f"{url}: failed after {retries + 1} attempts ({error}); "
                                    f"{by_hand(url, target)}") from None
            wait = retry_wait(url, attempt, backoff, getattr(error, "retry_after", None))
            print(f"note: {url}: {error}; retrying in {wait:.0f} s from byte "
                  f"{part.stat().st_size if part.exists() else 0:,}", file=sys.stderr)
            time.sleep(wait)
        except requests.HTTPError as error:
            raise DownloadError(f"{url}: {error}; {by_hand(url, target)}") from None
    try:
        digest = verify(part, url, size, sha256)
    except DownloadError:
        part.unlink()  # nothing that looks complete stays behind
        raise
    os.replace(part, target)
    return digest


def pinned_sha256(lock: str | Path, url: str) -> str | None:
    """The SHA-256 recorded for ``url`` in the lock file, if any."""
    lock = Path(lock)
    if not lock.exists():
        return None
    try:
        return json.loads(lock.read_text(encoding="utf-8")).get(url)
    except (json.JSONDecodeError, AttributeError) as error:
        raise DownloadError(f"{lock}: not a download lock file ({{url: sha256}} JSON): {error}") from None


def record_sha256(lock: str | Path, url: str, digest: str) -> None:
    lock = Path(lock)
    pins = json.loads(lock.read_text(encoding="utf-8")) if lock.exists() else {}
    pins[url] = digest
    write_json(lock, dict(sorted(pins.items())))


def fetch_pinned(url: str, target: str | Path, lock: str | Path, **options) -> str:
    """``fetch`` for a file without a published checksum: verified against the lock file's pin, or pinned now."""
    pinned = pinned_sha256(lock, url)
    digest = fetch(url, target, sha256=pinned, **options)
    if pinned is None:
        record_sha256(lock, url, digest)
        print(f"note: {url}: no checksum was pinned; recorded sha256 {digest} in {lock}", file=sys.stderr)
    return digest


def fetch_many(items: list[tuple[str, str | Path]], workers: int = 8, retries: int = 3, backoff: float = 2.0,
               timeout: float = 60.0, progress: bool = True) -> list[tuple[str, str]]:
    """Fetch many small files (nocaps images by their per-image URL), at most ``workers`` transfers at once.

    Each file is a :func:`fetch` (retries with back-off, resume, atomic rename; one there already is kept). Returns
    the failures as (url, reason), in the order given, for the caller to list.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    def one(item):
        url, target = item
        try:
            fetch(url, target, retries=retries, backoff=backoff, timeout=timeout, progress=False)
            return None
        except DownloadError as error:
            return url, str(error).removeprefix(f"{url}: ")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(one, items), total=len(items), unit="file", disable=not progress,
                            file=sys.stderr, mininterval=2))
    return [failure for failure in results if failure is not None]


# what reading a damaged or unreadable zip member raises: zipfile's own errors, I/O errors (bz2's too), the
# decompressors' errors (zlib for deflate, lzma), an unsupported method, an encrypted member (RuntimeError)
UNPACK_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, zlib.error, lzma.LZMAError,
                 NotImplementedError, RuntimeError, ValueError)


def unpack_zip(archive: str | Path, target: str | Path, expected_files: dict[str, int] | None = None,
               members: list[str] | None = None, top: str | None = None) -> dict[str, int]:
    """Unpack ``archive`` into the folder ``target`` atomically: into a hidden sibling first, then renamed.

    A truncated zip (no central directory) is refused before anything is written, and zipfile checks each member's
    CRC as it is read; ``expected_files`` ({top folder: number of files}, e.g. {"train2014": 82783}) is checked before
    the rename; an interrupted unpack leaves only the hidden folder, which the rerun removes and redoes. ``members``
    unpacks only those names (``dataset_coco.json`` out of Karpathy's zip). ``top`` names the one entry of the zip's
    top level that is unpacked and becomes ``target`` itself (``train2014`` of ``train2014.zip`` -> ``data/coco/train2014``; a file
    such as ``dataset_coco.json`` works too). Returns the file count per top-level entry of the zip.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        return {top: count_entry(target)} if top else count_files(target)
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise DownloadError(f"{archive}: not a complete zip file ({error}); delete it so it is downloaded again") from None
    with handle:
        names = members if members is not None else [info.filename for info in handle.infolist()]
        if top is not None and members is None:  # only the entry's own members (Karpathy's Flickr files stay packed)
            names = [name for name in names if name == top or name.startswith(f"{top}/")]
            if not names:
                raise DownloadError(f"{archive}: has no top-level {top}")
        unknown = sorted(set(names) - set(handle.namelist()))
        if unknown:
            raise DownloadError(f"{archive}: has no {unknown[0]}")
        needed = sum(handle.getinfo(name).file_size for name in names)
        target.parent.mkdir(parents=True, exist_ok=True)
        check_space(target.parent, needed, str(archive))
        staging = target.with_name(f".{target.name}.unpacking")
        shutil.rmtree(staging, ignore_errors=True)  # what an interrupted run left
        try:
            for name in names:
                handle.extract(name, staging)
        except UNPACK_ERRORS as error:  # damaged data (a CRC, a corrupt deflate stream), an encrypted member, ...
            shutil.rmtree(staging, ignore_errors=True)
            raise DownloadError(f"{archive}: cannot be unpacked ({type(error).__name__}: {error}); delete it so it "
                                f"is downloaded again") from None
        except BaseException:  # anything else (an interrupt): still nothing half-unpacked stays
            shutil.rmtree(staging, ignore_errors=True)
            raise
    counts = count_files(staging)
    wrong = {folder: (counts.get(folder, 0), count) for folder, count in (expected_files or {}).items()
             if counts.get(folder, 0) != count}
    if wrong:
        shutil.rmtree(staging, ignore_errors=True)
        listed = ", ".join(f"{folder}/ has {have:,} files, expected {want:,}" for folder, (have, want) in wrong.items())
        raise DownloadError(f"{archive}: {listed}")
    if top is None:
        os.replace(staging, target)
        return counts
    os.replace(staging / top, target)
    shutil.rmtree(staging, ignore_errors=True)
    return counts


def count_files(folder: Path) -> dict[str, int]:
    """Files per top-level entry of ``folder`` (a file at the top counts under its own name)."""
    return {entry.name: count_entry(entry) for entry in folder.iterdir()}


def count_entry(entry: Path) -> int:
    return sum(1 for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else 1
