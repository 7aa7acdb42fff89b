"""Progress lines without a terminal: at most one per interval, and a final line that is never a repeat."""

from __future__ import annotations

import pytest

from ekd.training.progress import Progress


def test_final_line_is_printed_once(capsys: pytest.CaptureFixture) -> None:
    bar = Progress(3, "every", log_every=0.0)
    for _ in range(3):
        bar.update(1, loss=0.5)
    bar.close()
    assert capsys.readouterr().err.count("every: 3/3 it") == 1

    bar = Progress(3, "quiet", log_every=1e9)
    for _ in range(3):
        bar.update(1, loss=0.5)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("quiet: 3/3 it") and "loss=0.5" in lines[0]
