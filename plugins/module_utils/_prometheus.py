# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The traffic gate's Prometheus source: X's and Y's numbers over the step, asked of a Prometheus server.

Private to the collection. Every reading evaluates, at one instant ``t`` and over the range
``[t - step start, t]``, for each of X and Y (told apart by label matchers on the scrape targets):

* ``sum by (code, source) (increase({__name__=~"kong_http_requests_total|kong_http_status", SEL}[R]))``:
  requests, 5xx, and 5xx by source (3.x: ``kong`` = the gateway, ``service`` = the upstream);
* ``histogram_quantile(Q, sum by (le) (increase(kong_request_latency_ms_bucket{SEL}[R]))
  or sum by (le) (increase(kong_latency_bucket{type="request", SEL}[R])))``: the latency quantile
  (3.x with the plugin's latency_metrics, or 2.x), or the kong / upstream histograms.

increase() copes with counter resets itself (a node restarted), so ``resets`` stays 0.
"""

from __future__ import annotations

import json
import math
import re
import time

from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
from ansible.module_utils.six.moves.urllib.parse import urlencode
from ansible.module_utils.urls import open_url

from ansible_collections.kongops.upgrade.plugins.module_utils._gate import LATENCY_HISTOGRAMS, GateError

REQUESTS_QUERY = 'sum by (code, source) (increase({__name__=~"kong_http_requests_total|kong_http_status", %s}[%s]))'
BUCKETS_QUERY = 'sum by (le) (increase(%s{%s}[%s]))'
TARGETS_QUERY = "up{%s}"


class PrometheusError(GateError):
    """Prometheus could not be asked, or refused the query."""


def instance_selector(instances):
    """Label matchers selecting the scrape targets whose ``instance`` is one of ``instances`` (HOST:PORT)."""
    alternatives = "|".join(re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", value) for value in instances)
    return 'instance=~"%s"' % alternatives.replace("\\", "\\\\").replace('"', '\\"')


def matchers(selector):
    """``selector`` as label matchers to put inside braces (surrounding braces and blanks removed)."""
    text = (selector or "").strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    return text.rstrip(",").strip()


def duration(seconds):
    """A PromQL range of at least one millisecond."""
    return "%dms" % max(1, int(round(seconds * 1000)))


def requests_query(selector, seconds):
    return REQUESTS_QUERY % (selector, duration(seconds))


def latency_query(selector, seconds, quantile, metric="request"):
    parts = []
    for name, kind in LATENCY_HISTOGRAMS[metric]:
        labels = selector if kind is None else 'type="%s", %s' % (kind, selector)
        parts.append(BUCKETS_QUERY % (name, labels, duration(seconds)))
    return "histogram_quantile(%g, %s)" % (quantile, " or ".join(parts))


def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value


class PrometheusClient:
    """Instant queries against one Prometheus server's HTTP API (``/api/v1/query``)."""

    def __init__(self, url, headers=None, timeout=5):
        self.url = url.rstrip("/")
        # What messages show: the URL without any user:password@ in it.
        self.display_url = re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", self.url)
        self.headers = {str(name): str(value) for name, value in (headers or {}).items()}
        self.timeout = timeout

    def query(self, promql, at=None):
        """The result vector of ``promql`` evaluated at ``at`` (epoch seconds; now by default)."""
        form = {"query": promql}
        if at is not None:
            form["time"] = "%.3f" % at
        endpoint = self.display_url + "/api/v1/query"
        headers = dict(self.headers, Accept="application/json")
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            handle = open_url(self.url + "/api/v1/query", method="POST", data=urlencode(form).encode("utf-8"),
                              headers=headers, timeout=self.timeout, follow_redirects="safe")
            status, body = handle.getcode(), handle.read()
        except HTTPError as exc:
            status, body = exc.code, exc.read() or b""
        except (URLError, OSError, ValueError) as exc:
            raise PrometheusError("cannot reach Prometheus at %s: %s" % (endpoint, getattr(exc, "reason", exc))) from exc
        try:
            doc = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            doc = None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            detail = doc.get("error") if isinstance(doc, dict) else None
            raise PrometheusError("Prometheus at %s answered %s to the query %s%s"
                                  % (endpoint, status, promql, ": %s" % detail if detail else ""))
        data = doc.get("data") or {}
        if data.get("resultType") != "vector":
            raise PrometheusError("Prometheus answered a %s to %s, not a vector" % (data.get("resultType"), promql))
        return data.get("result") or []


def request_counts(vector):
    """requests, errors, gateway_errors, upstream_errors from a ``sum by (code, source)`` vector."""
    counts = {"requests": 0.0, "errors": 0.0, "gateway_errors": 0.0, "upstream_errors": 0.0}
    has_source = False
    for sample in vector:
        labels = sample.get("metric") or {}
        value = _number((sample.get("value") or [None, None])[1]) or 0.0
        counts["requests"] += value
        has_source = has_source or "source" in labels
        if str(labels.get("code", "")).startswith("5"):
            counts["errors"] += value
            if labels.get("source") == "service":
                counts["upstream_errors"] += value
            elif labels.get("source") == "kong":
                counts["gateway_errors"] += value
    summary = {key: int(round(value)) for key, value in counts.items()}
    requests, errors = summary["requests"], summary["errors"]
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": round(errors / requests, 6) if requests else None,
        "gateway_errors": summary["gateway_errors"],
        "upstream_errors": summary["upstream_errors"] if has_source else None,
        "retries": 0,
    }


