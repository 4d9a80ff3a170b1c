"""Build the coder's compact data files from the ABS files in /work/shared/data.

Run once (output is committed):  python daemon/emulator/data/build.py [SOURCE_DIR]

Writes, next to this script:
  anzsco2022_units.json.gz  {unit code: unit overview and tasks}, shared task evidence
  anzsco2022.json.gz        {"targets": [[code, label, [[title, kind], ...], description, [unit codes]]]}
  osca2024.json.gz          same shape; OSCA occupations borrow ANZSCO titles and tasks
Title kinds: p principal, a alternative, s specialisation, n listed under an nec
occupation, u unit-group title, c colloquial alias (ALIASES below).
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(OUT_DIR.parents[2]))  # the project root, for the shared tokenizer
from daemon.emulator.classification import build_index, tokens  # noqa: E402
from daemon.emulator.coder import Coder  # noqa: E402

DEFAULT_SOURCE = Path("/work/shared/data")

# Everyday Australian job titles the ABS index lacks, each with the titles it
# stands for, tried in order in each topic. "software developer" is the coding
# service's own documented example (it codes to Software Engineer, not to
# Developer Programmer where the ANZSCO index lists it as a specialisation).
ALIASES = {
    "Brickie": ["Bricklayer"],
    "Chippy": ["Carpenter"],
    "Chippie": ["Carpenter"],
    "Sparky": ["Electrician (General)"],
    "Sparkie": ["Electrician (General)"],
    "Truckie": ["Truck Driver (General)"],
    "Postie": ["Postal Delivery Officer"],
    "Firie": ["Firefighter", "Fire Fighter"],
    "Ambo": ["Paramedic", "Ambulance Paramedic (NZ)", "Ambulance Officer"],
    "Paramedic": ["Ambulance Paramedic (NZ)"],  # ANZSCO names it only in full
    "Cabbie": ["Taxi Driver"],
    "Garbo": ["Recycling or Waste Collector", "Recycling or Rubbish Collector"],
    "Wharfie": ["Stevedore", "Waterside Worker"],
    "Muso": ["Musician (Instrumental)"],
    "Journo": ["Journalist", "Print Journalist"],
    "Cop": ["General Duties Police Officer", "Police Officer"],
    "Physio": ["Physiotherapist"],
    "Vet": ["Veterinarian"],
    "GP": ["General Practitioner"],
    "Scaffy": ["Scaffolder"],
    "Deckie": ["Deck Hand"],
    "Pollie": ["Member of Parliament"],
    "Checkout Chick": ["Checkout Operator"],
    "Servo Attendant": ["Service Station Attendant"],
    "Barman": ["Bar Attendant"],
    "Barmaid": ["Bar Attendant"],
    "Bartender": ["Bar Attendant"],
    "Waitress": ["Waiter"],
    "Teacher Aide": ["Teachers' Aide", "Teaching Assistant"],
    "Child Care Worker": ["Early Childhood Educator"],
    "Mechanic": ["Motor Mechanic (General)", "Automotive Technician (General)"],
    "Shop Assistant": ["Sales Assistant (General)"],
    "Retail Assistant": ["Sales Assistant (General)"],
    "Cashier": ["Checkout Operator"],
    "Uber Driver": ["Rideshare Driver", "Taxi Driver"],
    "Rideshare Driver": ["Taxi Driver"],
    "Lawyer": ["Solicitor"],
    "Software Developer": ["Software Engineer"],
}


def exact_key(title: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", title.lower()))


def stemmed_key(title: str) -> str:
    return " ".join(sorted(set(tokens(title))))


def title_variants(title: str) -> list[str]:
    """ "A B (Aus) / C D (NZ)" names one occupation twice; split it, but keep
    "Director of Nursing / Midwifery", whose halves are not titles on their own."""
    parts = [part.strip() for part in title.split(" / ")]
    if len(parts) > 1 and all(len(part.split()) >= 2 for part in parts):
        return parts
    return [title]


def read_anzsco(source: Path) -> tuple[list[dict], dict[str, str]]:
    nec_titles = defaultdict(list)
    with open(source / "anzsco2022_index.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] == "Occupation in nec category":
                nec_titles[row["code"]].append(row["title"])
    occupations, unit_texts = [], {}
    with open(source / "anzsco2022_occupations_tasks.jsonl", encoding="utf-8") as f:
        for line in f:
            occ = json.loads(line)
            titles = [[t, "p"] for t in title_variants(occ["title"])]
            titles += [[t, "a"] for t in occ["alt_titles"]]
            titles += [[t, "s"] for t in occ["specialisations"]]
            titles += [[t, "n"] for t in nec_titles[occ["code"]]]
            titles.append([occ["unit_title"], "u"])
            occupations.append(
                {"code": occ["code"], "label": occ["title"], "titles": titles,
                 "description": occ["description"], "units": [occ["unit_code"]]}
            )  # fmt: skip
            unit_texts[occ["unit_code"]] = "; ".join([occ["unit_overview"], *occ["unit_tasks"]])
    return occupations, unit_texts


def read_osca(source: Path, anzsco: list[dict], anzsco_coder: Coder) -> list[dict]:
    with open(source / "osca2024_wide.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if "nfd" not in r["osca_occupation"].split()]
    rows = list({r["osca_occupation_code"]: r for r in rows}.values())

    # ANZSCO occupations by title wording; "own" = principal or alternative title.
    own_exact, own_stemmed, any_exact, any_stemmed = (defaultdict(list) for _ in range(4))
    for occ in anzsco:
        for title, kind in occ["titles"]:
            if kind == "u":
                continue
            lookups = (own_exact, own_stemmed) if kind in "pa" else (any_exact, any_stemmed)
            lookups[0][exact_key(title)].append(occ)
            lookups[1][stemmed_key(title)].append(occ)
    osca_titles = {stemmed_key(r["osca_occupation"]) for r in rows}

    occupations = []
    for row in rows:
        label = row["osca_occupation"]
        titles = [[t, "p"] for t in title_variants(label)] + [[row["osca_unit"], "u"]]
        same_occupation = own_exact.get(exact_key(label)) or own_stemmed.get(stemmed_key(label)) or []
        narrower = any_exact.get(exact_key(label)) or any_stemmed.get(stemmed_key(label)) or []
        description, units = "", []
        for occ in same_occupation:  # the same occupation: its other names and duties apply
            titles += [
                [title, "a" if kind == "p" else kind]
                for title, kind in occ["titles"]
                if kind != "u" and stemmed_key(title) not in osca_titles  # OSCA's own names win
            ]
            description = description or occ["description"]
            units += occ["units"]
        if not same_occupation:
            for occ in narrower:  # a specialisation of it: only its duties apply
                units += occ["units"]
        occupations.append(
            {"code": row["osca_occupation_code"], "label": label, "titles": titles,
             "description": description, "units": sorted(set(units)),
             "osca_unit": row["osca_unit_code"]}
        )  # fmt: skip

    # No ANZSCO title match: borrow the duties of the ANZSCO occupation the coder
    # itself confidently picks for the OSCA title; failing that, those of the
    # ANZSCO unit most borrowed by the rest of the OSCA unit group.
    anzsco_units = {occ["code"]: occ["units"] for occ in anzsco}
    unmatched = [occ for occ in occupations if not occ["units"]]
    by_coder = by_group = 0
    for occ in unmatched:
        successful, codes = anzsco_coder.code(occ["label"], "", 1)
        if successful:
            occ["units"] = anzsco_units[codes[0].category]
            by_coder += 1
    votes: dict[str, Counter] = defaultdict(Counter)
    for occ in occupations:
        votes[occ["osca_unit"]].update(occ["units"])
    for occ in unmatched:
        group_votes = votes[occ["osca_unit"]]
        if not occ["units"] and group_votes:
            occ["units"] = [min(group_votes, key=lambda unit: (-group_votes[unit], unit))]
            by_group += 1
    for occ in occupations:
        del occ["osca_unit"]
    print(f"osca: {len(occupations)} occupations, {len(unmatched)} without an ANZSCO title match:"
          f" duties by coder {by_coder}, by unit group {by_group}")
    return occupations


def add_aliases(topic: str, occupations: list[dict]) -> None:
    """Attach each alias to the occupation whose principal/alternative title it stands for,
    unless some occupation already uses the alias as a title of its own."""
    by_title, own_titles = defaultdict(list), set()
    for occ in occupations:
        for title, kind in occ["titles"]:
            if kind in "pa":
                by_title[exact_key(title)].append(occ)
                own_titles.add(exact_key(title))
    for alias, meanings in ALIASES.items():
        if exact_key(alias) in own_titles:
            continue
        for meaning in meanings:
            if exact_key(meaning) in by_title:
                for occ in by_title[exact_key(meaning)]:
                    occ["titles"].append([alias, "c"])
                break
        else:
            print(f"{topic}: alias {alias!r} has no match, skipped")


def write(name: str, payload: object) -> None:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    with open(OUT_DIR / name, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(data)  # mtime=0: rebuilding the same input gives the same bytes
    print(f"{name}: {(OUT_DIR / name).stat().st_size:,} bytes")


def as_rows(occupations: list[dict]) -> dict:
    rows = []
    for occ in sorted(occupations, key=lambda o: o["code"]):
        titles = list({(t, k): [t, k] for t, k in occ["titles"]}.values())
        rows.append([occ["code"], occ["label"], titles, occ["description"], occ["units"]])
    return {"targets": rows}


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    anzsco, unit_texts = read_anzsco(source)
    anzsco_coder = Coder("anzsco", build_index(as_rows(anzsco)["targets"], unit_texts))
    osca = read_osca(source, anzsco, anzsco_coder)
    add_aliases("anzsco", anzsco)
    add_aliases("osca", osca)
    write("anzsco2022_units.json.gz", dict(sorted(unit_texts.items())))
    write("anzsco2022.json.gz", as_rows(anzsco))
    write("osca2024.json.gz", as_rows(osca))


if __name__ == "__main__":
    main()
