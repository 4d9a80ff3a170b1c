"""Benchmark: records/s for spooling a claim-check file and for mapping the batch
service's output back to it, and peak RSS (not a test).

    .venv/bin/python bench/bench_spool.py [--records N] [--reordered] [--dir DIR]

Generates an N-record JSONL input (default 1,000,000; short, realistic records with a
few accented, empty and too-long ones), spools it (read_local_records + spool), writes a fake
API output for the spool (not timed), then maps it back into an OutputFile of
RecordResults (map_results + json.dumps per line). --reordered swaps the first two
output lines, which sends the whole mapping down the index (fallback) path.
Target: >= 50,000 records/s for each step, with RSS flat in N.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.batch.mapping import map_results  # noqa: E402
from daemon.batch.spool import spool  # noqa: E402
from daemon.durable import AtomicFile
from daemon.request.inbox import read_local_records  # noqa: E402

TITLES = ["software developer", "registered nurse", "chef", "truck driver", "primary school teacher",
          "sales assistant", "café owner", "electrician", "accountant", "brickie", "aged care worker",
          "civil engineer", "barista", "police officer", "receptionist", "", "Straße sweeper"]
TASKS = ["writing code and unit tests", "caring for patients on a ward", "cooking meals for customers",
         "driving trucks interstate", "teaching year 3", "serving customers at the counter", "",
         "wiring houses", "preparing tax returns", "laying bricks", "helping residents with daily living",
         "designing roads and bridges", "making coffee", "responding to emergencies", "answering phones"]
CODE = {"codeCategory": "261313", "codeLabel": "Software Engineer", "codeConfidence": 0.61}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def generate(path: Path, n: int) -> None:
    rng = random.Random(1)
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as out:
        for i in range(n):
            record = {"recordId": f"r{i}", "occp_text": rng.choice(TITLES), "tasks_text": rng.choice(TASKS)}
            if i % 1000 == 999:
                record["tasks_text"] = "x" * 320  # too long for batch
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def fake_api(parts, directory: Path, reordered: bool) -> list[Path]:
    outputs = []
    for number, part in enumerate(parts):
        path = directory / f"output-{number:03d}.jsonl"
        with open(part.path, encoding="ascii") as source, open(path, "w", buffering=1 << 20) as out:
            held = None
            for k, line in enumerate(source):
                spooled = json.loads(line)
                answer = {"recordId": spooled["recordId"], "codeStatus": "successful",
                          "input": {"occp_text": spooled["occp_text"], "tasks_text": spooled["tasks_text"]},
                          "result": CODE}
                if k % 4 == 3:
                    del answer["result"]
                    answer.update(codeStatus="unsuccessful", suggestions=[CODE, CODE, CODE])
                text = json.dumps(answer) + "\n"
                if reordered and number == 0 and k == 0:
                    held = text
                    continue
                out.write(text)
                if held is not None:
                    out.write(held)
                    held = None
        outputs.append(path)
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--reordered", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        source, job, output = work / "input.jsonl", work / "job", work / "out" / "input.coded.jsonl"
        generate(source, args.records)
        print(f"input: {args.records:,} records, {source.stat().st_size / 1e6:.1f} MB; "
              f"peak RSS so far {peak_rss_mb():.1f} MB")

        started = time.perf_counter()
        summary = spool(read_local_records(source), job)
        spool_s = time.perf_counter() - started
        print(f"spool: {summary.total:,} records ({summary.invalid:,} invalid, {len(summary.parts)} part) "
              f"in {spool_s:.2f} s = {summary.total / spool_s:,.0f} records/s; peak RSS {peak_rss_mb():.1f} MB")

        outputs = fake_api(summary.parts, work, args.reordered)

        started = time.perf_counter()
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        with AtomicFile(output) as out:
            write = out.write_line
            counts = map_results(summary.manifest, outputs, lambda result: write(dumps(result)))
        map_s = time.perf_counter() - started
        path = "index (re-ordered output)" if args.reordered else "in order"
        print(f"map ({path}): {counts.records:,} records ({counts.successful:,} successful, "
              f"{counts.unsuccessful:,} unsuccessful, {counts.invalid:,} invalid) in {map_s:.2f} s = "
              f"{counts.records / map_s:,.0f} records/s; peak RSS {peak_rss_mb():.1f} MB")


if __name__ == "__main__":
    main()
