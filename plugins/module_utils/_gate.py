# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Judge one traffic step: Y against X over the same interval (progressive-delivery 5.1, 6).

Private to the collection. Counters are cumulative, so the gate works on deltas from
a baseline taken at the start of the step, and restarts its baseline when a counter
goes backwards (a reload or `clear counters` reset it).
"""

from __future__ import annotations

import re
import time

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"

_HAPROXY_FIELDS = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other", "econ", "eresp",
                   "wretr", "wredis", "cli_abrt", "srv_abrt")
_PROM_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>[-+0-9.eEinfINFNaN]+)')
_PROM_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class GateError(Exception):
    """The counters could not be read."""


def haproxy_counters(stat_csv, backend, servers):
    """Per-server cumulative counters from `show stat` CSV."""
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
            try:
                counters[field] = int(row.get(field) or 0)
            except ValueError:
                counters[field] = 0
        try:
            counters["rtime_ms"] = int(row.get("rtime") or 0)
        except ValueError:
            counters["rtime_ms"] = 0
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


def prometheus_counters(text):
    """Totals from Kong's `/metrics`: requests, 5xx, and 5xx by source (kong = gateway, service = upstream).

    Kong 3.x exposes `kong_http_requests_total` with a `source` label; 2.x exposes
    `kong_http_status`, which has none, so its 5xx count as neither gateway nor upstream.
    """
    totals = {"requests": 0, "errors": 0, "gateway_errors": 0, "upstream_errors": 0, "retries": 0}
    found = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _PROM_LINE.match(line)
        if not match or match.group("name") not in REQUEST_METRICS:
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


NOT_CUMULATIVE = frozenset({"rtime_ms"})


def _cumulative(counters):
    return {key: value for key, value in counters.items() if isinstance(value, int) and key not in NOT_CUMULATIVE}


def _delta(now, base):
    return {key: value - base.get(key, 0) for key, value in _cumulative(now).items()}


def _sum(groups, names, key):
    return sum(groups[name][key] for name in names if name in groups)


def summarize(deltas, names, rtimes=None):
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
    return summary


def judge(x, y, min_requests, max_error_rate, max_error_rate_increase, min_x_requests=None):
    """The verdict on one step's numbers, with the sentence behind it."""
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


class Gate:
    """Observe until enough of Y's traffic and time, or a deadline, then judge."""

    def __init__(self, read, x_names, y_names, min_requests, min_duration, max_duration, max_error_rate,
                 max_error_rate_increase, interval=1.0, clock=time.monotonic, sleep=time.sleep):
        self.read = read
        self.x_names = list(x_names)
        self.y_names = list(y_names)
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
        base = self.read()
        accumulated = {name: {} for name in base}
        resets = 0
        samples = 0
        latest = base
        while True:
            self.sleep(self.interval)
            now = self.read()
            samples += 1
            for name, counters in now.items():
                prev = latest.get(name, {})
                if any(value < prev.get(k, 0) for k, value in _cumulative(counters).items()):
                    resets += 1
                    prev = {}
                step = _delta(counters, prev)
                acc = accumulated.setdefault(name, {})
                for key, value in step.items():
                    acc[key] = acc.get(key, 0) + value
            latest = now
            elapsed = self.clock() - start
            rtimes = {name: c.get("rtime_ms") for name, c in now.items()}
            x = summarize(accumulated, self.x_names, rtimes)
            y = summarize(accumulated, self.y_names, rtimes)
            verdict, reason = judge(x, y, self.min_requests, self.max_error_rate, self.max_error_rate_increase)
            enough = elapsed >= self.min_duration and y["requests"] >= self.min_requests
            early_fail = verdict == FAIL and y["requests"] >= self.min_requests
            if enough or early_fail or elapsed >= self.max_duration:
                return {"verdict": verdict, "reason": reason, "x": x, "y": y,
                        "duration_seconds": round(elapsed, 2), "samples": samples, "counter_resets": resets,
                        "thresholds": {"min_requests": self.min_requests, "max_error_rate": self.max_error_rate,
                                       "max_error_rate_increase": self.max_error_rate_increase,
                                       "min_duration": self.min_duration, "max_duration": self.max_duration}}
