"""A finished batch job's reply: results mapped back into the reply (inline records) or
into the output file (inputFile), or the failure. Blocking IO, for asyncio.to_thread."""

from __future__ import annotations

import json
from pathlib import Path

from ..durable import AtomicFile
from ..request.claimcheck import resolve_inside
from ..request.results import failed_reply
from .journal import Job
from .mapping import map_results

# One encoder for every line: json.dumps with arguments builds a new one per call.
encode_line = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def batch_reply(job: Job, directory: Path, outbox_dir: Path) -> dict:
    if job.failure is not None:
        return failed_reply(job.topic, job.resolved_model or job.model, "batch",
                            job.failure["code"], job.failure["message"])
    manifest, outputs = directory / "manifest.jsonl", [directory / p.result for p in job.parts]
    reply = {"status": "completed", "topic": job.topic, "model": job.resolved_model, "route": "batch"}
    if job.kind == "file":
        with AtomicFile(resolve_inside(outbox_dir, job.output_file, must_exist=False)) as output:
            counts = map_results(manifest, outputs, lambda result: output.write_line(encode_line(result)))
        reply["output"] = {"file": job.output_file, "records": counts.records, "successful": counts.successful,
                           "unsuccessful": counts.unsuccessful, "invalid": counts.invalid}
    else:
        results: list[dict] = []
        map_results(manifest, outputs, results.append)
        reply.update({"record": results[0]} if job.kind == "record" else {"records": results})
    reply["error"] = None
    return reply
