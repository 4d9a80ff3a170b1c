"""Benchmark: `coderd convert` against the integration guide's own converters (not a test).

    .venv/bin/python bench/bench_convert.py [--lines N] [--sample M] [--pandas-sample P]
                                            [--repeat R] [--dir DIR] [--skip-pandas]

Generates an N-line (default 1,000,000) coding-API batch output like the guide's example:
80 % successful lines with a `result` object, 20 % unsuccessful with 1-3 `suggestions`,
some text with commas and quotes. Then runs, each as a child process, one after another:

  coderd     `python -m daemon convert IN -o OUT` (default workers), best of R runs (3);
  coderd-j1  the same with -j 1 (no worker processes);
  jq         the guide's bash+jq script (section 6, copied as printed; file names set),
             on the first M lines (default: all);
  pandas     the guide's Python+pandas script (copied as printed; file names set), on the
             first P lines (default 20,000: it takes about 1 ms a line), or
             "skipped: pandas not installed".

For each: wall and CPU seconds, lines/s, the largest RSS of any one process (wait4's
ru_maxrss, what /usr/bin/time -v reports) and the peak PSS summed over the child's process
group (the jq script is a two-process pipeline; coderd forks workers). Ratios compare
per-line rates, so runs on a sample stay comparable (said so in the output). The jq and
coderd CSVs of the same lines are then compared row by row through csv.reader.

The generated file has no line like the guide's third example (`"input": "this is not
json"`): jq 1.6 aborts the whole file at such a line; that is shown separately at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
JQ = "/usr/bin/jq"

# The guide's bash script, section 6 "Converting to .csv - sample bash script", verbatim
# except the two file names (and the header's echo joined onto one line, as the PDF
# wrapped it).
JQ_SCRIPT = r"""
export set inputFile="{input}"
export set outputFile="{output}"
echo "recordId,codeStatus,error,input.occp_text,input.tasks_text,result.codeCategory,result.codeLabel,result.codeConfidence,suggestions_1.codeCategory,suggestions_1.codeLabel,suggestions_1.codeConfidence,suggestions_2.codeCategory,suggestions_2.codeLabel,suggestions_2.codeConfidence,suggestions_3.codeCategory,suggestions_3.codeLabel,suggestions_3.codeConfidence" > $outputFile
jq -s '.' $inputFile | jq -r '
  .[] |
  [
    .recordId // "",
    .codeStatus // "",
    .error // "",
    .input.occp_text // "",
    .input.tasks_text // "",
    .result.codeCategory // "",
    .result.codeLabel // "",
    .result.codeConfidence // "",
    .suggestions[0].codeCategory // "",
    .suggestions[0].codeLabel // "",
    .suggestions[0].codeConfidence // "",
    .suggestions[1].codeCategory // "",
    .suggestions[1].codeLabel // "",
    .suggestions[1].codeConfidence // "",
    .suggestions[2].codeCategory // "",
    .suggestions[2].codeLabel // "",
    .suggestions[2].codeConfidence // ""
  ] | @csv
