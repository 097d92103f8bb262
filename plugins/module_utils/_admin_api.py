# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small client for Kong's Admin API and Status API (kong-facts 6).

Private to the collection. The token travels in a header, never in a URL.
"""

from __future__ import annotations

import json

from ansible.module_utils.basic import env_fallback
from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
from ansible.module_utils.urls import open_url

ADMIN_API_ARGSPEC = dict(
    admin_url=dict(type="str", required=True, fallback=(env_fallback, ["KONG_ADMIN_URL"])),
    admin_token=dict(type="str", no_log=True, fallback=(env_fallback, ["KONG_ADMIN_TOKEN"])),
    status_url=dict(type="str", fallback=(env_fallback, ["KONG_STATUS_URL"])),
    validate_certs=dict(type="bool", default=True),
    ca_path=dict(type="path"),
    timeout=dict(type="float", default=10),
)


class AdminApiError(Exception):
    """The Admin or Status API could not be reached or answered something unusable."""

    def __init__(self, message, status=None, body=None):
        super().__init__(message)
        self.status = status
        self.body = body


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8")) if self.body else None
        except ValueError:
            return None


class KongHttp:
    """GET/POST/... against one base URL with Kong's headers."""

    def __init__(self, base_url, token=None, validate_certs=True, ca_path=None, timeout=10):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.timeout = timeout

    def request(self, method, path, body=None, expect=None):
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Kong-Admin-Token"] = self.token
        url = self.base_url + path
        try:
            handle = open_url(url, method=method, data=data, headers=headers, validate_certs=self.validate_certs,
                              ca_path=self.ca_path, timeout=self.timeout, follow_redirects="none")
            response = Response(handle.getcode(), dict(handle.headers.items()), handle.read())
        except HTTPError as exc:
            response = Response(exc.code, dict(exc.headers.items()) if exc.headers else {}, exc.read() or b"")
        except (URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminApiError("cannot reach %s: %s" % (url, reason)) from exc
        if expect is not None and response.status not in expect:
            message = (response.json() or {}).get("message") if isinstance(response.json(), dict) else None
            raise AdminApiError("%s %s answered %s%s" % (method, url, response.status,
                                                         ": %s" % message if message else ""),
                                response.status, response.body)
        return response

    def get_json(self, path, expect=(200,)):
        response = self.request("GET", path, expect=expect)
        doc = response.json()
        if doc is None and response.status == 200:
            raise AdminApiError("GET %s%s did not return JSON" % (self.base_url, path))
        return doc

    def paged(self, path, size=1000):
        """Every item of a paged Admin API collection ({"data": [...], "next": ...})."""
        items = []
        sep = "&" if "?" in path else "?"
        next_path = "%s%ssize=%d" % (path, sep, size)
        guard = 0
        while next_path and guard < 100000:
            guard += 1
            doc = self.get_json(next_path)
            items.extend(doc.get("data") or [])
            nxt = doc.get("next")
            if not nxt:
                break
            next_path = nxt if nxt.startswith("/") else "/" + nxt.split("/", 3)[-1]
        return items


def from_params(params):
    admin = KongHttp(params["admin_url"], params.get("admin_token"), params["validate_certs"], params.get("ca_path"),
                     params["timeout"])
    status = None
    if params.get("status_url"):
        status = KongHttp(params["status_url"], None, params["validate_certs"], params.get("ca_path"), params["timeout"])
    return admin, status
