# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kong version parsing and the documented upgrade-path rules (kong-facts 7.1, 9.1).

Private to the collection. Pure functions: no I/O, so modules, filters and unit tests
share one implementation of what Kong supports.
"""

from __future__ import annotations

import re

# Long-term-support lines, in order (kong-facts 7.1: 2.8 -> 3.4 -> 3.10 -> 3.14).
LTS_LINES = ((2, 8), (3, 4), (3, 10), (3, 14))

# The newest release line these rules know of (kong-facts 7.1: 3.14, an Enterprise LTS). A later
# version cannot be planned: its releases, LTS lines and migrations are unknown here.
LATEST_LINE = (3, 14)

_VERSION_RE = re.compile(
    r"^\s*(?:kong(?:\s+enterprise)?[\s/]+)?(\d+)\.(\d+)\.(\d+)(?:\.(\d+))?"
    r"(?:-enterprise-edition)?\s*$",
    re.IGNORECASE,
)


class VersionError(ValueError):
    """A version string that is not a Kong release number."""


class KongVersion:
    """A Kong release number: OSS `X.Y.Z` or Enterprise `X.Y.Z.W`."""

    __slots__ = ("major", "minor", "patch", "build", "raw")

    def __init__(self, major, minor, patch, build=None, raw=None):
        self.major = major
        self.minor = minor
        self.patch = patch
        self.build = build
        self.raw = raw

    @classmethod
    def parse(cls, value):
        """Parse `3.4.2`, `3.4.3.1`, `2.8.4.9-enterprise-edition`, `Kong Enterprise 3.9.0.0`."""
        match = _VERSION_RE.match(str(value))
        if not match:
            raise VersionError(
                "'%s' is not a Kong version: expected X.Y.Z (OSS) or X.Y.Z.W (Enterprise)" % (value,)
            )
        build = int(match.group(4)) if match.group(4) is not None else None
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3)), build, str(value).strip())

    @property
    def key(self):
        return (self.major, self.minor, self.patch, self.build or 0)

    @property
    def minor_line(self):
        return (self.major, self.minor)

    @property
    def enterprise(self):
        return self.build is not None

    def __eq__(self, other):
        return isinstance(other, KongVersion) and self.key == other.key

    def __lt__(self, other):
        return self.key < other.key

    def __le__(self, other):
        return self.key <= other.key

    def __hash__(self):
        return hash(self.key)

    def __str__(self):
        base = "%d.%d.%d" % (self.major, self.minor, self.patch)
        return base if self.build is None else "%s.%d" % (base, self.build)

    def __repr__(self):
        return "KongVersion(%s)" % self


STRATEGIES = ("dual_cluster", "in_place", "blue_green", "rolling")


def _line(version):
    return "%d.%d" % version.minor_line


def classify_path(current, target):
    """Classify an upgrade from ``current`` to ``target`` as Kong documents it.

    Returns a dict: ``kind`` (one of none, patch, minor, major, lts, unsupported,
    downgrade, unknown), ``supported`` (bool), ``reason`` (a sentence for the operator) and
    ``steps`` (the release lines to go through when the path is not supported).
    """
    cur = current if isinstance(current, KongVersion) else KongVersion.parse(current)
    tgt = target if isinstance(target, KongVersion) else KongVersion.parse(target)
    result = {"from": str(cur), "to": str(tgt), "steps": []}
    unknown = [str(v) for v in (cur, tgt) if v.minor_line > LATEST_LINE]
    if unknown:
        result.update(
            kind="unknown",
            supported=False,
            reason="%s is later than the newest Kong release line these rules know (%d.%d), so no upgrade path "
            "can be planned to or from it. Check the version for a typo, or use a release of this collection "
            "that knows it" % (" and ".join(unknown), LATEST_LINE[0], LATEST_LINE[1]),
        )
    elif tgt == cur:
        result.update(kind="none", supported=True, reason="%s is already the target version" % cur)
    elif tgt < cur:
        result.update(
            kind="downgrade",
            supported=False,
            reason="%s -> %s is a downgrade; Kong migrations cannot be reversed. "
            "Go back with a database restore from the pre-upgrade backup" % (cur, tgt),
        )
    elif tgt.minor_line == cur.minor_line:
        result.update(kind="patch", supported=True, reason="patch upgrade within %s" % _line(cur))
    elif tgt.major == cur.major and tgt.minor == cur.minor + 1:
        result.update(kind="minor", supported=True, reason="adjacent minor upgrade %s -> %s" % (_line(cur), _line(tgt)))
    elif _adjacent_lts(cur, tgt):
        result.update(
            kind="lts",
            supported=True,
            reason="adjacent LTS upgrade %s -> %s (a Kong Gateway Enterprise feature; use the latest "
            "patch of the target LTS)" % (_line(cur), _line(tgt)),
        )
    elif cur.minor_line == (2, 8) and tgt.minor_line == (3, 0):
        result.update(kind="major", supported=True, reason="major upgrade from the last 2.x line to 3.0")
    elif cur.major == 1 or (cur.major == 2 and cur.minor < 8 and tgt.major >= 3):
        steps = ["2.8"] + _steps_within((2, 8), tgt)
        result.update(
            kind="unsupported",
            supported=False,
            steps=steps,
            reason="%s -> %s is not supported: go to 2.8 first (3.x migrates from 2.1 at the oldest, "
            "and Kong asks for 2.8 before 3.0)" % (cur, tgt),
        )
    else:
        steps = _steps_within(cur.minor_line, tgt)
        result.update(
            kind="unsupported",
            supported=False,
            steps=steps,
            reason="%s -> %s skips releases; Kong guarantees only patch, adjacent-minor and adjacent-LTS "
            "upgrades. Upgrade through %s" % (cur, tgt, " -> ".join(steps)),
        )
    return result


def _adjacent_lts(cur, tgt):
    lines = list(LTS_LINES)
    if cur.minor_line in lines and tgt.minor_line in lines:
        return lines.index(tgt.minor_line) == lines.index(cur.minor_line) + 1
    return False


def _steps_within(start_line, tgt):
    """Release lines from just after ``start_line`` to ``tgt``, using LTS jumps."""
    steps = []
    line = start_line
    guard = 0
    while line != tgt.minor_line and guard < 64:
        guard += 1
        nxt = None
        if line in LTS_LINES:
            idx = LTS_LINES.index(line)
            if idx + 1 < len(LTS_LINES) and LTS_LINES[idx + 1] <= tgt.minor_line:
                nxt = LTS_LINES[idx + 1]
        if nxt is None:
            if line == (2, 8):
                nxt = (3, 0)
            else:
                nxt = (line[0], line[1] + 1)
        steps.append("%d.%d" % nxt)
        line = nxt
    return steps


MODES = ("traditional", "dbless", "control_plane", "data_plane")


def strategy_allowed(strategy, current, target, mode="traditional"):
    """Return (allowed, reason) for a strategy on this path and deployment mode (kong-facts 7.1, 7.2).

    ``mode`` is what is being upgraded: traditional nodes, DB-less nodes, hybrid control
    planes or hybrid data planes.
    """
    if strategy not in STRATEGIES:
        return False, "unknown strategy '%s'; choose one of %s" % (strategy, ", ".join(STRATEGIES))
    if mode not in MODES:
        return False, "unknown deployment mode '%s'; choose one of %s" % (mode, ", ".join(MODES))
    stateless = mode in ("dbless", "data_plane")
    if strategy == "rolling" and not stateless:
        return False, ("rolling is documented for DB-less nodes and hybrid data planes only; %s nodes share a "
                       "database, use dual_cluster, in_place or blue_green (if these are DB-less nodes or data planes, "
                       "say so with kong_upgrade_mode dbless or data_plane)" % mode.replace("_", " "))
    if strategy != "rolling" and stateless:
        return False, ("%s nodes have no database to migrate: use the rolling strategy (data planes after their "
                       "control planes)" % mode.replace("_", " "))
    cur = current if isinstance(current, KongVersion) else KongVersion.parse(current)
    tgt = target if isinstance(target, KongVersion) else KongVersion.parse(target)
    if strategy == "blue_green":
        if tgt.minor_line != cur.minor_line:
            return False, (
                "blue-green is documented only between patch versions of one release line; %s -> %s "
                "crosses lines. Use dual_cluster (recommended) or in_place" % (cur, tgt)
            )
        if cur.key < (2, 8, 2, 0):
            return False, "blue-green needs X at 2.8.2 or later (found %s); upgrade X to 2.8.2+ first" % cur
    return True, "%s is allowed for %s -> %s" % (strategy, cur, tgt)


def hybrid_compatible(cp_version, dp_version):
    """Return (accepted, message) for a data plane joining a control plane (kong-facts 9.1)."""
    cp = cp_version if isinstance(cp_version, KongVersion) else KongVersion.parse(cp_version)
    dp = dp_version if isinstance(dp_version, KongVersion) else KongVersion.parse(dp_version)
    if cp.major != dp.major:
        return False, "data plane version %s is incompatible with control plane version %s (%d.x.y are accepted)" % (
            dp, cp, cp.major)
    if dp.minor > cp.minor:
        return False, "data plane version %s is incompatible with older control plane version %s" % (dp, cp)
    return True, "data plane %s is accepted by control plane %s" % (dp, cp)
