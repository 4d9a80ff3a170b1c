"""Benchmark: one UTC day of real-time coding on a virtual clock, today's policy vs quota pacing.

    .venv/bin/python bench/bench_day.py [--workload a|b|c|all] [--hours 24] [--seed 1]
                                        [--burst 0.05] [--data ../shared/data] [--png docs/images/day.png]

A discrete-event simulation (a heap of events, no sleeping) of 00:00-24:00 UTC, starting
at a real midnight (2026-12-01T00:00:00Z), under the API's limits: a call may start at most
once a second (starts 1.0 s apart; calls may overlap), each takes 1.0 s, carries at most
300 texts, and the day has a quota of calls that resets at 00:00 UTC (so records still
waiting at 24:00 are not coded the same day).

Real code: the backlog (daemon.realtime.backlog: Backlog, CallKey, PendingRecord), the
worker's scheduling rule (daemon.realtime.schedule.plan_call), the quota ledger and
pacer (daemon.api.quota.QuotaLedger, daemon.api.pacer.QuotaPacer, on the virtual clock,
the ledger in a temporary state_dir) and distinct_texts (daemon.realtime.calls).
Modelled: the API (answers after 1.0 s, never fails), the limiter (1.0 s between starts,
without the real limiter's 0.03 s margin), the result cache (a dict keyed by the cleaned
text; the real ResultCache is SQLite and async), the broker (requests never fail or time
out; the real worker hands requests back to the queue when a pacing wait exceeds
PACING_HOLD or the quota is spent: here they wait in the backlog, and such waits are
counted). At each event (an arrival, a limiter slot, a pacing re-check) the worker asks
plan_call; a pacing wait is re-checked after min(wait, PACING_RECHECK) or at the next
arrival. "today" is the same loop without pacer, cache or dedupe; "paced" has all three.

Workloads (seeded): (a) public tier (1,000 calls/day), Poisson 1 record/s, distinct
texts; (b) partner tier (10,000/day), a daily curve averaging 3 records/s plus 200,000
records at 10:00; (c) as (a) with texts Zipf(1.0)-drawn from the ANZSCO index titles.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import heapq
import itertools
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.api.pacer import QuotaPacer
from daemon.api.quota import QuotaLedger
from daemon.constants import MAX_RECORDS_PER_CALL
from daemon.realtime.backlog import Backlog, CallKey, PendingRecord
from daemon.realtime.calls import distinct_texts
from daemon.realtime.schedule import plan_call
from daemon.realtime.worker import PACING_HOLD, PACING_RECHECK
from daemon.request.cleaning import CleanRecord, clean

MIDNIGHT = 1796083200.0  # 2026-12-01T00:00:00Z
DAY, SLOT, LATENCY, BIN, SAMPLE = 86400.0, 1.0, 1.0, 600.0, 60.0
KEY = CallKey("anzsco", None, 1)


# A record's owner: single-record requests that never fail here; `burst`: replayed at 10:00.
PLAIN, REPLAYED = SimpleNamespace(done=False, burst=False), SimpleNamespace(done=False, burst=True)


class Workload(NamedTuple):
    title: str
    quota: int
    arrivals: list[tuple[float, CleanRecord, SimpleNamespace]]  # (seconds after 00:00, text, owner), in time order


class Result:
    """One policy's day: counts, and the series the plot draws."""

    def __init__(self, end: float) -> None:
        self.arrived = self.coded = self.cached = self.calls = self.burst_calls = self.burst_records = 0
        self.sent = self.carried = 0  # texts sent to the API; records answered by calls
        self.resent = 0  # texts sent while already cached (in flight when their record came)
        self.paused = 0.0  # seconds with records waiting and the quota spent
        self.held = 0.0  # seconds from a pacing wait > PACING_HOLD until a partial call went
        self.max_wait, self.dry_at = 0.0, None
        self.latencies: list[float] = []
        self.live: list[float] = []  # latencies of records not replayed in the burst
        self.call_times: list[float] = []
        self.waiting: list[int] = []  # backlog size each SAMPLE seconds
        self.bins: list[list[float]] = [[] for _ in range(math.ceil(end / BIN))]  # latencies by reply time


def poisson(rng: random.Random, rate, peak: float, end: float) -> list[float]:
    """Arrival times of a (non-homogeneous, by thinning) Poisson process with rate(t) <= peak."""
    times, t = [], 0.0
    while (t := t + rng.expovariate(peak)) < end:
        if rate is None or rng.random() * peak < rate(t):
            times.append(t)
    return times


