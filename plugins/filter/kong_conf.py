# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that read and write kong.conf the way Kong's configuration loader does."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

_COMMENT = re.compile(r"(?<!\\)#.*$")


def kong_conf_parse(text):
    """`key = value` settings of a kong.conf text; comments stripped, `\\#` kept as `#`."""
    if not isinstance(text, str):
        raise AnsibleFilterError("kong_conf_parse expects the text of a kong.conf, got %s" % type(text).__name__)
    settings = {}
    for raw in text.splitlines():
        line = _COMMENT.sub("", raw).strip()
        if not line or "=" not in line:
            continue
        key, value = line.split("=", 1)
        settings[key.strip().lower()] = value.strip().replace("\\#", "#")
    return settings


def kong_conf_render(settings, header=None):
    """A kong.conf text from a dict, keys sorted, `#` escaped; None values are left out."""
    if not isinstance(settings, dict):
        raise AnsibleFilterError("kong_conf_render expects a dict of Kong settings, got %s" % type(settings).__name__)
    lines = []
    if header:
        lines.extend("# " + line for line in str(header).splitlines())
    for key in sorted(settings):
        value = settings[key]
        if value is None:
            continue
        if isinstance(value, bool):
            value = "on" if value else "off"
        if not re.match(r"^[a-z0-9_]+$", str(key)):
            raise AnsibleFilterError("'%s' is not a Kong setting name" % key)
        lines.append("%s = %s" % (key, str(value).replace("#", "\\#")))
    return "\n".join(lines) + "\n"


class FilterModule:
    """kong.conf filters."""

    def filters(self):
        return {"kong_conf_parse": kong_conf_parse, "kong_conf_render": kong_conf_render}
