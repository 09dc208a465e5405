"""kill -9 at random moments during 4-way SMTP delivery of journal reports with an archive user
present, 20 times (issue 10); the 100-cycle run is `python3 tests/e2e/crashloop.py 100`, with
its figures in RELIABILITY.md."""

from __future__ import annotations

import crashloop


def test_crash_loop_loses_nothing_acknowledged():
    result = crashloop.run(20, seed=20261203)
    print(result)
    assert result["acknowledged"] > 100, result
    assert not crashloop.failed(result), result
