"""The emulator's occupation coder: reference points, ranking contract, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.emulator.classification import load_topic, stem, tokens
from daemon.emulator.coder import THRESHOLD, Code, Coder, coder_for

TOPICS = ("anzsco", "osca")
ROOT = Path(__file__).resolve().parents[1]


def categories(codes: list[Code]) -> list[str]:
    return [code.category for code in codes]


# --- reference points from the coding service's user guide --------------------


def test_software_developer_codes_to_software_engineer_in_anzsco():
    successful, codes = coder_for("anzsco").code("software developer", "writing code and unit tests", 5)
    assert successful
    assert codes[0] == Code("261313", "Software Engineer", codes[0].confidence)
    assert codes[0].confidence >= THRESHOLD


def test_software_developer_runners_up_match_the_guide():
    codes = coder_for("anzsco").rank("software developer", "writing code and unit tests", 3)
    assert categories(codes) == ["261313", "261312", "261399"]


def test_brickie_codes_to_bricklayer_in_osca():
    successful, codes = coder_for("osca").code("Brickie", "", 3)
    assert successful
    assert (codes[0].category, codes[0].label) == ("371131", "Bricklayer")


# --- common cases on both topics -------------------------------------------


@pytest.mark.parametrize("topic", TOPICS)
@pytest.mark.parametrize(
    ("occp", "tasks", "expected"),
    [
        ("paramedic", "respond to emergencies", "Paramedic"),
        ("registered nurse", "", "Nurse"),
        ("primary school teacher", "", "Primary School Teacher"),
        ("truck driver", "", "Truck Driver"),
        ("accountant", "", "Accountant"),
        ("chef", "", "Chef"),
        ("sparky", "", "Electrician"),
        ("Senior Software Engineer", "", "Software Engineer"),
    ],
)
def test_common_job_titles_code_sensibly(topic, occp, tasks, expected):
    successful, codes = coder_for(topic).code(occp, tasks, 3)
    assert successful, codes
    assert expected in codes[0].label


@pytest.mark.parametrize("topic", TOPICS)
def test_duties_alone_still_find_a_related_code(topic):
    codes = coder_for(topic).rank("", "respond to emergencies, fight fires and rescue people", 3)
    assert codes and "Fire" in codes[0].label


@pytest.mark.parametrize("topic", TOPICS)
def test_every_occupation_is_found_by_its_own_title(topic):
    coder = coder_for(topic)
    index = load_topic(topic)
    misses = [
        code for code, label in zip(index.codes, index.labels) if coder.rank(label, "", 1)[0].category != code
    ]
    assert len(misses) <= 0.01 * len(index.codes), misses


# --- unsuccessful input -------------------------------------------------------


@pytest.mark.parametrize("topic", TOPICS)
@pytest.mark.parametrize(("occp", "tasks"), [("qwzx vbnm", ""), ("qwzx", "vbnm kkkj"), ("", ""), ("  ...  ", "!!")])
@pytest.mark.parametrize("limit", [1, 3, 16])
def test_text_without_evidence_is_unsuccessful_and_ranks_nec_codes(topic, occp, tasks, limit):
    successful, codes = coder_for(topic).code(occp, tasks, limit)
    assert not successful
    assert len(codes) == limit
    assert all(code.label.endswith(" nec") and code.category.endswith("99") for code in codes)
    assert len({code.confidence for code in codes}) == 1  # a uniform guess...
    assert 0 < codes[0].confidence < 0.01
    assert categories(codes) == sorted(categories(codes))  # ...so ties, in code order


@pytest.mark.parametrize("topic", TOPICS)
def test_partly_gibberish_is_unsuccessful_but_still_ranked(topic):
    successful, codes = coder_for(topic).code("qwzx vbnm manager", "", 5)
    assert not successful
    assert len(codes) == 5
    assert codes[0].confidence < THRESHOLD


# --- the ranking contract -----------------------------------------------------

VARIED = [
    ("software developer", "writing code and unit tests"),
    ("manager", ""),
    ("nurse", "caring for patients in hospital"),
    ("", "cleaning offices and emptying bins"),
    ("casual labourer", "digging trenches, moving materials on building sites"),
    ("teacher", "teaching kids"),
]


@pytest.mark.parametrize("topic", TOPICS)
@pytest.mark.parametrize(("occp", "tasks"), VARIED)
def test_rankings_are_sorted_bounded_and_tie_broken_by_code(topic, occp, tasks):
    coder = coder_for(topic)
    for limit in (1, 2, 3, 5, 10, 16):
        codes = coder.rank(occp, tasks, limit)
        assert 1 <= len(codes) <= limit
        assert all(0.0 <= code.confidence <= 1.0 for code in codes)
        keys = [(-code.confidence, code.category) for code in codes]
        assert keys == sorted(keys)
        assert len(set(categories(codes))) == len(codes)
        # a longer ranking extends a shorter one
        assert codes == coder.rank(occp, tasks, 16)[: len(codes)]


@pytest.mark.parametrize("topic", TOPICS)
def test_limit_of_sixteen_fills_up_on_a_broad_title(topic):
    assert len(coder_for(topic).rank("manager", "", 16)) == 16


def test_limit_below_one_is_refused():
    with pytest.raises(ValueError):
        coder_for("anzsco").rank("chef", "", 0)


@pytest.mark.parametrize("topic", TOPICS)
@pytest.mark.parametrize(("occp", "tasks"), VARIED)
def test_successful_exactly_when_top_confidence_reaches_threshold(topic, occp, tasks):
    coder = coder_for(topic)
    successful, codes = coder.code(occp, tasks, 3)
    assert codes == coder.rank(occp, tasks, 3)
    assert successful == (codes[0].confidence >= coder.threshold)


def test_as_api_uses_the_service_field_names():
    code = Code("261313", "Software Engineer", 0.93)
    assert code.as_api() == {"codeCategory": "261313", "codeLabel": "Software Engineer", "codeConfidence": 0.93}


# --- determinism and loading ---------------------------------------------------


@pytest.mark.parametrize("topic", TOPICS)
def test_same_input_gives_identical_output(topic):
    fresh = Coder(topic, load_topic(topic))
    for occp, tasks in VARIED:
        first = coder_for(topic).code(occp, tasks, 16)
        assert coder_for(topic).code(occp, tasks, 16) == first
        assert fresh.code(occp, tasks, 16) == first


def test_output_does_not_depend_on_string_hash_order():
    """Python salts str hashes per process: iterate no set of words anywhere."""
    script = (
        "import json, sys\n"
        "from daemon.emulator.coder import coder_for\n"
        "cases = json.loads(sys.argv[1])\n"
        "print(json.dumps([[c.as_api() for c in coder_for(t).rank(o, k, 16)]"
        " for t in ('anzsco', 'osca') for o, k in cases]))\n"
    )
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, "-c", script, json.dumps(VARIED)],
            env=env, capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        outputs.add(result.stdout)
    assert len(outputs) == 1


def test_coder_for_is_cached_per_topic_and_rejects_others():
    assert coder_for("anzsco") is coder_for("anzsco")
    assert coder_for("osca") is not coder_for("anzsco")
    assert coder_for("osca").topic == "osca"
    assert coder_for("osca").threshold == THRESHOLD == 0.5
    with pytest.raises(KeyError):
        coder_for("isco")


# --- normalisation ----------------------------------------------------------------


def test_stemming_folds_plurals_and_suffixes_the_same_way_on_both_sides():
    assert stem("nurses") == stem("nursing") == stem("nurse")
    assert stem("developers") == stem("development") == stem("developing")
    assert stem("drivers") == stem("driving") == stem("drive")
    assert stem("care") == stem("carer") != stem("car")
    assert tokens("Firefighter") == tokens("fire fighter")
    assert tokens("The Registered Nurses (NZ) nec") == tokens("registered nurse")
