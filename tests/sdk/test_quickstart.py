"""The README quick start (examples/quickstart/quickstart.py) against a real server."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "quickstart"))
import quickstart


def test_quickstart_session_forgets_the_class_and_keeps_the_rest(client, capsys):
    session = quickstart.run(client)
    before, after = session.before, session.after
    others = [c for c in range(10) if c != quickstart.CLASS]
    assert before[quickstart.CLASS] > 0.85
    assert after[quickstart.CLASS] <= 0.05
    mean = lambda acc: sum(acc[c] for c in others) / len(others)  # noqa: E731
    assert mean(after) >= mean(before) - 0.02
    quickstart.print_table(before, after)
    table = capsys.readouterr().out
    assert "| 3 (removed) |" in table and table.count("\n") == 12
    # the job's own wall time, next to retraining with the bundle's recipe
    assert 0 < session.job_seconds < 600
    retraining = quickstart.retraining_seconds()
    quickstart.print_cost(session.job_seconds, retraining)
    line = capsys.readouterr().out
    assert f"({session.job_seconds / retraining:.2f}× retraining)" in line
