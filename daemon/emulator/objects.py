"""The object store behind presigned URLs: one PUT of the input, GETs of the output.

Bodies stream between socket and disk in chunks, so multi-gigabyte files never sit
in memory.
"""

from __future__ import annotations

import asyncio

import aiofiles
from aiohttp import web

from .batch import OPERATIONS, SIGNER, Operation, refresh, start_processing
from .responses import s3_error
from .state import EMULATOR

CHUNK = 1 << 20
KMS_HEADER = "x-amz-server-side-encryption-aws-kms-key-id"
SSE_HEADER = "x-amz-server-side-encryption"


def checked_operation(request: web.Request) -> Operation:
    emulator = request.app[EMULATOR]
    problem = request.app[SIGNER].check(request.method, request.path, request.query, emulator.clock.now())
    if problem == "ExpiredToken":
        raise s3_error(403, "AccessDenied", "Request has expired")
    if problem:
        raise s3_error(403, problem, "The request signature we calculated does not match the signature you provided.")
    op = request.app[OPERATIONS].get(request.match_info["operation_id"])
    if op is None:
        raise s3_error(404, "NoSuchKey", "The specified key does not exist.")
    refresh(op, emulator)
    return op


async def upload(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    op = checked_operation(request)
    if emulator.faults.transfer_delay:
        await asyncio.sleep(emulator.faults.transfer_delay)
    if request.headers.get(SSE_HEADER) != "aws:kms":
        raise s3_error(400, "InvalidArgument", "Server Side Encryption with AWS KMS managed key requires x-amz-server-side-encryption: aws:kms")
    if request.headers.get(KMS_HEADER) != op.kms_key:
        raise s3_error(403, "AccessDenied", "The KMS key in x-amz-server-side-encryption-aws-kms-key-id is not the operation's key")
    if op.status != "awaiting_input":
        raise s3_error(403, "AccessDenied", f"Operation is {op.status} and accepts no input")
    limit = emulator.config.max_upload_bytes
    if (request.content_length or 0) > limit:
        raise s3_error(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
    size = 0
    async with aiofiles.open(op.input_path, "wb") as sink:
        async for chunk in request.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > limit:
                break
            await sink.write(chunk)
    if size > limit:
        op.input_path.unlink(missing_ok=True)
        raise s3_error(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
    if emulator.faults.lose_uploads > 0:  # acknowledged, then lost on the way to the bucket
        emulator.faults.lose_uploads -= 1
        op.input_path.unlink(missing_ok=True)
        return web.Response(status=200)
    op.status, op.uploaded_at = "in_progress", emulator.clock.now()
    emulator.stats.uploads += 1
    emulator.spawn(start_processing(op, emulator))
    return web.Response(status=200, headers={"ETag": f'"{op.operation_id}"'})


async def download(request: web.Request) -> web.StreamResponse:
    op = checked_operation(request)
    if request.app[EMULATOR].faults.transfer_delay:
        await asyncio.sleep(request.app[EMULATOR].faults.transfer_delay)
    name = request.match_info["name"]
    path = {"output.jsonl": op.output_path, "metadata.json": op.metadata_path}.get(name)
    if op.status != "complete" or path is None or not path.exists():
        raise s3_error(404, "NoSuchKey", "The specified key does not exist.")
    return web.FileResponse(path, chunk_size=CHUNK, headers={"Content-Type": "application/octet-stream"})



def add_routes(app: web.Application) -> None:
    app.router.add_put("/_s3/{operation_id}/input.jsonl", upload)
    app.router.add_get("/_s3/{operation_id}/{name}", download)
