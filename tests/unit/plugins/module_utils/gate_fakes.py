"""Fakes shared by the traffic gate's unit tests: a clock that sleeps by moving its own time, and a
Gate that reads scripted readings, one per interval, so a whole step runs in no time."""

from ansible_collections.kongops.upgrade.plugins.module_utils._gate import Gate

GATE_OPTIONS = dict(min_requests=100, min_duration=5, max_duration=60, max_error_rate=0.01,
                    max_error_rate_increase=0.005, interval=1.0)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def scripted_gate(script, x_names=("x1",), y_names=("y1",), **kwargs):
    """A Gate over the readings of ``script`` (GATE_OPTIONS, overridden by ``kwargs``)."""
    clock = FakeClock()
    readings = iter(script)
    options = {**GATE_OPTIONS, **kwargs}
    return Gate(lambda: next(readings), list(x_names), list(y_names), clock=clock.time, sleep=clock.sleep,
                **options)
