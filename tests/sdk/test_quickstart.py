"""The README quick start (examples/quickstart/quickstart.py) against a real server."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "quickstart"))
import quickstart


def test_quickstart_session_forgets_the_class_and_keeps_the_rest(client, capsys):
    before, after = quickstart.run(client)
    others = [c for c in range(10) if c != quickstart.CLASS]
    assert before[quickstart.CLASS] > 0.85
    assert after[quickstart.CLASS] <= 0.05
    mean = lambda acc: sum(acc[c] for c in others) / len(others)  # noqa: E731
    assert mean(after) >= mean(before) - 0.02
    quickstart.print_table(before, after)
    table = capsys.readouterr().out
    assert "| 3 (removed) |" in table and table.count("\n") == 12