' >> $outputFile
"""

# The guide's Python+pandas script, verbatim except the two file names.
PANDAS_SCRIPT = r'''
import pandas as pd

# Read the dictionary into a data frame and add a common prefix
def dict_to_df(data: dict, column_prefix: str):
   return pd.DataFrame([data]).add_prefix(column_prefix)

# Expand each dictionary in a list into its own set of columns
def format_list(row, column_prefix):
 if not isinstance(row, list) or not row:
     row = [{{}}]
 # Concatenate custom data frames for each item in the list
 return pd.concat([dict_to_df(list_item, f'{{column_prefix}}_{{i+1}}.') for i, list_item in enumerate(row)], axis=1)

df = pd.read_json("{input}", orient="records", lines=True)

# Expand nested JSON objects
input_df = pd.json_normalize(df["input"]).add_prefix("input.")
result_df = pd.json_normalize(df["result"]).add_prefix("result.")
df = pd.concat([df.drop(columns=["input", "result"]), input_df, result_df], axis=1)

# Expand suggestions list
suggestion_df = df['suggestions'].apply(lambda suggestions: format_list(suggestions, "suggestions"))
suggestion_df = pd.concat(suggestion_df.to_list(), ignore_index=True)
suggestion_df.index = df.index

# merge the suggestions to the original data
merged_df = df.join(suggestion_df, how="left")
merged_df = merged_df.drop('suggestions', axis=1)

merged_df.to_csv("{output}", index=False)
'''

TITLES = ["software developer", "registered nurse", "chef", "truck driver", "primary school teacher",
          "sales assistant", "café owner", "electrician", "accountant", "Paramedic", "aged care worker",
          "civil engineer", "barista", "police officer", "receptionist, front desk", "", "brickie"]
TASKS = ["writing code and unit tests", "caring for patients on a ward", "cooking meals for customers",
         "driving trucks interstate", "teaching year 3", "serving customers at the counter", "",
         "wiring houses", "preparing tax returns", "responding to medical emergencies",
         "helping residents with \"daily\" living", "designing roads and bridges", "making coffee"]
CODES = [("261313", "Software Engineer"), ("254412", "Registered Nurse (Aged Care)"), ("351311", "Chef"),
         ("733111", "Truck Driver (General)"), ("241213", "Primary School Teacher"),
         ("621111", "Sales Assistant (General)"), ("411111", "Ambulance Officer"),
         ("411112", "Intensive Care Ambulance Paramedic"), ("221111", "Accountant (General)")]


def generate(path: Path, lines: int, seed: int = 7) -> None:
    rnd = random.Random(seed)

    def code() -> dict:
        category, label = rnd.choice(CODES)
        return {"codeCategory": category, "codeLabel": label, "codeConfidence": round(rnd.random(), 2)}

    with open(path, "w", encoding="utf-8", buffering=1 << 20) as out:
        for n in range(1, lines + 1):
            line = {"recordId": str(n), "codeStatus": "successful",
                    "input": {"occp_text": rnd.choice(TITLES), "tasks_text": rnd.choice(TASKS)}}
            if rnd.random() < 0.8:
                line["result"] = code()
            else:
                line["codeStatus"] = "unsuccessful"
                line["suggestions"] = [code() for _ in range(rnd.randint(1, 3))]
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


def head(source: Path, target: Path, lines: int) -> None:
    with open(source, "rb") as src, open(target, "wb") as out:
        for n, line in enumerate(src):
            if n >= lines:
                break
            out.write(line)


def _group_pss_kb(pgid: int) -> int:
    """Proportional set size summed over the process group (shared pages split between them)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[2]) != pgid:  # state ppid pgrp ...
                    continue
            with open(f"/proc/{entry.name}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, IndexError, ValueError, StopIteration):
            pass
    return total


def run(argv: list[str], cwd: Path) -> dict:
    """Run argv in its own process group: wall and CPU seconds, max RSS of any one process in
    it (what /usr/bin/time -v reports), peak PSS summed over the group, exit code, stderr."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    os.set_blocking(proc.stderr.fileno(), False)
    peak_pss, err = 0, b""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak_pss = max(peak_pss, _group_pss_kb(proc.pid))
        err += proc.stderr.read() or b""
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    err += proc.stderr.read() or b""
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
            "pss_mb": peak_pss / 1024, "rc": proc.returncode,
            "stderr": err.decode(errors="replace").strip().splitlines()[-3:]}


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def same_rows(ours: list[list[str]], theirs: list[list[str]]) -> tuple[int, int]:
    """(rows equal cell for cell, rows equal once numbers are compared as numbers: jq 1.6
    prints the JSON number 1.0 as 1, coderd keeps the file's text 1.0)."""
    def numeric(row):
        out = []
        for cell in row:
            try:
                out.append(float(cell))
            except ValueError:
                out.append(cell)
        return out
    exact = sum(a == b for a, b in zip(ours, theirs))
    loose = sum(a == b or numeric(a) == numeric(b) for a, b in zip(ours, theirs))
    return exact, loose


def have_pandas() -> bool:
    return subprocess.run([PYTHON, "-c", "import pandas"], capture_output=True).returncode == 0


def guide_example_check(work: Path) -> None:
    """The guide's jq script on two of the guide's own example lines (the second one is the
    API's answer to an unparseable input record, its `input` a string)."""
    demo = work / "guide-example.jsonl"
    demo.write_text(
        '{ "recordId": "1", "codeStatus": "successful", "input": { "occp_text": "software developer", '
        '"tasks_text": "writing code and unit tests" }, "result": { "codeCategory": "261313", '
        '"codeLabel": "Software Engineer", "codeConfidence": 0.98 } }\n'
        '{ "recordId": "unknown", "codeStatus": "unsuccessful", "input": "this is not json", '
        '"error": "invalid JSON" }\n')
    jq = subprocess.run(["bash", "-c", JQ_SCRIPT.format(input=demo, output=work / "demo-jq.csv")],
                        capture_output=True, text=True)
    ours = subprocess.run([PYTHON, "-m", "daemon", "convert", str(demo), "-o", str(work / "demo-coderd.csv")],
                          cwd=ROOT, capture_output=True, text=True)
    for name, proc, out in (("jq", jq, "demo-jq.csv"), ("coderd", ours, "demo-coderd.csv")):
        rows = len(read_rows(work / out)) - 1 if (work / out).exists() else 0
        why = proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else ""
        print(f"  {name:<7} exit {proc.returncode}, {rows} of 2 rows  {why}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=None, help="lines given to jq (default: all)")
    parser.add_argument("--pandas-sample", type=int, default=20_000, help="lines given to pandas")
    parser.add_argument("--repeat", type=int, default=3, help="coderd runs (the fastest is shown)")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--skip-pandas", action="store_true")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_convert_"))
    work.mkdir(parents=True, exist_ok=True)
    full = work / "api-output.jsonl"
    t0 = time.perf_counter()
    generate(full, args.lines)
    print(f"generated {args.lines:,} lines ({full.stat().st_size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - t0:.1f} s: {full}")
    print(f"CPUs available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}")

    results = {}
    coderd_csv = work / "coderd.csv"
    for label, extra in (("coderd", []), ("coderd-j1", ["-j", "1"])):
        runs = [run([PYTHON, "-m", "daemon", "convert", str(full), "-o", str(coderd_csv), *extra], ROOT)
                for _ in range(max(1, args.repeat))]
        results[label] = dict(min(runs, key=lambda r: r["seconds"]), lines=args.lines,
                              note=f"best of {len(runs)}: " + ", ".join(f"{r['seconds']:.2f}" for r in runs))

    jq_lines = min(args.sample or args.lines, args.lines)
    jq_in = full if jq_lines == args.lines else work / f"sample-{jq_lines}.jsonl"
    if jq_in != full:
        head(full, jq_in, jq_lines)
    jq_csv = work / "jq.csv"
    results["jq"] = dict(run(["bash", "-c", JQ_SCRIPT.format(input=jq_in, output=jq_csv)], work),
                         lines=jq_lines, note="")

    if args.skip_pandas:
        print("pandas: skipped (--skip-pandas)")
    elif not have_pandas():
        print("pandas: skipped: pandas not installed (pip install pandas into the venv to include it)")
    else:
        pd_lines = min(args.pandas_sample, args.lines)
        pd_in = work / f"sample-{pd_lines}.jsonl"
        if not pd_in.exists():
            head(full, pd_in, pd_lines)
        pd_script = work / "guide_pandas.py"
        pd_script.write_text(PANDAS_SCRIPT.format(input=pd_in, output=work / "pandas.csv"))
        results["pandas"] = dict(run([PYTHON, str(pd_script)], work), lines=pd_lines, note="")

    base = results["coderd"]
    base_rate, base_cpu = base["lines"] / base["seconds"], base["cpu"] / base["lines"]
    print(f"\n{'converter':<10} {'lines':>10} {'wall s':>8} {'CPU s':>8} {'lines/s':>10} "
          f"{'max RSS':>9} {'peak PSS':>9}  rc  wall vs coderd  CPU vs coderd")
    for name, r in results.items():
        rate = r["lines"] / r["seconds"]
        ratio = "" if name == "coderd" else (f"{base_rate / rate:9.1f}x slower  {r['cpu'] / r['lines'] / base_cpu:9.1f}x"
                                             f" more")
        print(f"{name:<10} {r['lines']:>10,} {r['seconds']:>8.2f} {r['cpu']:>8.2f} {rate:>10,.0f} "
              f"{r['rss_mb']:>6.0f} MB {r['pss_mb']:>6.0f} MB  {r['rc']:>2}  {ratio}  {r['note']}")
        if r["rc"]:
            print(f"           stderr: {' | '.join(r['stderr'])}")
    for name, r in results.items():
        if r["lines"] != base["lines"]:
            print(f"note: {name} ran on the first {r['lines']:,} lines only: its ratios compare per-line "
                  f"rates (it holds the whole file in memory, so its RSS would grow with the full file)")
    print("max RSS: the largest single process (what /usr/bin/time -v reports); peak PSS: all the "
          "processes together, shared pages split between them (sampled every 50 ms)")

    if results["jq"]["rc"] == 0:
        ours, theirs = read_rows(coderd_csv)[: jq_lines + 1], read_rows(jq_csv)
        exact, loose = same_rows(ours, theirs)
        print(f"jq vs coderd CSV of the same {jq_lines:,} lines (header included), parsed with csv.reader: "
              f"{len(theirs):,} vs {len(ours):,} rows; {exact:,} identical; {loose:,} identical when "
              f"numbers are compared as numbers (jq 1.6 writes 1.0 as 1)")
    print("the guide's own 'input is a string' example line:")
    guide_example_check(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
