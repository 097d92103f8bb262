"""kongemu.faults: the emulator's test-only fault injection file.

Emulator only: real Kong has no such file; on real Kong, e2e tests inject faults by real
means (e2e_helpers.y_overload_fault, a bad kong.conf value, a PostgreSQL trigger)."""

from __future__ import annotations

import json
import os

# labfixtures puts tests/lab on sys.path for kongemu
import labfixtures  # noqa: F401  pylint: disable=unused-import

from kongemu import faults


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_is_exact_and_follows_the_file(tmp_path):
    clock = FakeClock()
    f = faults.Faults(str(tmp_path), clock=clock)
    assert f.next_fault() is None
    path = tmp_path / faults.FAULTS_FILE
    path.write_text(json.dumps({"proxy_5xx_rate": 0.25, "status": 502}), encoding="utf-8")
    clock.now += 1
    hits = [f.next_fault() for _request in range(100)]
    assert sum(1 for h in hits if h is not None) == 25
    assert {h.status for h in hits if h is not None} == {502}
    os.unlink(path)
    clock.now += 1
    assert all(f.next_fault() is None for _request in range(10))


def test_an_unusable_file_turns_faults_off():
    assert faults.parse("not json").rate == 0.0
    assert faults.parse('{"proxy_5xx_rate": 2}').rate == 0.0
    assert faults.parse('{"proxy_5xx_rate": 0.5, "status": 200}').rate == 0.0
    assert faults.parse('{"proxy_5xx_rate": 1}').status == 503
