"""The operator's memory of its own writes: used while the indices trail, dropped after."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from tutor_operator.decisions import SessionView
from tutor_operator.reconcile import Written

pytestmark = pytest.mark.unit

KEY = ("tutors", "tutor-7")
CREATED = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)


def view(name: str, rv: str, **fields: object) -> SessionView:
    return SessionView(name=name, created=CREATED, resource_version=rv, **fields)


def test_a_write_stands_in_for_the_index_until_the_index_moves_on() -> None:
    written = Written()
    stale = [view("a", "5"), view("b", "6")]
    pinned = view("a", "9", phase="Active", pod="p1")
    written.session(KEY, "5", pinned)
    assert written.sessions_of(KEY, stale) == [pinned, stale[1]]
    assert written.sessions_of(KEY, stale) == [pinned, stale[1]]  # still behind: still ours
    caught_up = [view("a", "9", phase="Active", pod="p1", last_activity=CREATED), stale[1]]
    assert written.sessions_of(KEY, caught_up) == caught_up
    assert written.sessions == {KEY: {}}  # forgotten once the index is newer


def test_a_session_found_gone_stays_gone_and_is_forgotten_with_it() -> None:
    written = Written()
    indexed = view("a", "5")
    written.session(KEY, "5", dataclasses.replace(indexed, deleting=True))
    assert written.sessions_of(KEY, [indexed])[0].deleting
    assert written.sessions_of(KEY, []) == [] and written.sessions == {KEY: {}}


def test_an_engine_status_write_stands_in_while_the_index_has_the_old_version() -> None:
    written = Written()
    old = {"metadata": {"resourceVersion": "3"}, "status": {"sessions": 1}}
    new = {"metadata": {"resourceVersion": "4"}, "status": {"sessions": 2}}
    written.engines[KEY] = ("3", new)
    assert written.engine(KEY, old) is new
    assert written.engine(KEY, new) is new and KEY not in written.engines
