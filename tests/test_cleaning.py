"""Cleaning records before any API sees them."""

import pytest

from daemon.request.cleaning import batch_problem, clean, fold_text, sync_problem


@pytest.mark.parametrize("raw, folded", [
    ("café owner", "cafe owner"),
    ("Straße  sweeper", "Strasse sweeper"),
    ("“Head” chef – pastry…", '"Head" chef - pastry...'),
    ("nurse’s aide", "nurse's aide"),
    ("  tab\tand\nnewline\u00a0nbsp ", "tab and newline nbsp"),
    ("bell\x07 ringer\x7f", "bell ringer"),
    ("plain ascii", "plain ascii"),
])
def test_fold_text_gives_printable_ascii(raw, folded):
    assert fold_text(raw) == folded
    assert all(" " <= ch <= "~" for ch in fold_text(raw))


def test_missing_fields_become_empty_strings():
    record = clean(None, "cooking")
    assert record.as_api() == {"occp_text": "", "tasks_text": "cooking"}


def test_sync_limits_on_the_cleaned_text():
    assert sync_problem(clean("ab", "")) is not None
    assert sync_problem(clean("abc", "")) is None
    assert sync_problem(clean("x" * 60, "y" * 40)) is None
    too_long = sync_problem(clean("x" * 60, "y" * 41))
    assert "at most 100" in too_long and "partner tier's batch service" in too_long
    assert "partner" not in sync_problem(clean("x" * 60, "y" * 41), batch_available=True)
    # Whitespace collapsed before counting: 3 visible characters pass.
    assert sync_problem(clean("  a  b  ", "")) is None


def test_batch_limits():
    assert batch_problem(clean("x" * 200, "y" * 100)) is None
    assert "3-300" in batch_problem(clean("x" * 200, "y" * 101))
    assert batch_problem(clean("", "")) is not None


# --- properties ------------------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from daemon.request.cleaning import clean_records, record_problem  # noqa: E402
from daemon.request.messages import Record  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
record_like = st.fixed_dictionaries({}, optional={
    "recordId": json_values, "occp_text": json_values, "tasks_text": json_values, "other": json_values})


@given(st.text())
def test_folded_text_is_clean_and_folding_again_changes_nothing(text):
    folded = fold_text(text)
    assert all(" " <= ch <= "~" for ch in folded)
    assert "  " not in folded and folded == folded.strip()
    assert fold_text(folded) == folded


@given(record_like | json_values)
def test_the_record_rule_agrees_with_the_contracts_record_model(raw):
    try:
        Record.model_validate(raw)
        valid = True
    except ValueError:
        valid = False
    assert (record_problem(raw) is None) == valid


@given(st.lists(record_like | json_values, max_size=20))
def test_clean_records_sets_aside_exactly_the_records_the_rule_refuses(raws):
    cleaned, problems = clean_records(raws)
    assert len(cleaned) == len(raws)
    for index, raw in enumerate(raws):
        assert (index in problems) == (record_problem(raw) is not None) == (cleaned[index] is None)
