"""Deterministic occupation coder standing in for the ABS coding service's model.

Given a job title (``occp_text``) and duties (``tasks_text``) it ranks a
classification's occupation codes with confidences, from real ABS titles,
alternative titles, specialisations and unit-group tasks (see ``classification``).

Scoring, per candidate occupation:
  * title similarity: idf-weighted Dice overlap between the job-title words and
    the best of the occupation's titles, nudged up when a whole title is present;
  * task coverage: idf-weighted share of the input words found in the
    occupation's description and unit-group tasks;
  * quality = a fixed blend of the two (titles dominate); a unit group's "nec"
    occupation, its catch-all, also gets a share of its best sibling's quality;
  * confidence = quality x sqrt(softmax share of quality among candidates), so a
    clear winner keeps its quality and near-ties split it.
Only candidates reached through the inverted indexes are scored. Text that
matches nothing at all (gibberish, or empty) is unsuccessful and ranks the
"nec" (not elsewhere classified) occupations in code order, each with the
confidence of a uniform guess, 1 / number of codes: a classifier's answer
when it has no evidence, and never an empty ranking.
"""

from __future__ import annotations

import gc
import heapq
import math
import operator
from dataclasses import dataclass
from functools import cache

from .classification import TOPIC_FILES, TopicIndex, load_topic, unique_tokens

THRESHOLD = 0.5
# Share of quality taken from title similarity, by which texts are present.
TITLE_SHARE_WITH_TASKS = 0.7
TITLE_SHARE_TITLE_ONLY = 0.9
TITLE_SHARE_TASKS_ONLY = 0.3  # duties alone rarely name the job: mostly task coverage
# Share of the gap to 1 closed when every word of a title is in the job title,
# so "senior software engineer" still counts as naming "Software Engineer".
WHOLE_TITLE_BONUS = 0.3
# Job-title words are weaker evidence than duties when matched against tasks.
OCCP_WORDS_AS_TASK_EVIDENCE = 0.5
# Text that fits an occupation also fits, less well, its unit group's catch-all
# "nec" occupation (as the ABS coder's own example ranks 261399 third).
NEC_RESIDUAL_SHARE = 0.75
# Softmax sharpness: a rival 0.1 of quality behind costs the leader little,
# an exact tie halves its share.
SHARPNESS = 10.0
# Titles sharing only a generic word with the text ("assistant", "manager") are
# ignored below this share of the best title match.
TITLE_MIN_SHARE = 0.3
# Occupations matched on duties alone are ranked only with at least this share
# of the best duty match.
TASK_ONLY_MIN_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Code:
    category: str
    label: str
    confidence: float

    def as_api(self) -> dict:
        return {"codeCategory": self.category, "codeLabel": self.label, "codeConfidence": self.confidence}


