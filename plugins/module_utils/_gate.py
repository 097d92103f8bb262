# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Judge one traffic step: Y against X over the same interval (progressive-delivery 5.1, 6).

Private to the collection. Two kinds of sources feed the gate:

* cumulative counters (HAProxy `show stat`, Kong's `/metrics`): the gate works on deltas from a
  baseline taken at the start of the step, and restarts its baseline when a counter goes
  backwards (a reload or `clear counters` reset it) - CounterWindow;
* a Prometheus server (module_utils._prometheus.PrometheusWindow), asked for the numbers of the
  whole interval since the step began at every reading.

Either gives, at every reading, X's and Y's numbers over the step so far; the Gate waits for a
minimum sample, judges the error rates, and once the step is complete also Y's latency against X's.
"""

from __future__ import annotations

import math
import re
import time

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"
# The latency check's own results besides PASS and FAIL.
LATENCY_OFF = "off"
LATENCY_NOT_COMPARED = "not_compared"

_HAPROXY_FIELDS = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other", "econ", "eresp",
                   "wretr", "wredis", "cli_abrt", "srv_abrt")
_PROM_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>[-+0-9.eEinfINFNaN]+)')
_PROM_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

# Kong's latency histograms, per kind: (metric, value of its `type` label or None) for 3.x, then 2.x.
# 3.x exposes them only with the prometheus plugin's config.latency_metrics on; 2.x always does.
LATENCY_HISTOGRAMS = {
    "request": (("kong_request_latency_ms_bucket", None), ("kong_latency_bucket", "request")),
    "kong": (("kong_kong_latency_ms_bucket", None), ("kong_latency_bucket", "kong")),
    "upstream": (("kong_upstream_latency_ms_bucket", None), ("kong_latency_bucket", "upstream")),
}
# Counter keys holding a latency histogram's cumulative bucket counts: BUCKET_PREFIX + upper bound.
BUCKET_PREFIX = "latency_le:"


class GateError(Exception):
    """The counters could not be read."""


def _int(value):
    try:
        return int(value or 0)
    except ValueError:
        return 0


def haproxy_counters(stat_csv, backend, servers):
    """Per-server cumulative counters from `show stat` CSV, plus the averages `rtime` and `ttime` (ms)."""
    header = None
    result = {}
    for line in stat_csv.splitlines():
        if line.startswith("# "):
            header = line[2:].split(",")
            continue
        if not header or not line.strip():
            continue
        row = dict(zip(header, line.split(",")))
        if row.get("pxname") != backend or row.get("svname") not in servers:
            continue
        counters = {}
        for field in _HAPROXY_FIELDS:
            counters[field] = _int(row.get(field))
        counters["rtime_ms"] = _int(row.get("rtime"))
        counters["ttime_ms"] = _int(row.get("ttime"))
        counters["requests"] = sum(counters[f] for f in ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx",
                                                         "hrsp_other")) + counters["econ"] + counters["eresp"]
        counters["errors"] = counters["hrsp_5xx"] + counters["econ"] + counters["eresp"]
        counters["gateway_errors"] = counters["econ"] + counters["eresp"]
        counters["retries"] = counters["wretr"] + counters["wredis"]
        result[row["svname"]] = counters
    missing = sorted(set(servers) - set(result))
    if missing:
        raise GateError("HAProxy backend %s has no server named %s" % (backend, ", ".join(missing)))
    return result


REQUEST_METRICS = ("kong_http_requests_total", "kong_http_status")


def _bucket_key(le):
    bound = float(le)
    return BUCKET_PREFIX + ("+Inf" if math.isinf(bound) else repr(bound))


def prometheus_counters(text, latency_metric="request"):
    """Totals from Kong's `/metrics`: requests, 5xx, and 5xx by source (kong = gateway, service = upstream).

    Kong 3.x exposes `kong_http_requests_total` with a `source` label; 2.x exposes
    `kong_http_status`, which has none, so its 5xx count as neither gateway nor upstream.
    The latency histogram of ``latency_metric`` (LATENCY_HISTOGRAMS), summed over services and
    routes, is added as one counter per bucket (BUCKET_PREFIX + upper bound) when the node has it.
    """
    totals = {"requests": 0, "errors": 0, "gateway_errors": 0, "upstream_errors": 0, "retries": 0}
    histograms = dict(LATENCY_HISTOGRAMS[latency_metric])
    found = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _PROM_LINE.match(line)
        if not match:
            continue
        name = match.group("name")
        if name in histograms:
            labels = dict(_PROM_LABEL.findall(match.group("labels") or ""))
            if histograms[name] is not None and labels.get("type") != histograms[name]:
                continue
            try:
                key = _bucket_key(labels.get("le"))
            except (TypeError, ValueError):
                continue
            totals[key] = totals.get(key, 0) + int(float(match.group("value")))
            continue
        if name not in REQUEST_METRICS:
            continue
        found = True
        labels = dict(_PROM_LABEL.findall(match.group("labels") or ""))
        value = int(float(match.group("value")))
        totals["requests"] += value
        if labels.get("code", "").startswith("5"):
            totals["errors"] += value
            if labels.get("source") == "service":
                totals["upstream_errors"] += value
            elif "source" in labels:
                # 3.x: anything Kong answered itself ("kong"), not only what the upstream sent.
                totals["gateway_errors"] += value
    if not found:
        raise GateError("no kong_http_requests_total (3.x) or kong_http_status (2.x) in the metrics; enable the "
                        "prometheus plugin with status-code metrics on the nodes")
    return totals


def histogram_quantile(quantile, buckets):
    """The ``quantile`` (0..1) of a histogram, as Prometheus's histogram_quantile() computes it.

    ``buckets`` maps each upper bound (a float, math.inf for +Inf) to its cumulative count. The
    answer is interpolated linearly inside the bucket the rank falls in (the first bucket starts at
    0); a rank in the +Inf bucket answers the highest finite bound. None without observations or
    without a +Inf bucket.
    """
    ordered = sorted(buckets.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    counts = []
    highest = 0
    for _bound, count in ordered:
        highest = max(highest, count)  # as Prometheus does: a bucket below the one before it is raised to it
        counts.append(highest)
    total = counts[-1]
    if total <= 0:
        return None
    rank = quantile * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(ordered) - 1:
        return ordered[-2][0]
    end = ordered[index][0]
    if index == 0:
        if end <= 0:
            return end
        start, below = 0.0, 0
    else:
        start, below = ordered[index - 1][0], counts[index - 1]
    inside = counts[index] - below
    return start + (end - start) * ((rank - below) / inside if inside else 1.0)


def _buckets(counters):
    """Upper bound -> cumulative count, from the BUCKET_PREFIX keys of ``counters``."""
    return {float(key[len(BUCKET_PREFIX):]): value for key, value in counters.items()
            if key.startswith(BUCKET_PREFIX)}


NOT_CUMULATIVE = frozenset({"rtime_ms", "ttime_ms"})


def _cumulative(counters):
    return {key: value for key, value in counters.items() if isinstance(value, int) and key not in NOT_CUMULATIVE}


def _delta(now, base):
    return {key: value - base.get(key, 0) for key, value in _cumulative(now).items()}


def _sum(groups, names, key):
    return sum(groups[name][key] for name in names if name in groups)


def _latency(deltas, latest, names, quantile):
    """The group's latency over the step: the ``quantile`` of its summed histogram deltas (Kong `/metrics`),
    or the mean of its servers' HAProxy `ttime` weighted by the requests each served in the step."""
    buckets = {}
    for name in names:
        for bound, count in _buckets(deltas.get(name, {})).items():
            buckets[bound] = buckets.get(bound, 0) + count
    if buckets:
        value = histogram_quantile(quantile, buckets)
        return round(value, 1) if value is not None else None
    weighted = [(latest[name]["ttime_ms"], deltas.get(name, {}).get("requests", 0)) for name in names
                if "ttime_ms" in latest.get(name, {})]
    served = sum(weight for _value, weight in weighted if weight > 0)
    if not served:
        return None
    return round(sum(value * weight for value, weight in weighted if weight > 0) / served, 1)


def summarize(deltas, names, rtimes=None, latest=None, quantile=0.99):
    requests = _sum(deltas, names, "requests")
    errors = _sum(deltas, names, "errors")
    has_source = any("upstream_errors" in deltas.get(n, {}) for n in names)
    summary = {
        "requests": requests,
        "errors": errors,
        "error_rate": round(errors / requests, 6) if requests else None,
        "gateway_errors": _sum(deltas, names, "gateway_errors"),
        "upstream_errors": _sum(deltas, names, "upstream_errors") if has_source else None,
        "retries": _sum(deltas, names, "retries"),
    }
    if rtimes:
        values = [rtimes[n] for n in names if n in rtimes and rtimes[n]]
        summary["avg_response_ms"] = round(sum(values) / len(values), 1) if values else None
    summary["latency_ms"] = _latency(deltas, latest or {}, names, quantile)
    return summary


def judge(x, y, min_requests, max_error_rate, max_error_rate_increase, min_x_requests=None):
    """The verdict on one step's error rates, with the sentence behind it."""
    if y["requests"] < min_requests:
        return INCONCLUSIVE, ("Y served %d requests, fewer than the %d needed to judge; raise the step's traffic or "
                              "its deadline" % (y["requests"], min_requests))
    y_rate = y["error_rate"] or 0.0
    if y_rate > max_error_rate:
        return FAIL, ("Y's error rate %.4f%% (%d of %d) is above the limit %.4f%%"
                      % (100 * y_rate, y["errors"], y["requests"], 100 * max_error_rate))
    if x["requests"] >= (min_x_requests if min_x_requests is not None else min_requests):
        x_rate = x["error_rate"] or 0.0
        if y_rate - x_rate > max_error_rate_increase:
            return FAIL, ("Y's error rate %.4f%% exceeds X's %.4f%% over the same interval by more than %.4f points"
                          % (100 * y_rate, 100 * x_rate, 100 * max_error_rate_increase))
        return PASS, ("Y's error rate %.4f%% (%d of %d) is within the limit %.4f%% and within %.4f points of X's "
                      "%.4f%%" % (100 * y_rate, y["errors"], y["requests"], 100 * max_error_rate,
                                  100 * max_error_rate_increase, 100 * x_rate))
    return PASS, ("Y's error rate %.4f%% (%d of %d) is within the limit %.4f%% (X served too little to compare)"
                  % (100 * y_rate, y["errors"], y["requests"], 100 * max_error_rate))


class LatencyLimit:
    """Y's latency must not exceed X's by more than ``max_ratio`` times AND more than ``floor_ms``.

    ``statistic`` names what the source measures (the step's quantile from histograms, or HAProxy's
    average); ``max_ratio`` 0 turns the check off (the numbers are still reported).
    """

    def __init__(self, max_ratio=0.0, floor_ms=0.0, quantile=0.99, statistic=None):
        self.max_ratio = max_ratio
        self.floor_ms = floor_ms
        self.quantile = quantile
        self.statistic = statistic or "p%g latency" % (100 * quantile)

    @property
    def enabled(self):
        return self.max_ratio > 0

    def limit_ms(self, x_ms):
        return round(max(x_ms * self.max_ratio, x_ms + self.floor_ms), 1)

    def describe(self):
        return {"statistic": self.statistic, "quantile": self.quantile, "max_ratio": self.max_ratio,
                "floor_ms": self.floor_ms}


def judge_latency(x, y, limit, min_requests, min_x_requests=None):
    """Y's latency against X's over the same step: a dict with ``result`` (pass, fail, off, not_compared),
    the numbers and the sentence behind it. Called once the step has its minimum sample."""
    x_ms, y_ms = x.get("latency_ms"), y.get("latency_ms")
    info = dict(limit.describe(), x_ms=x_ms, y_ms=y_ms, limit_ms=None)
    if not limit.enabled:
        return dict(info, result=LATENCY_OFF, reason="the latency check is off (max_latency_ratio 0)")
    if x["requests"] < (min_x_requests if min_x_requests is not None else min_requests):
        return dict(info, result=LATENCY_NOT_COMPARED,
                    reason="latency not compared: X served %d requests, too few to compare" % x["requests"])
    if y_ms is None or x_ms is None:
        side = "Y's" if y_ms is None else "X's"
        return dict(info, result=LATENCY_NOT_COMPARED,
                    reason="latency not compared: the source has no %s for %s nodes over the step (for Kong's "
                           "histograms, turn on the prometheus plugin's latency_metrics)" % (limit.statistic, side))
    limit_ms = limit.limit_ms(x_ms)
    info["limit_ms"] = limit_ms
    if y_ms > limit_ms:
        return dict(info, result=FAIL,
                    reason="Y's %s %.1f ms is above the limit %.1f ms: more than %g times X's %.1f ms over the same "
                           "interval and more than %g ms above it" % (limit.statistic, y_ms, limit_ms,
                                                                      limit.max_ratio, x_ms, limit.floor_ms))
    return dict(info, result=PASS,
                reason="Y's %s %.1f ms is within the limit %.1f ms (X's %.1f ms, times %g or plus %g ms)"
                       % (limit.statistic, y_ms, limit_ms, x_ms, limit.max_ratio, limit.floor_ms))


class CounterWindow:
    """X's and Y's numbers since the step began, from cumulative counters read at every reading.

    ``read()`` returns {name: {counter: value}}; the X and Y groups are lists of those names.
    """

    def __init__(self, read, x_names, y_names, quantile=0.99):
        self.read = read
        self.x_names = list(x_names)
        self.y_names = list(y_names)
        self.quantile = quantile
        self.resets = 0
        self.latest = {}
        self.accumulated = {}

    def begin(self):
        self.latest = self.read()
        self.accumulated = {name: {} for name in self.latest}

    def observe(self):
        now = self.read()
        for name, counters in now.items():
            prev = self.latest.get(name, {})
            if any(value < prev.get(k, 0) for k, value in _cumulative(counters).items()):
                self.resets += 1
                prev = {}
            acc = self.accumulated.setdefault(name, {})
            for key, value in _delta(counters, prev).items():
                acc[key] = acc.get(key, 0) + value
        self.latest = now
        rtimes = {name: c.get("rtime_ms") for name, c in now.items()}
        return (summarize(self.accumulated, self.x_names, rtimes, now, self.quantile),
                summarize(self.accumulated, self.y_names, rtimes, now, self.quantile))


class Gate:
    """Observe until enough of Y's traffic and time, or a deadline, then judge.

    ``read`` is either a callable returning cumulative counters per name (see CounterWindow) or a
    window object with ``begin()``, ``observe()`` -> (x, y) and ``resets``.
    """

    def __init__(self, read, x_names, y_names, min_requests, min_duration, max_duration, max_error_rate,
                 max_error_rate_increase, interval=1.0, clock=time.monotonic, sleep=time.sleep, latency=None):
        self.latency = latency or LatencyLimit()
        self.window = read if hasattr(read, "observe") else CounterWindow(read, x_names, y_names,
                                                                          self.latency.quantile)
        self.min_requests = min_requests
        self.min_duration = min_duration
        self.max_duration = max_duration
        self.max_error_rate = max_error_rate
        self.max_error_rate_increase = max_error_rate_increase
        self.interval = interval
        self.clock = clock
        self.sleep = sleep

    def run(self):
        start = self.clock()
        self.window.begin()
        samples = 0
        x_before = 0
        while True:
            self.sleep(self.interval)
            x, y = self.window.observe()
            samples += 1
            elapsed = self.clock() - start
            verdict, reason = judge(x, y, self.min_requests, self.max_error_rate, self.max_error_rate_increase)
            # Y is compared with X once X has served the minimum sample too. While X still serves
            # (a step below 100 %), wait for it, up to the deadline; X that serves nothing more (the
            # last step, the soak) is not waited for.
            x_comparable = x["requests"] >= self.min_requests or x["requests"] <= x_before
            x_before = x["requests"]
            enough = elapsed >= self.min_duration and y["requests"] >= self.min_requests and x_comparable
            early_fail = verdict == FAIL and y["requests"] >= self.min_requests
            if enough or early_fail or elapsed >= self.max_duration:
                return self._result(verdict, reason, x, y, elapsed, samples)

    def _result(self, verdict, reason, x, y, elapsed, samples):
        if verdict == PASS:
            # Latency is judged only on a complete step: an early reading of a quantile is noise.
            latency = judge_latency(x, y, self.latency, self.min_requests)
            if latency["result"] == FAIL:
                verdict, reason = FAIL, latency["reason"]
            elif latency["result"] != LATENCY_OFF:
                reason = "%s; %s" % (reason, latency["reason"])
        else:
            latency = dict(self.latency.describe(), x_ms=x.get("latency_ms"), y_ms=y.get("latency_ms"),
                           limit_ms=None, result=LATENCY_OFF if not self.latency.enabled else LATENCY_NOT_COMPARED,
                           reason="latency not judged: the step ended %s" % verdict)
        hint = self.window.hint(x, y) if verdict == INCONCLUSIVE and hasattr(self.window, "hint") else None
        if hint:
            reason = "%s (%s)" % (reason, hint)
        return {"verdict": verdict, "reason": reason, "x": x, "y": y, "latency": latency,
                "duration_seconds": round(elapsed, 2), "samples": samples,
                "counter_resets": self.window.resets,
                "thresholds": {"min_requests": self.min_requests, "max_error_rate": self.max_error_rate,
                               "max_error_rate_increase": self.max_error_rate_increase,
                               "min_duration": self.min_duration, "max_duration": self.max_duration,
                               "max_latency_ratio": self.latency.max_ratio,
                               "latency_floor_ms": self.latency.floor_ms,
                               "latency_quantile": self.latency.quantile}}
