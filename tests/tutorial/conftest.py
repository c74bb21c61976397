"""The exercise checkers run in the reader's mode here (not the book's strict one) unless a test sets it."""

import pytest

from dsnot_lite.tutorial.exercises import checking


@pytest.fixture(autouse=True)
def _not_strict(monkeypatch):
    monkeypatch.delenv(checking.STRICT_ENV, raising=False)
