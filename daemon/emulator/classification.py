"""Classification data for the occupation coder: text normalisation and search indexes.

The data files in ``data/`` are built by ``data/build.py`` from ABS publications
(Source: Australian Bureau of Statistics, © Commonwealth of Australia, CC BY 4.0).
Everything here runs once per topic at load; the coder only reads the result.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
UNITS_FILE = "anzsco2022_units.json.gz"
TOPIC_FILES = {"anzsco": "anzsco2022.json.gz", "osca": "osca2024.json.gz"}

# How much a title of each kind counts: an exact match on a specialisation or a
# unit-group title is weaker evidence than one on the occupation's own titles.
TITLE_KIND_FACTORS = {
    "p": 1.0,  # principal title
    "a": 0.95,  # alternative title: a shade below, so a principal title wins a tie
    "c": 1.0,  # colloquial alias (data/build.py)
    "s": 0.9,  # specialisation
    "n": 0.9,  # title listed under an "nec" occupation
    "u": 0.75,  # unit-group title, shared by every occupation in the group
}
# Task words found in more than this share of occupations say little; dropping
# them also keeps the postings the coder walks short.
MAX_TASK_DOC_SHARE = 0.15

STOPWORDS = frozenset(
    "a about all also am an and any are as at be been being both but by can do does doing e each eg etc "
    "for from g had has have he her his i if in include includes including into is its me may my no not "
    "of on or other others our out per she so such than that the their them then there these they this "
    "those through to up us use used uses using various via was we were which who will with within would "
    "you your nec nfd general aus nz elsewhere classified".split()
)
# Abbreviations and compounds written both ways ("firefighter" / "fire fighter"),
# applied to data and queries alike.
WORD_EXPANSIONS = {
    "it": ("ict",),
    "tv": ("television",),
    "mgr": ("manager",),
    "asst": ("assistant",),
    "firefighter": ("fire", "fighter"),
    "firefighters": ("fire", "fighter"),
    "childcare": ("child", "care"),
    "kitchenhand": ("kitchen", "hand"),
    "deckhand": ("deck", "hand"),
    "farmhand": ("farm", "hand"),
    "wastewater": ("waste", "water"),
}
# Words the suffix rules below would conflate with unrelated ones ("care" / "car").
STEM_EXCEPTIONS = {
    "care": "care", "cares": "care", "caring": "care", "carer": "care", "carers": "care",
    "tower": "tower", "towers": "tower",
}  # fmt: skip
# (suffix, shortest stem that may remain); stripped up to twice, so
# "engineering" -> "engineer" -> "engine" and "registered" -> "register" -> "regist".
SUFFIX_RULES = (("ing", 3), ("ment", 4), ("ion", 4), ("ant", 4), ("er", 3), ("or", 4), ("ed", 3))

_WORD = re.compile(r"[a-z0-9]+")


@lru_cache(maxsize=1 << 16)  # bounded: the emulator sees arbitrary words
def stem(word: str) -> str:
    """Light, consistent suffix stripping: plurals, -ing, -er, -ed, -ment, -ion, -ant, -or, -e."""
    if word in STEM_EXCEPTIONS:
        return STEM_EXCEPTIONS[word]
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for _ in range(2):
        for suffix, min_stem in SUFFIX_RULES:
            if word.endswith(suffix) and len(word) - len(suffix) >= min_stem:
                word = word[: -len(suffix)]
                break
        else:
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    if len(word) >= 4 and word[-1] == word[-2] and word[-1] not in "lsz":
        word = word[:-1]  # "programm" -> "program", "fitt" -> "fit"
    return word


def tokens(text: str) -> list[str]:
    """Stemmed content words of ``text``, in order, repeats kept."""
    found = []
    for word in _WORD.findall(text.lower()):
        if len(word) < 2 or word in STOPWORDS:
            continue
        for part in WORD_EXPANSIONS.get(word, (word,)):
            found.append(stem(part))
    return found


def unique_tokens(text: str) -> list[str]:
    """Distinct stemmed words in first-seen order (never a set: its order varies by process)."""
    return list(dict.fromkeys(tokens(text)))


def _idf(doc_count: int, df: int) -> float:
    return math.log(1.0 + doc_count / df)


@dataclass(slots=True)
class TopicIndex:
    """Inverted indexes over one classification's target codes; built once, read-only after.

    Target ids number the targets in code order."""

    codes: list[str]
    labels: list[str]
    nec_sibling: dict[int, int]  # target id -> the "nec" occupation of its unit group, if any
    nec_targets: tuple[int, ...]  # every "nec" occupation, in code order
    # Titles: one entry per distinct (target, normalised title wording).
    title_info: list[tuple[int, float, float]]  # (target id, summed idf of its words, kind factor)
    title_postings: dict[str, tuple[int, ...]]  # word -> title ids
    title_idf: dict[str, float]
    unknown_title_idf: float  # for query words no title has: as rare as can be
    # Duties: a target's unit-group tasks plus its own description. Targets with
    # the same unit groups share one task group, indexed once; description words
    # not already in the group's text are indexed per target.
    target_group: list[int]  # target id -> task group id
    group_members: list[tuple[int, ...]]  # task group id -> target ids
    group_postings: dict[str, tuple[int, ...]]  # word -> task group ids
    description_postings: dict[str, tuple[int, ...]]  # word -> target ids
    task_idf: dict[str, float]  # over targets; includes too-common words, which have no postings
    unknown_task_idf: float


def load_topic(topic: str) -> TopicIndex:
    """Read a topic's data file (KeyError for an unknown topic) and build its indexes."""
    file_name = TOPIC_FILES[topic]
    with gzip.open(DATA_DIR / UNITS_FILE, "rt", encoding="utf-8") as f:
        unit_texts: dict[str, str] = json.load(f)
    with gzip.open(DATA_DIR / file_name, "rt", encoding="utf-8") as f:
        targets = json.load(f)["targets"]
    return build_index(targets, unit_texts)


