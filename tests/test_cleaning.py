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
