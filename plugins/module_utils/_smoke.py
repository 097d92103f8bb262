# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Smoke requests to one Kong node's proxy, directly (not through the load balancer): each request
sent and its status code judged. Used by kong_smoke_test and by kong_service, which smoke-tests a
node it started as soon as it is ready.

Private to the collection.
"""

from __future__ import annotations

from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
from ansible.module_utils.urls import open_url

# The suboptions of one smoke request, as the modules take them.
SMOKE_REQUEST_OPTIONS = dict(
    path=dict(type="str", required=True),
    method=dict(type="str", default="GET"),
    host=dict(type="str"),
    headers=dict(type="dict", default={}),
    status=dict(type="list", elements="int", default=[200]),
)


def fetch(url, method="GET", headers=None, timeout=10, validate_certs=True):
    """(status, body) of one request, redirects not followed; (None, reason) when nothing answered."""
    try:
        handle = open_url(url, method=method, headers=headers or {}, timeout=timeout, validate_certs=validate_certs,
                          follow_redirects="none")
        return handle.getcode(), handle.read()
    except HTTPError as exc:
        return exc.code, exc.read() or b""
    except (URLError, OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", exc))


def send(proxy_url, request, timeout=10, validate_certs=True):
    """One smoke request to ``proxy_url``: {method, path, status, passed[, error]}."""
    headers = dict(request.get("headers") or {})
    if request.get("host"):
        headers["Host"] = request["host"]
    method = (request.get("method") or "GET").upper()
    expected = request.get("status") or [200]
    status, body = fetch(proxy_url.rstrip("/") + request["path"], method=method, headers=headers, timeout=timeout,
                         validate_certs=validate_certs)
    answer = {"method": method, "path": request["path"], "status": status, "passed": status in expected}
    if status is None:
        answer["error"] = "no answer: %s" % body
    elif not answer["passed"]:
        # Worded as ansible.builtin.uri words it, which the smoke test used before.
        answer["error"] = "Status code was %s and not %s" % (status, expected)
    return answer


def run_requests(proxy_url, requests, timeout=10, validate_certs=True):
    """Every request, one after the other: (answers, failure message or None)."""
    answers = [send(proxy_url, request, timeout, validate_certs) for request in requests]
    failed = [answer for answer in answers if not answer["passed"]]
    if not failed:
        return answers, None
    return answers, "; ".join("%s %s%s: %s" % (a["method"], proxy_url.rstrip("/"), a["path"], a["error"]) for a in failed)