def _postings(docs: list[list[str]], keep: set[str] | None = None) -> dict[str, tuple[int, ...]]:
    """word -> ids of the documents holding it, in id order."""
    postings: dict[str, list[int]] = {}
    for doc_id, doc in enumerate(docs):
        for word in doc:
            if keep is None or word in keep:
                postings.setdefault(word, []).append(doc_id)
    return {word: tuple(ids) for word, ids in postings.items()}


def _document_frequency(docs: list[list[str]]) -> dict[str, int]:
    df: dict[str, int] = {}
    for doc in docs:
        for word in doc:
            df[word] = df.get(word, 0) + 1
    return df


def build_index(targets: list, unit_texts: dict[str, str]) -> TopicIndex:
    """``targets``: [code, label, [[title, kind], ...], description, [unit codes]] each."""
    targets = sorted(targets, key=lambda target: target[0])
    codes = [target[0] for target in targets]
    unit_words = {unit: unique_tokens(text) for unit, text in unit_texts.items()}

    title_target, title_factor, title_words = [], [], []
    group_ids: dict[tuple[str, ...], int] = {}  # sorted unit codes -> task group id
    group_docs: list[list[str]] = []
    target_group, description_docs, task_docs = [], [], []
    for target_id, (_, _, titles, description, units) in enumerate(targets):
        best_factor: dict[tuple[str, ...], float] = {}
        for title, kind in titles:
            words = tuple(unique_tokens(title))
            if words:
                best_factor[words] = max(best_factor.get(words, 0.0), TITLE_KIND_FACTORS[kind])
        for words, factor in best_factor.items():
            title_target.append(target_id)
            title_factor.append(factor)
            title_words.append(words)
        group_key = tuple(sorted(units))
        if group_key not in group_ids:
            group_ids[group_key] = len(group_docs)
            group_docs.append(list(dict.fromkeys(word for unit in group_key for word in unit_words[unit])))
        target_group.append(group_ids[group_key])
        group_doc = group_docs[target_group[-1]]
        in_group = frozenset(group_doc)  # membership only, never iterated
        description_docs.append([word for word in unique_tokens(description) if word not in in_group])
        task_docs.append(group_doc + description_docs[-1])

    # Title idf counts distinct title wordings, so a unit title copied onto each
    # of its occupations is counted once.
    distinct_titles = list(dict.fromkeys(title_words))
    title_idf = {word: _idf(len(distinct_titles), df) for word, df in _document_frequency(distinct_titles).items()}

    task_df = _document_frequency(task_docs)
    task_idf = {word: _idf(len(task_docs), df) for word, df in task_df.items()}
    telling = {word for word, df in task_df.items() if df <= MAX_TASK_DOC_SHARE * len(task_docs)}
    group_members: list[list[int]] = [[] for _ in group_docs]
    for target_id, group_id in enumerate(target_group):
        group_members[group_id].append(target_id)

    # Both classifications code a unit group's residual ("nec") occupation as
    # its 4-digit unit code followed by 99.
    code_ids = {code: target_id for target_id, code in enumerate(codes)}
    nec_sibling = {
        target_id: code_ids[code[:4] + "99"]
        for target_id, code in enumerate(codes)
        if not code.endswith("99") and code[:4] + "99" in code_ids
    }

    return TopicIndex(
        codes=codes,
        labels=[target[1] for target in targets],
        nec_sibling=nec_sibling,
        nec_targets=tuple(target_id for target_id, code in enumerate(codes) if code.endswith("99")),
        title_info=[
            (target, sum(title_idf[word] for word in words), factor)
            for target, words, factor in zip(title_target, title_words, title_factor)
        ],
        title_postings=_postings(title_words),
        title_idf=title_idf,
        unknown_title_idf=_idf(len(distinct_titles), 1),
        target_group=target_group,
        group_members=[tuple(members) for members in group_members],
        group_postings=_postings(group_docs, telling),
        description_postings=_postings(description_docs, telling),
        task_idf=task_idf,
        unknown_task_idf=_idf(len(task_docs), 1),
    )
