"""The transition table of the job state machine."""

from __future__ import annotations

import itertools

import pytest

from jobs.states import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    JobStatus,
    can_transition,
    check_transition,
    is_terminal,
)

S = JobStatus


def test_terminal_states_have_no_exits():
    for status in TERMINAL:
        assert is_terminal(status) and TRANSITIONS[status] == frozenset()
        for other in JobStatus:
            assert not can_transition(status, other)


def test_the_documented_edges_and_nothing_else():
    expected = {
        (S.VALIDATING, S.QUEUED), (S.VALIDATING, S.FAILED), (S.VALIDATING, S.CANCELLED),
        (S.QUEUED, S.RUNNING), (S.QUEUED, S.CANCELLED), (S.QUEUED, S.FAILED),
        (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.QUEUED), (S.RUNNING, S.CANCELLING),
        (S.CANCELLING, S.CANCELLED), (S.CANCELLING, S.SUCCEEDED), (S.CANCELLING, S.FAILED),
    }  # fmt: skip
    actual = {(a, b) for a, b in itertools.product(JobStatus, JobStatus) if can_transition(a, b)}
    assert actual == expected


def test_illegal_transition_raises():
    check_transition("queued", "running")
    with pytest.raises(IllegalTransition):
        check_transition("succeeded", "queued")
    with pytest.raises(IllegalTransition):
        check_transition("running", "cancelled")  # must pass through cancelling


def test_spelling_is_cancelled_only():
    with pytest.raises(ValueError):
        JobStatus("canceled")