def workload_a(rng: random.Random, end: float) -> Workload:
    times = poisson(rng, None, 1.0, end)
    return Workload("(a) public tier, Poisson 1 record/s, distinct texts", 1000,
                    [(t, CleanRecord(f"occupation {i}", ""), PLAIN) for i, t in enumerate(times)])


def workload_b(rng: random.Random, end: float) -> Workload:
    def shape(t: float) -> float:  # night low, morning peak, a smaller afternoon one
        h = t / 3600
        return 0.12 + math.exp(-((h - 10) / 2.2) ** 2) + 0.55 * math.exp(-((h - 15) / 3.0) ** 2)
    grid = [shape(m * 60.0) for m in range(1440)]
    scale = 3.0 / (sum(grid) / len(grid))  # daily mean 3 records/s
    times = poisson(rng, lambda t: scale * shape(t), scale * max(grid) * 1.01, end)
    arrivals = [(t, CleanRecord(f"occupation {i}", ""), PLAIN) for i, t in enumerate(times)]
    if end > 36000:
        at = bisect.bisect_left(times, 36000.0)
        arrivals[at:at] = [(36000.0, CleanRecord(f"replayed {i}", ""), REPLAYED) for i in range(200_000)]
    return Workload("(b) partner tier, daily curve (mean 3 records/s) + 200,000 at 10:00", 10000, arrivals)


def workload_c(rng: random.Random, end: float, data: Path) -> Workload | None:
    path = data / "anzsco2022_index.csv"
    if not path.is_file():
        print(f"workload (c) skipped: {path} not found (pass --data DIR with anzsco2022_index.csv)")
        return None
    with path.open(newline="", encoding="utf-8") as f:
        titles = sorted({clean(row["title"], "") for row in csv.DictReader(f) if row.get("title")},
                        key=lambda r: r.occp_text)
    rng.shuffle(titles)  # popularity rank unrelated to alphabetical order
    cum = list(itertools.accumulate(1.0 / k for k in range(1, len(titles) + 1)))  # Zipf, s = 1.0
    times = poisson(rng, None, 1.0, end)
    return Workload(f"(c) as (a), texts Zipf(1.0) over {len(titles):,} ANZSCO index titles", 1000,
                    [(t, titles[min(bisect.bisect(cum, rng.random() * cum[-1]), len(titles) - 1)], PLAIN)
                     for t in times])