class Coder:
    """Codes free text against one classification topic. Immutable after construction."""

    def __init__(self, topic: str, index: TopicIndex, threshold: float = THRESHOLD) -> None:
        self.topic = topic
        self.threshold = threshold
        self._index = index

    def rank(self, occp_text: str, tasks_text: str, limit: int) -> list[Code]:
        """Best codes first, at most ``limit``; equal confidences ordered by code."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        quality = self._match_quality(occp_text, tasks_text)
        if not quality:
            return self._without_evidence(limit)
        best = max(quality.values())
        # fsum is exact, so the total does not depend on the order of the terms.
        total = math.fsum([math.exp(SHARPNESS * (q - best)) for q in quality.values()])
        # Target ids follow code order, so (-quality, id) ranks equal qualities by code.
        ranked = heapq.nsmallest(limit, zip(map(operator.neg, quality.values()), quality.keys()))
        codes, labels = self._index.codes, self._index.labels
        rows = []
        for negated, target in ranked:
            share = math.exp(SHARPNESS * (-negated - best)) / total
            confidence = min(1.0, -negated * math.sqrt(share))
            rows.append((-confidence, codes[target], labels[target]))
        # Confidence grows with quality, so this only reorders qualities a hair
        # apart whose confidences came out equal. Confidences are not rounded:
        # rounding would tie codes on either side of ``limit`` and make a
        # shorter ranking differ from the start of a longer one.
        rows.sort()
        return [Code(code, label, -negated) for negated, code, label in rows]

    def _without_evidence(self, limit: int) -> list[Code]:
        """The ranking for text that matches nothing (see the module docstring)."""
        index = self._index
        uniform = 1.0 / len(index.codes)
        return [Code(index.codes[t], index.labels[t], uniform) for t in index.nec_targets[:limit]]

    def code(self, occp_text: str, tasks_text: str, limit: int) -> tuple[bool, list[Code]]:
        """(successful, ranking): successful iff the top confidence reaches the threshold."""
        ranked = self.rank(occp_text, tasks_text, limit)
        return bool(ranked) and ranked[0].confidence >= self.threshold, ranked

    def _match_quality(self, occp_text: str, tasks_text: str) -> dict[int, float]:
        """Target id -> quality in [0, 1], for the targets worth ranking."""
        occp_words = unique_tokens(occp_text)
        task_words = unique_tokens(tasks_text)
        if occp_words:
            title_words = occp_words
            title_share = TITLE_SHARE_WITH_TASKS if task_words else TITLE_SHARE_TITLE_ONLY
        elif task_words:
            title_words, title_share = task_words, TITLE_SHARE_TASKS_ONLY
        else:
            return {}
        similarity = self._title_similarity(title_words)
        quality = self._task_coverage(occp_words, task_words, 1.0 - title_share, similarity)
        for target, value in similarity.items():
            quality[target] = quality.get(target, 0.0) + title_share * value
        nec_sibling = self._index.nec_sibling
        for target in nec_sibling.keys() & quality.keys():  # order-free: only maxima are taken
            residual, value = nec_sibling[target], NEC_RESIDUAL_SHARE * quality[target]
            if value > quality.get(residual, 0.0):
                quality[residual] = value
        return quality

    def _title_similarity(self, words: list[str]) -> dict[int, float]:
        """Target id -> best similarity in [0, 1] between ``words`` and one of its titles."""
        index = self._index
        idf, unknown = index.title_idf, index.unknown_title_idf
        query_weight = sum(idf.get(word, unknown) for word in words)
        overlap: dict[int, float] = {}
        get = overlap.get
        for word in words:
            title_ids = index.title_postings.get(word)
            if title_ids:
                weight = idf[word]
                for title_id in title_ids:
                    overlap[title_id] = get(title_id, 0.0) + weight
        best: dict[int, float] = {}
        title_info = index.title_info
        for title_id, shared in overlap.items():
            target, weight, factor = title_info[title_id]
            similarity = 2.0 * shared / (query_weight + weight)
            if shared >= weight * 0.9999:  # every word of the title is in the text
                similarity += WHOLE_TITLE_BONUS * (1.0 - similarity)
            similarity *= factor
            if similarity > best.get(target, 0.0):
                best[target] = similarity
        if not best:
            return best
        cut = TITLE_MIN_SHARE * max(best.values())
        return {target: value for target, value in best.items() if value >= cut}

    def _task_coverage(
        self, occp_words: list[str], task_words: list[str], scale: float, title_matches: dict[int, float]
    ) -> dict[int, float]:
        """Target id -> ``scale`` x idf-weighted share of the input words found in its duties.

        Targets matched on duties alone are kept only with at least
        TASK_ONLY_MIN_SHARE of the best duty match: a sliver of shared task
        words would crowd the ranking (and cost time) without ever leading it."""
        index = self._index
        idf, unknown = index.task_idf, index.unknown_task_idf
        group_postings, description_postings = index.group_postings, index.description_postings
        evidence = dict.fromkeys(occp_words, OCCP_WORDS_AS_TASK_EVIDENCE)
        evidence.update(dict.fromkeys(task_words, 1.0))
        weights = {
            word: strength * idf.get(word, unknown)
            for word, strength in evidence.items()
            # a word too common to tell occupations apart is no evidence either way
            if word not in idf or word in group_postings or word in description_postings
        }
        total = sum(weights.values())
        if not total:
            return {}
        scale /= total
        by_group: dict[int, float] = {}
        by_description: dict[int, float] = {}
        group_get, description_get = by_group.get, by_description.get
        for word, weight in weights.items():
            weight *= scale
            for group in group_postings.get(word, ()):
                by_group[group] = group_get(group, 0.0) + weight
            for target in description_postings.get(word, ()):
                by_description[target] = description_get(target, 0.0) + weight
        if not by_group and not by_description:
            return {}

        target_group = index.target_group
        with_description = {t: v + group_get(target_group[t], 0.0) for t, v in by_description.items()}
        best = max(max(by_group.values(), default=0.0), max(with_description.values(), default=0.0))
        cut = TASK_ONLY_MIN_SHARE * best
        coverage: dict[int, float] = {}
        for group, value in by_group.items():
            if value >= cut:
                coverage.update(dict.fromkeys(index.group_members[group], value))
        coverage.update((t, v) for t, v in with_description.items() if v >= cut)
        for target in title_matches:
            if target not in coverage:
                value = group_get(target_group[target], 0.0) + description_get(target, 0.0)
                if value:
                    coverage[target] = value
        return coverage


@cache
def coder_for(topic: str) -> Coder:
    """The process-wide coder for ``topic`` ("anzsco" or "osca"); KeyError for any other."""
    return Coder(topic, load_topic(topic))


def load_coders() -> None:
    """Build every topic's coder now, so that no request pays for loading one."""
    if coder_for.cache_info().currsize == len(TOPIC_FILES):
        return
    for topic in TOPIC_FILES:
        coder_for(topic)
    # The indexes live as long as the process: keep the garbage collector from walking
    # their tens of thousands of objects at every full collection, which slowed requests.
    gc.freeze()
