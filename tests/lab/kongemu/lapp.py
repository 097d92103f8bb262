"""A faithful subset of penlight's `pl.lapp`, as Kong's CLI uses it (kong-facts 1).

Options are declared by the usage text itself: lines starting with `-x,--long` or
`--long`, followed by `(default V)`, `(optional string|number|boolean)` or nothing (a
boolean flag); `<name> (default V)` declares a positional parameter. Errors and
`--help`/`-h` print to stderr and exit 1 (`lapp.quit` always calls `os.exit(1)`):

* `kong: unrecognized parameter: x` + blank line + usage;
* `kong: db-timeout was expecting a value`;
* `kong: unable to convert to number: abc`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SCRIPT = "kong"

_FLAG_RE = re.compile(r"^-(?P<short>\w)\s*,\s*--(?P<long>[\w-]+)\s*(?P<rest>.*)$|^--(?P<long2>[\w-]+)\s*(?P<rest2>.*)$"
                      r"|^-(?P<short2>\w)\s+(?P<rest3>.*)$")
_POS_RE = re.compile(r"^<(?P<name>[\w\s.-]+)>\s*(?P<rest>.*)$")


class LappQuit(Exception):
    """`lapp.quit(msg)`: ``message`` (may be None) then the usage, on stderr; exit 1."""

    def __init__(self, message: str | None, usage: str, show_usage: bool = True) -> None:
        super().__init__(message or "")
        self.message = message
        self.usage = usage
        self.show_usage = show_usage

    def render(self) -> str:
        out = ""
        if self.message is not None:
            out += self.message + "\n\n"
        if self.show_usage:
            out += self.usage
        return out


@dataclass
class Param:
    name: str
    kind: str  # boolean | string | number
    default: Any
    required: bool = False
    positional: bool = False


def _parse_spec(rest: str) -> tuple[str, Any, bool]:
    """(kind, default, required) from the text after a flag or positional."""
    match = re.match(r"^\(([^)]*)\)", rest.strip())
    if not match:
        return "boolean", False, False
    spec = match.group(1).strip()
    parts = spec.split(None, 1)
    head = parts[0] if parts else ""
    tail = parts[1].strip() if len(parts) > 1 else ""
    if head == "default":
        try:
            return "number", float(tail) if "." in tail else int(tail), False
        except ValueError:
            return "string", tail.strip("'\""), False
    if head == "optional":
        kind = tail or "string"
        return ("boolean" if kind == "boolean" else kind), (False if kind == "boolean" else None), False
    kind = head
    default = None
    default_match = re.search(r"default\s+(\S+)", tail)
    if default_match:
        default = default_match.group(1)
        if kind == "number":
            default = float(default) if "." in default else int(default)
    return kind, default, default is None and kind != "boolean"


def parse_usage(usage: str) -> tuple[dict[str, Param], dict[str, str], list[str]]:
    """Parameters, short aliases and positional names declared by a usage text."""
    params: dict[str, Param] = {}
    aliases: dict[str, str] = {}
    positional: list[str] = []
    for raw in usage.splitlines():
        line = raw.strip()
        flag = _FLAG_RE.match(line)
        if flag:
            long_name = flag.group("long") or flag.group("long2")
            short = flag.group("short") or flag.group("short2")
            rest = flag.group("rest") if flag.group("long") else (flag.group("rest2") if long_name else
                                                                  flag.group("rest3"))
            name = long_name or short or ""
            kind, default, required = _parse_spec(rest or "")
            params[name] = Param(name, kind, default, required)
            if long_name and short:
                aliases[short] = long_name
            continue
        pos = _POS_RE.match(line)
        if pos:
            name = re.sub(r"\W", "_", pos.group("name").split("...")[0].strip())
            kind, default, required = _parse_spec(pos.group("rest"))
            params[name] = Param(name, "string" if kind == "boolean" else kind, default, required, positional=True)
            positional.append(name)
    return params, aliases, positional


def _convert(param: Param, value: str, usage: str) -> Any:
    if param.kind == "number":
        try:
            number = float(value)
        except ValueError:
            raise LappQuit(f"{SCRIPT}: unable to convert to number: {value}", usage) from None
        return int(number) if number.is_integer() else number
    return value


def parse(usage: str, argv: list[str]) -> dict[Any, Any]:
    """Parse ``argv`` against ``usage``: a dict of long names (`-` -> `_`) to values,
    plus extra positional arguments under the integer keys 1, 2, ..."""
    params, aliases, positional = parse_usage(usage)
    args = list(argv)
    result: dict[Any, Any] = {}
    used: set[str] = set()
    ipos = 0
    iextra = 1
    i = 0
    while i < len(args):
        arg = args[i]
        value: str | None = None
        if arg.startswith("-") and len(arg) > 1 and arg != "--":
            name = arg[2:] if arg.startswith("--") else arg[1:]
            if "=" in name:
                name, value = name.split("=", 1)
            elif not arg.startswith("--") and len(name) > 1:
                if name[1].isdigit():
                    value = name[1:]
                else:
                    args[i + 1:i + 1] = ["-" + c for c in name[1:]]
                name = name[0]
            if name in ("h", "help"):
                raise LappQuit(None, usage)
            name = aliases.get(name, name)
            param = params.get(name)
            if param is None or param.positional:
                raise LappQuit(f"{SCRIPT}: unrecognized parameter: {name}", usage)
        else:
            if ipos < len(positional):
                param = params[positional[ipos]]
                ipos += 1
            else:
                result[iextra] = arg
                iextra += 1
                i += 1
                continue
            value = arg
        if param.kind != "boolean":
            if value is None:
                i += 1
                if i >= len(args):
                    raise LappQuit(f"{SCRIPT}: {param.name} was expecting a value", usage)
                value = args[i]
            result[param.name.replace("-", "_")] = _convert(param, value, usage)
        else:
            result[param.name.replace("-", "_")] = True
        used.add(param.name)
        i += 1
    for name, param in params.items():
        if name in used:
            continue
        if param.required:
            raise LappQuit(f"{SCRIPT}: missing required parameter: {name}", usage)
        result[name.replace("-", "_")] = param.default
    return result
