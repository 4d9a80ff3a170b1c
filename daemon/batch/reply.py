"""A finished batch job's reply: results mapped back into an output file (inputFile), a
results file for the reply (inline records), or the failure. Blocking IO, for
asyncio.to_thread."""

from __future__ import annotations

from pathlib import Path

from ..durable import AtomicFile
from ..request.finish import ResultsFile
from ..request.outbox import Outbox
from ..request.results import encode, failed_reply
from .journal import Job
from .cached import CACHED_NAME, cached_answers
from .mapping import map_results


def batch_reply(job: Job, directory: Path, outbox: Outbox) -> dict:
    """ClaimCheckError when an inputFile's output cannot be written (exists for another
    request, leaves the outbox, or the outbox cannot be written now)."""
    if job.failure is not None:
        return failed_reply(job.topic, job.resolved_model or job.model, "batch",
                            job.failure["code"], job.failure["message"])
    manifest, outputs = directory / "manifest.jsonl", [directory / p.result for p in job.parts]
    cached = cached_answers(directory / CACHED_NAME)
    reply = {"status": "completed", "topic": job.topic, "model": job.resolved_model, "route": "batch"}
    if job.kind == "record":
        results: list[dict] = []
        map_results(manifest, outputs, results.append, cached)
        reply["record"] = results[0]
    elif job.kind == "file":
        target = outbox.claim(job.output_file, job.owner)
        try:
            with AtomicFile(target) as output:
                counts = map_results(manifest, outputs, lambda result: output.write_line(encode(result)), cached)
            outbox.written(target, job.owner)
        finally:
            outbox.release(target)
        reply["output"] = {"file": job.output_file, "records": counts.records, "successful": counts.successful,
                           "unsuccessful": counts.unsuccessful, "invalid": counts.invalid, "cached": counts.cached}
    else:  # inline records: the finisher publishes them, or delivers them as a claim check
        results_file = ResultsFile(directory / "results.jsonl")
        with AtomicFile(results_file.path) as output:
            def keep(result: dict) -> None:
                output.write_line(encode(result))
                results_file.records += 1
                results_file.counts[result["codeStatus"]] += 1
            results_file.cached = map_results(manifest, outputs, keep, cached).cached
        reply["records"] = results_file
    reply["error"] = None
    return reply