def simulate(work: Workload, paced: bool, burst: float, end: float) -> Result:
    res = Result(end)
    now = [0.0]  # seconds after 00:00; the injected clock is epoch time
    with tempfile.TemporaryDirectory() as state_dir:
        ledger = QuotaLedger(Path(state_dir), work.quota, clock=lambda: MIDNIGHT + now[0])
        pacer = QuotaPacer(ledger, burst, clock=lambda: MIDNIGHT + now[0]) if paced else None
        backlog, cache = Backlog(), ({} if paced else None)
        events: list = []  # (time, seq, batch or None for a wake-up, texts)
        seq = itertools.count()
        arrivals, ai = work.arrivals, 0
        last_start, wake_at, paused, holding = -math.inf, math.inf, False, False

        def wake(t: float) -> None:
            nonlocal wake_at
            if t < wake_at:
                wake_at = t
                heapq.heappush(events, (t, next(seq), None, None))

        def answered(t: float, latency: float, owner: SimpleNamespace) -> None:
            res.coded += 1
            res.latencies.append(latency)
            res.bins[int(t // BIN)].append(latency)
            if not owner.burst:
                res.live.append(latency)

        def decide(t: float) -> None:
            nonlocal last_start, holding
            if not backlog:
                return
            if t < last_start + SLOT:
                return wake(last_start + SLOT)
            if ledger.remaining <= 0:  # spent: the rest waits for 00:00 UTC
                res.dry_at = t if res.dry_at is None else res.dry_at
                return
            plan = plan_call(backlog, pacer)
            if plan is None:
                return
            if plan.wait > 0:
                res.max_wait = max(res.max_wait, plan.wait)
                holding = holding or plan.wait > PACING_HOLD
                return wake(t + max(1e-3, min(plan.wait, PACING_RECHECK)))  # and at the next arrival
            _, batch = backlog.take(MAX_RECORDS_PER_CALL, plan.key)
            texts = distinct_texts(batch)
            ledger.count(1)
            last_start, holding = t, holding and plan.full
            res.calls, res.sent = res.calls + 1, res.sent + len(texts)
            res.call_times.append(t)
            res.resent += sum(text in cache for text in texts) if cache is not None else 0
            if any(p.owner.burst for p in batch):
                res.burst_calls, res.burst_records = res.burst_calls + 1, res.burst_records + len(batch)
            heapq.heappush(events, (t + LATENCY, next(seq), batch, texts))
            wake(t + SLOT)

        while True:
            t = min(arrivals[ai][0] if ai < len(arrivals) else math.inf, events[0][0] if events else math.inf)
            if t >= end:
                break
            res.paused, res.held = res.paused + (t - now[0]) * paused, res.held + (t - now[0]) * holding
            while len(res.waiting) * SAMPLE <= t:
                res.waiting.append(len(backlog))
            now[0] = t
            while events and events[0][0] == t:  # calls answered (before arrivals: the cache knows them)
                _, _, batch, texts = heapq.heappop(events)
                if batch is None:
                    wake_at = math.inf if wake_at == t else wake_at
                    continue
                for pending in batch:
                    answered(t, MIDNIGHT + t - pending.since, pending.owner)
                res.carried += len(batch)
                if cache is not None:
                    cache.update(dict.fromkeys(texts, True))
            new = []
            while ai < len(arrivals) and arrivals[ai][0] == t:
                _, text, owner = arrivals[ai]
                res.arrived += 1
                if cache is not None and text in cache:  # answered at once, no call
                    res.cached += 1
                    answered(t, 0.0, owner)
                else:  # today's policy has no dedupe: a unique text per record (its arrival number)
                    record = text if paced else CleanRecord(text.occp_text, f"{text.tasks_text}#{ai}")
                    new.append(PendingRecord(owner, 0, record, since=MIDNIGHT + t))
                ai += 1
            if new:
                backlog.add(KEY, new)
            decide(t)
            paused = bool(backlog) and res.calls >= work.quota
        res.paused, res.held = res.paused + (end - now[0]) * paused, res.held + (end - now[0]) * holding
        while len(res.waiting) * SAMPLE < end:
            res.waiting.append(len(backlog))
    return res


def quantile(values: list[float], q: float, arrived: int) -> float:
    """Over every record that arrived: those not coded the same day count as infinitely late."""
    i = int(q * (arrived - 1))
    return math.nan if not arrived else sorted(values)[i] if i < len(values) else math.inf


def secs(value: float, unit: str = "") -> str:
    return "not coded" if math.isinf(value) else f"{value:,.1f}{unit}"


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} ({seconds:,.0f} s)"


def report(work: Workload, today: Result, paced: Result) -> None:
    cols = [{
            "records arrived": f"{r.arrived:,}",
            "coded the same day": f"{r.coded:,} ({100 * r.coded / max(1, r.arrived):.1f} %)",
            "calls used": f"{r.calls:,} of {work.quota:,}",
            "records sent to the API": f"{r.sent:,}",
            "hours paused (quota spent)": hours(r.paused),
            "p50 latency (s)": secs(quantile(r.latencies, 0.5, r.arrived)),
            "p99 latency (s)": secs(quantile(r.latencies, 0.99, r.arrived)),
            "cache hit rate": f"{100 * r.cached / max(1, r.arrived):.1f} %",
            "mean records per call": f"{r.carried / max(1, r.calls):.1f}",
            "ran dry at (UTC)": "-" if r.dry_at is None else time.strftime("%H:%M:%S", time.gmtime(r.dry_at)),
            f"hours held (wait > {PACING_HOLD:.0f} s)": hours(r.held),
            "longest pacing wait (s)": f"{min(r.max_wait, DAY):,.0f}",
            "texts sent again (in flight)": f"{r.resent:,}",
            } for r in (today, paced)]
    print(f"\n{work.title}; quota {work.quota:,} calls/day")
    print(f"  {'':30}{'today':>22}{'paced':>22}")
    for name in cols[0]:
        print(f"  {name:30}{cols[0][name]:>22}{cols[1][name]:>22}")


def verdict(label: str, ok: bool) -> None:
    print(f"  {'PASS' if ok else 'MISS'}  {label}")


def plot(runs: dict, png: Path, end: float) -> None:
    try:
        import matplotlib.pyplot as plt  # the Agg backend when there is no display
    except ImportError:
        return print("\nmatplotlib is not installed (pip install -e '.[bench]'): no plot")
    fig, axes = plt.subplots(3, len(runs), figsize=(6 * len(runs), 11), squeeze=False)
    for col, (work, today, paced) in enumerate(runs.values()):
        top, mid, low = axes[0][col], axes[1][col], axes[2][col]
        for r, name, colour in ((today, "today", "tab:red"), (paced, "paced", "tab:blue")):
            top.step([0, *(t / 3600 for t in r.call_times), end / 3600], [0, *range(1, r.calls + 1), r.calls],
                     where="post", color=colour, label=f"{name} ({r.calls:,} calls)")
            per = int(BIN // SAMPLE)  # the most waiting in each 10 min
            mid.step([i * SAMPLE / 3600 for i in range(0, len(r.waiting), per)] + [end / 3600],
                     [max(r.waiting[i:i + per]) for i in range(0, len(r.waiting), per)] + [r.waiting[-1]],
                     where="post", color=colour, label=name)
            xs = [(i + 0.5) * BIN / 3600 for i, b in enumerate(r.bins) if b]
            ys = [sorted(b)[int(0.99 * (len(b) - 1))] for b in r.bins if b]
            low.plot(xs, ys, ".-", ms=3, color=colour, label=name)
        top.plot([0, end / 3600], [0, work.quota * end / DAY], "k--", lw=1, label="even pace")
        top.set(title=f"{work.title}\ncumulative calls", ylabel="calls")
        mid.set(title="records waiting in the backlog (most in each 10 min)", ylabel="records", yscale="symlog")
        low.set(title="latency of the records answered in each 10 min, p99\n(none after the quota is spent)",
                ylabel="seconds", yscale="symlog")
        for ax in (top, mid, low):
            ax.set(xlabel="hour (UTC)", xlim=(0, end / 3600), xticks=range(0, int(end / 3600) + 1, 3))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            ax.title.set_fontsize(10)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print(f"\nplot: {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=["a", "b", "c", "all"], default="all")
    parser.add_argument("--hours", type=float, default=24.0, help="simulate 00:00 to this hour (quick runs)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--burst", type=float, default=0.05, help="quota_burst (share of the daily quota)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="directory with anzsco2022_index.csv, for workload (c) (default: ../shared/data)")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "images" / "day.png")
    args = parser.parse_args()
    assert time.gmtime(MIDNIGHT)[3:6] == (0, 0, 0), "the day must start at 00:00 UTC"
    end, started = min(args.hours, 24.0) * 3600, time.perf_counter()
    wanted = "abc" if args.workload == "all" else args.workload
    runs = {}
    for name in wanted:
        rng = random.Random(f"{args.seed}-{name}")
        work = workload_c(rng, end, args.data) if name == "c" else {"a": workload_a, "b": workload_b}[name](rng, end)
        if work is None:
            continue
        runs[name] = (work, simulate(work, False, args.burst, end), simulate(work, True, args.burst, end))
        report(*runs[name])
    print(f"\ntargets (paced policy, quota_burst {args.burst}):")
    if "a" in runs:
        a = runs["a"][2]
        p99 = quantile(a.latencies, 0.99, a.arrived)
        verdict(f"(a) coded the same day {100 * a.coded / max(1, a.arrived):.2f} % (target >= 99 %)", a.coded >= 0.99 * a.arrived)
        verdict(f"(a) hours paused {hours(a.paused)} (target 0)", a.paused == 0)
        verdict(f"(a) p99 latency {secs(p99, ' s')} (target <= 180 s)", p99 <= 180)
    if "b" in runs:
        b, live = runs["b"][2], sum(not owner.burst for _, _, owner in runs["b"][0].arrivals)
        dry = time.strftime("%H:%M:%S", time.gmtime(b.dry_at or 0))
        verdict(f"(b) never ran dry before 00:00 (quota spent with records waiting): "
                f"{f'ran dry at {dry}, {b.paused:,.0f} s paused' if b.paused else 'never'}", b.paused == 0)
        print(f"        (b) mean records per call during the burst: "
              f"{b.burst_records / max(1, b.burst_calls):.1f} over {b.burst_calls:,} calls")
        print(f"        (b) live records (not replayed): p50 {secs(quantile(b.live, 0.5, live), ' s')}, "
              f"p99 {secs(quantile(b.live, 0.99, live), ' s')}")
    if "a" in runs and "c" in runs:
        a, c = runs["a"][2], runs["c"][2]
        fewer = 100 * (1 - c.sent / max(1, a.sent))
        verdict(f"(c) vs (a) records sent to the API {c.sent:,} vs {a.sent:,}: {fewer:.1f} % fewer (target >= 40 %)",
                fewer >= 40)
        print(f"        (c) vs (a) median latency: {secs(quantile(c.latencies, 0.5, c.arrived), ' s')} vs "
              f"{secs(quantile(a.latencies, 0.5, a.arrived), ' s')}")
    if runs:
        plot(runs, args.png, end)
    print(f"\nsimulated in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