class PrometheusWindow:
    """X's and Y's numbers over the whole interval since ``begin()``, asked of Prometheus at every reading."""

    resets = 0

    def __init__(self, client, x_selector, y_selector, quantile=0.99, metric="request", clock=time.time):
        self.client = client
        self.selectors = {"x": matchers(x_selector) or None, "y": matchers(y_selector) or None}
        self.quantile = quantile
        self.metric = metric
        self.clock = clock
        self.start = None
        self.matched = {"x": False, "y": False}

    def begin(self):
        """Check that each selector matches scrape targets, and none both; the step starts now.

        A group without selector (no X nodes left) has no numbers; Y must have one."""
        if not self.selectors["y"]:
            raise PrometheusError("no label matchers for Y's scrape targets: there is nothing to judge")
        targets = {}
        for group, selector in self.selectors.items():
            if not selector:
                continue
            found = self.client.query(TARGETS_QUERY % selector)
            if not found:
                raise PrometheusError(
                    "Prometheus at %s has no scrape target matching {%s} (up{%s} is empty): scrape every %s node's "
                    "status listener (/metrics, the prometheus plugin on), or set prometheus_%s_selector to label "
                    "matchers of their targets" % (self.client.display_url, selector, selector, group.upper(), group))
            targets[group] = {tuple(sorted((sample.get("metric") or {}).items())) for sample in found}
        both = targets.get("x", set()) & targets["y"]
        if both:
            shared = ", ".join(sorted(dict(t).get("instance", "?") for t in both))
            raise PrometheusError("the X and Y selectors both match the scrape targets %s: X and Y must be told apart"
                                  % shared)
        self.start = self.clock()

    def observe(self):
        at = self.clock()
        seconds = max(at - self.start, 0.001)
        result = []
        for group in ("x", "y"):
            selector = self.selectors[group]
            if not selector:
                result.append(dict(request_counts([]), latency_ms=None))
                continue
            vector = self.client.query(requests_query(selector, seconds), at)
            self.matched[group] = self.matched[group] or bool(vector)
            summary = request_counts(vector)
            latency = self.client.query(latency_query(selector, seconds, self.quantile, self.metric), at)
            values = [_number((sample.get("value") or [None, None])[1]) for sample in latency]
            values = [value for value in values if value is not None]
            summary["latency_ms"] = round(values[0], 1) if values else None
            result.append(summary)
        return result[0], result[1]

    def hint(self, x, y):
        """Why an inconclusive step may have seen no traffic at all: no series matched."""
        missing = [group for group in ("y", "x") if self.selectors[group] and not self.matched[group]]
        if not missing:
            return None
        return "; ".join("no kong_http_requests_total or kong_http_status series of %s's targets {%s} had samples "
                         "over the step: check that Prometheus scrapes them and that the prometheus plugin counts "
                         "status codes (config.status_code_metrics on 3.x)" % (group.upper(), self.selectors[group])
                         for group in missing)
