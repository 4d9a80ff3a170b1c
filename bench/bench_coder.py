"""Benchmark: milliseconds to code one 300-record request, per topic (not a test).

    .venv/bin/python bench/bench_coder.py [--calls N]

Records are varied and realistic: real titles, with seniority words, colloquial
and misspelt forms, duties drawn from ANZSCO unit tasks, empty fields and some
gibberish, cut to the API's 300 characters. Generated from a fixed seed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.emulator.classification import DATA_DIR, TOPIC_FILES, UNITS_FILE  # noqa: E402
from daemon.emulator.coder import coder_for  # noqa: E402

RECORDS_PER_CALL = 300
MAX_TEXT = 300
PREFIXES = ["", "", "", "senior ", "junior ", "casual ", "trainee ", "head ", "assistant ", "lead "]
SUFFIXES = ["", "", "", " at local council", " (part time)", " - contract", " in hospital", " for a mining company"]
COLLOQUIAL = ["brickie", "chippy", "sparky", "truckie", "postie", "ambo", "tradie", "admin", "labourer", "nurse"]
FREE_TASKS = [
    "", "", "writing code and unit tests", "respond to emergencies", "looking after kids",
    "driving trucks interstate", "cooking meals for customers", "serving customers at the counter",
]  # fmt: skip


def load_vocabulary(topic: str) -> tuple[list[str], list[str]]:
    with gzip.open(DATA_DIR / TOPIC_FILES[topic], "rt", encoding="utf-8") as f:
        targets = json.load(f)["targets"]
    with gzip.open(DATA_DIR / UNITS_FILE, "rt", encoding="utf-8") as f:
        unit_texts = json.load(f)
    titles = [title for target in targets for title, kind in target[2] if kind != "u"]
    tasks = [task for text in unit_texts.values() for task in text.split("; ")[1:]]
    return titles, tasks


def misspell(text: str, rng: random.Random) -> str:
    if len(text) < 5:
        return text
    i = rng.randrange(1, len(text) - 1)
    return text[:i] + text[i + 1 :]


def make_record(titles: list[str], tasks: list[str], rng: random.Random) -> tuple[str, str]:
    roll = rng.random()
    if roll < 0.03:
        return "".join(rng.choice("qwzxvbnmkj ") for _ in range(12)), ""
    if roll < 0.13:
        occp = rng.choice(COLLOQUIAL)
    else:
        occp = rng.choice(PREFIXES) + rng.choice(titles) + rng.choice(SUFFIXES)
        if rng.random() < 0.1:
            occp = misspell(occp, rng)
    if rng.random() < 0.05:
        occp = ""
    duties = rng.choice(FREE_TASKS) if rng.random() < 0.3 else ", ".join(rng.sample(tasks, rng.randint(1, 3)))
    text = (occp + duties)[:MAX_TEXT]  # the API caps the combined length
    occp = text[: len(occp)]
    return occp.encode("ascii", "ignore").decode(), text[len(occp) :].encode("ascii", "ignore").decode()


def bench_topic(topic: str, calls: int, limit: int) -> list[float]:
    titles, tasks = load_vocabulary(topic)
    rng = random.Random(f"bench-{topic}")
    requests = [[make_record(titles, tasks, rng) for _ in range(RECORDS_PER_CALL)] for _ in range(calls)]
    coder = coder_for(topic)
    timings = []
    for records in requests:
        start = time.perf_counter()
        for occp, duties in records:
            coder.code(occp, duties, limit)
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="300-record requests per topic")
    parser.add_argument(
        "--limits", type=int, nargs="+", default=[3, 16], help="codes asked for per record (batch asks for 3)"
    )
    args = parser.parse_args()
    for topic in TOPIC_FILES:
        start = time.perf_counter()
        coder_for(topic)
        print(f"{topic}: load {(time.perf_counter() - start) * 1000:.0f} ms")
        for limit in args.limits:
            timings = bench_topic(topic, args.calls, limit)
            print(
                f"{topic:7s} limit {limit:2d} | ms per {RECORDS_PER_CALL}-record call:"
                f" median {statistics.median(timings):5.1f}, best {min(timings):5.1f},"
                f" worst {max(timings):5.1f} ({args.calls} calls)"
            )


if __name__ == "__main__":
    main()
