"""A fresh SQLite job store per test."""

from __future__ import annotations

import pytest

from jobs.db import Database


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'gif.db'}")
    database.create_all()
    yield database
    database.dispose()
