"""Uploads and downloads through presigned URLs: plain HTTP, streamed to and from disk.

These are not /v1 calls: they take no token, no limiter slot and no quota.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiofiles
import aiohttp

CHUNK = 1 << 20


class TransferError(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status or 'no answer'}: {message}")
        self.status = status

    @property
    def expired(self) -> bool:
        """S3 answers 403 AccessDenied for a URL past its expiry."""
        return self.status == 403


def _timeout(size: int) -> aiohttp.ClientTimeout:
    # Generous: at least 10 minutes, plus a minute per 100 MB.
    return aiohttp.ClientTimeout(total=600 + size / (100 << 20) * 60, sock_connect=30)


async def _file_chunks(path: Path):
    async with aiofiles.open(path, "rb") as source:
        while chunk := await source.read(CHUNK):
            yield chunk


async def upload(session: aiohttp.ClientSession, url: str, kms_key: str, path: Path) -> None:
    size = path.stat().st_size
    headers = {
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": kms_key,
        "Content-Length": str(size),
        "Content-Type": "application/octet-stream",
    }
    try:
        async with session.put(url, data=_file_chunks(path), headers=headers, timeout=_timeout(size)) as response:
            if response.status != 200:
                raise TransferError(response.status, (await response.text())[:300])
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise TransferError(None, type(exc).__name__) from None


async def download(session: aiohttp.ClientSession, url: str, path: Path) -> int:
    """Stream the URL's body to `path` (written whole or not at all); returns its size."""
    partial = path.with_name(path.name + ".partial")
    size = 0
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=300)) as response:
            if response.status != 200:
                raise TransferError(response.status, (await response.text())[:300])
            async with aiofiles.open(partial, "wb") as sink:
                async for chunk in response.content.iter_chunked(CHUNK):
                    await sink.write(chunk)
                    size += len(chunk)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        partial.unlink(missing_ok=True)
        raise TransferError(None, type(exc).__name__) from None
    except TransferError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return size
