"""Weights files fetched the way torch.hub fetches them: the SHA-256 prefix in the file name is checked.

Kept apart from :mod:`pipeline.download` so that the plain downloads (COCO zips, Karpathy's splits, nocaps) run
without torch: the download env has none.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.digest import sha256_of
from pipeline.download import TRANSIENT_STATUS, DownloadError, by_hand, retry_after_seconds, retry_wait


def fetch_torchvision_weights(backbone: str, name: str, target: str | Path, retries: int = 3,
                              backoff: float = 2.0, progress: bool = True) -> str:
    """torchvision's ``name`` weights of ``backbone`` (``resnet101``, ``IMAGENET1K_V1``) saved at ``target``.

    The transfer and its check are torch.hub's, as torchvision runs them: the file name in the URL carries the
    first digits of the file's SHA-256 (``resnet101-63fe2227.pth``) and ``download_url_to_file`` refuses a file
    whose digest does not start with them. A file already at ``target`` gets the same check. Returns the SHA-256.
    """
    import torchvision

    try:
        url = torchvision.models.get_model_weights(backbone)[name].url
    except (KeyError, ValueError):
        raise DownloadError(f"torchvision has no weights {name!r} for {backbone}") from None
    return fetch_hub_file(url, target, retries=retries, backoff=backoff, progress=progress)


def fetch_hub_file(url: str, target: str | Path, retries: int = 3, backoff: float = 2.0,
                   progress: bool = True) -> str:
    """:func:`fetch_torchvision_weights` for any torch.hub-style URL (``NAME-<sha256 prefix>.EXT``)."""
    import http.client
    import urllib.error

    from torch import hub

    target = Path(target)
    match = hub.HASH_REGEX.search(Path(url).name)
    prefix = match.group(1) if match else None
    if target.exists():
        digest = sha256_of(target)
        if prefix and not digest.startswith(prefix):
            raise DownloadError(f"{url}: checksum mismatch for {target}: expected a sha256 starting {prefix}, "
                                f"got {digest}")
        return digest
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        retry_after = None
        try:
            # torch writes a temporary file beside the target and moves it there only after the hash check
            hub.download_url_to_file(url, str(target), hash_prefix=prefix, progress=progress)
            return sha256_of(target)
        except urllib.error.HTTPError as error:  # 403, 404: not retried; 429 and 5xx: retried
            if error.code not in TRANSIENT_STATUS or attempt == retries:
                raise DownloadError(f"{url}: HTTP {error.code} {error.reason}; {by_hand(url, target)}") from None
            retry_after = retry_after_seconds(error.headers.get("Retry-After") if error.headers else None)
        except RuntimeError as error:  # torch.hub: invalid hash value (expected ..., got ...)
            raise DownloadError(f"{url}: checksum mismatch for {target}: {error}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
            if attempt == retries:
                raise DownloadError(f"{url}: failed after {retries + 1} attempts ({error}); "
                                    f"{by_hand(url, target)}") from None
        time.sleep(retry_wait(url, attempt, backoff, retry_after))
    raise AssertionError("unreachable")
