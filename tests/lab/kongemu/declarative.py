"""Declarative configuration (kong-facts 5, 6.5): parse/validate, export, hash, and the
in-memory store of DB-less nodes.

* `_format_version` must be one of the release's accepted formats
  (``versions.accepted_declarative_formats``), else a parse error.
* Entities may be nested (services -> routes/plugins, routes -> plugins,
  consumers -> plugins/keyauth_credentials, upstreams -> targets) or given at the top
  level with foreign keys as ids or endpoint keys (names).
* Entities without an id get the one Kong's loader generates (uuid5 of the entity's
  cache key or endpoint key, `kong_generated_id`); where Kong draws a random one (3.x
  key-auth credentials without an id, routes without a name), `kong config db_import`
  does too (importing such a file twice fails on the unique key, as on real 3.4.2) and
  DB-less loads use a stable one (the same file, the same configuration hash).
* Errors render like Kong's `Failed parsing:` text:

      in 'services':
        - in entry 1 of 'services':
          in 'host': expected a string

* Export (`kong config db_export`, `GET /config`): `_format_version` then
  `_transform: false`, top-level keys sorted, nulls as `~`, foreign keys as plain ids,
  no workspaces.
* The configuration hash is the md5 of the canonical JSON of the entities (without
  timestamps); 32 zeros when the configuration is empty.
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from typing import Any, Iterable

import yaml

from .entities import (
    CODE_DECLARATIVE_CONFIG,
    CONFIG_ENTITIES,
    SPECS,
    EntitySpec,
    NotFound,
    OperationUnsupported,
    is_uuid,
    lua_pretty,
    to_export,
    validate,
)
from .schema import Config, Page, decode_offset, encode_offset, matches_tags, parse_size, parse_tags
from .versions import VersionInfo

EMPTY_HASH = "0" * 32
_UNRESOLVED = "00000000-0000-0000-0000-000000000000"
_NAMESPACE = uuid.UUID("fd02801f-0957-4a15-a8c9-a6d0a9ff4a66")

# parent entity -> {nested key: child entity}
NESTED: dict[str, dict[str, str]] = {
    "services": {"routes": "routes", "plugins": "plugins"},
    "routes": {"plugins": "plugins"},
    "consumers": {"plugins": "plugins", "keyauth_credentials": "keyauth_credentials"},
    "upstreams": {"targets": "targets"},
}
_TOP_LEVEL_META = {"_format_version", "_transform", "_comment", "_ignore", "_workspace", "_info"}


class DeclarativeError(Exception):
    """An invalid declarative configuration; ``tree`` holds the per-field errors."""

    status = 400

    def __init__(self, tree: dict[Any, Any] | None = None, message: str | None = None) -> None:
        self.tree = tree or {}
        self.text = message if message is not None else render_errors(self.tree)
        super().__init__(self.text)

    def fields(self) -> Any:
        return _jsonable_tree(self.tree)

    def body(self) -> dict[str, Any]:
        if not self.tree:
            return {"code": CODE_DECLARATIVE_CONFIG, "name": "invalid declarative configuration",
                    "message": self.text}
        fields = self.fields()
        return {"code": CODE_DECLARATIVE_CONFIG, "name": "invalid declarative configuration",
                "message": f"declarative config is invalid: {lua_pretty(fields)}", "fields": fields}


def _jsonable_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        if tree and all(isinstance(k, int) for k in tree):
            out: list[Any] = [None] * max(tree)
            for index, sub in tree.items():
                out[index - 1] = _jsonable_tree(sub)
            return out
        return {str(k): _jsonable_tree(v) for k, v in tree.items()}
    return tree


def render_errors(tree: dict[Any, Any], indent: str = "") -> str:
    """Kong's flattened error text (`Error: Failed parsing:` + these lines), as
    `pretty_print_error` renders it: arrays (entity checks under `@entity` included)
    as `- in entry N of '<key>'`."""
    lines: list[str] = []
    for key in sorted(tree, key=lambda k: (k != "@entity", str(k))):
        value = tree[key]
        if isinstance(value, str):
            lines.append(f"{indent}in '{key}': {value}")
        elif isinstance(value, list):
            lines.append(f"{indent}in '{key}':")
            for i, msg in enumerate(value, start=1):
                if msg is not None:
                    lines.append(f"{indent}  - in entry {i} of '{key}': {msg}")
        elif isinstance(value, dict) and value and all(isinstance(k, int) for k in value):
            lines.append(f"{indent}in '{key}':")
            for index in sorted(value):
                lines.append(f"{indent}  - in entry {index} of '{key}':")
                lines.append(render_errors(value[index], indent + "    "))
        elif isinstance(value, dict):
            lines.append(f"{indent}in '{key}':")
            lines.append(render_errors(value, indent + "  "))
    return "\n".join(line for line in lines if line != "")


# ---------------------------------------------------------------------------
# Parsing and validation


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumperBase = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def parse_text(text: str) -> Any:
    """YAML (or JSON) text to Python objects, with libyaml when available."""
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        raise DeclarativeError(message=f"failed parsing declarative configuration: {exc}") from None


_KONG_NAMESPACE = uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5")  # declarative_config.lua
# Kong's generate_ids: cache_key fields (3.x) or the endpoint key (entity: (field, unique)).
_CACHE_KEYS = {3: {"plugins": ("name", "route", "service", "consumer"), "targets": ("upstream", "target"),
                   "keyauth_credentials": ("key",)},
               2: {"plugins": ("name", "route", "service", "consumer")}}
_ENDPOINT_KEYS = {"services": ("name", True), "routes": ("name", True), "consumers": ("username", True),
                  "upstreams": ("name", True), "keyauth_credentials": ("key", True), "targets": ("target", False)}
_REQUIRED_KEYS = {"plugins": {"name"}, "targets": {"upstream", "target"}}
_AUTO_KEYS = {"keyauth_credentials": {"key"}}  # a generated key: no id from it (3.x)


def _kong_uuid(entity: str, key: str) -> str:
    return str(uuid.uuid5(uuid.uuid5(_KONG_NAMESPACE, entity), key))


def kong_generated_id(entity: str, raw: dict[str, Any], child_key: str | None, parent_id: str | None,
                      info: VersionInfo) -> str | None:
    """The id Kong's declarative loader gives an entity without one (uuid5 of its cache key or
    endpoint key, as declarative_config.lua's generate_ids: the same ids as real 2.8.5 and
    3.4.2), or None where Kong draws a random one (3.x key-auth credentials, routes without a
    name, ...). ``raw`` is the entity as written in the file, names unresolved."""
    fields = _CACHE_KEYS[3 if info.major >= 3 else 2].get(entity)
    if fields is not None:
        parts = [entity, "*"] if info.major >= 3 else [entity]
        for name in fields:
            value = raw.get(name)
            if name in _AUTO_KEYS.get(entity, ()):
                return None
            if isinstance(value, str):
                parts.append(value)
            elif value is None:
                if name == child_key and parent_id:
                    parts.append(parent_id)
                elif name in _REQUIRED_KEYS.get(entity, ()):
                    return None
                else:
                    parts.append("")
        return _kong_uuid(entity, ":".join(parts))
    endpoint = _ENDPOINT_KEYS.get(entity)
    if endpoint is None or raw.get(endpoint[0]) is None:
        return None
    key = str(raw[endpoint[0]])
    if not endpoint[1]:  # unique per parent only: composed with the parent's id
        key += ":" + str(parent_id or raw.get("upstream") or "")
    return _kong_uuid(entity, key)


def _deterministic_id(entity: str, data: dict[str, Any], parent_id: str | None, index: int) -> str:
    """The emulator's stable id where Kong draws a random one (DB-less loads, so that the
    same file gives the same configuration hash)."""
    body = {k: v for k, v in data.items() if k not in ("id", "created_at", "updated_at")}
    key = f"{entity}:{parent_id}:{index}:{json.dumps(body, sort_keys=True, default=str)}"
    return str(uuid.uuid5(_NAMESPACE, key))


class _Loader:
    """Flattens nested entities, validates each one and resolves references."""

    def __init__(self, info: VersionInfo, enabled_plugins: Iterable[str] | None, random_ids: bool = False) -> None:
        self.info = info
        self.random_ids = random_ids
        self.enabled_plugins = list(enabled_plugins) if enabled_plugins is not None else list(info.bundled_plugins)
        self.entities: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIG_ENTITIES}
        self.refs: list[tuple[str, dict[str, Any], str, Any, dict[Any, Any]]] = []
        self.reid: list[tuple[str, dict[str, Any], str | None, int]] = []

    def load(self, doc: Any) -> tuple[dict[str, list[dict[str, Any]]], str]:
        if not isinstance(doc, dict):
            raise DeclarativeError(message="expected an object")
        errors: dict[Any, Any] = {}
        version = doc.get("_format_version")
        accepted = self.info.accepted_declarative_formats
        if version is None:
            errors["_format_version"] = "required field missing"
        elif not isinstance(version, str):
            errors["_format_version"] = "expected a string"
        elif version not in accepted:
            errors["_format_version"] = "expected one of: " + ", ".join(accepted)
        for key, value in doc.items():
            if key in _TOP_LEVEL_META:
                continue
            if key == "parameters":
                self._parameters(value, errors)
                continue
            if key not in SPECS:
                errors[key] = "unknown field"
                continue
            if not isinstance(value, list):
                errors[key] = "expected an array"
                continue
            entry_errors = self._entries(key, value, None, None)
            if entry_errors:
                errors[key] = entry_errors
        if not errors:
            self._resolve(errors)
        if errors:
            raise DeclarativeError(errors)
        return self.entities, str(version)

    def _parameters(self, value: Any, errors: dict[Any, Any]) -> None:
        """`parameters` (e.g. cluster_id) as db_export writes them: key/value records."""
        if not isinstance(value, list):
            errors["parameters"] = "expected an array"
            return
        entry_errors: dict[int, Any] = {}
        for index, item in enumerate(value, start=1):
            if not isinstance(item, dict) or not isinstance(item.get("key"), str) or item.get("value") is None:
                entry_errors[index] = {"@entity": ["expected a record with 'key' and 'value'"]}
            else:
                self.entities.setdefault("parameters", []).append({"key": item["key"], "value": str(item["value"])})
        if entry_errors:
            errors["parameters"] = entry_errors

    def _entries(self, entity: str, items: list[Any], parent: tuple[str, str] | None,
                 parent_field: str | None) -> dict[int, Any]:
        errors: dict[int, Any] = {}
        for index, item in enumerate(items, start=1):
            err = self._entry(entity, item, parent, parent_field, index)
            if err:
                errors[index] = err
        return errors

    def _entry(self, entity: str, item: Any, parent: tuple[str, str] | None, parent_field: str | None,
               index: int) -> dict[Any, Any]:
        spec = SPECS[entity]
        if not isinstance(item, dict):
            return {"@entity": ["expected a record"]}
        body = {k: copy.deepcopy(v) for k, v in item.items() if not str(k).startswith("_")}
        nested = {k: body.pop(k) for k in list(body) if k in NESTED.get(entity, {})}
        raw_refs: dict[str, Any] = {}
        for fld in spec.foreign_fields:
            if fld.name in body and body[fld.name] is not None and not _looks_like_id_ref(body[fld.name]):
                raw_refs[fld.name] = body[fld.name]
                body[fld.name] = {"id": _UNRESOLVED}
        if parent is not None and parent_field is not None:
            body[parent_field] = {"id": parent[1]}
        data, errors = validate(spec, body, enabled_plugins=self.enabled_plugins,
                                route_path_regex=self.info.major >= 3, release=self.info)
        if "id" not in item or item.get("id") is None:
            generated = kong_generated_id(entity, item, parent_field, parent[1] if parent else None, self.info)
            if generated is not None:
                data["id"] = generated
            elif self.random_ids:  # `kong config db_import`: Kong draws a new uuid
                data["id"] = str(uuid.uuid4())
            else:
                data["id"] = _deterministic_id(entity, data, parent[1] if parent else None, index)
                if raw_refs:
                    self.reid.append((entity, data, parent[1] if parent else None, index))
        out: dict[Any, Any] = dict(errors)
        for name, ref in raw_refs.items():
            self.refs.append((entity, data, name, ref, out))
        for key, children in nested.items():
            child = NESTED[entity][key]
            if not isinstance(children, list):
                out[key] = "expected an array"
                continue
            child_field = SPECS[child].parent_field(entity)
            child_errors = self._entries(child, children, (entity, data["id"]),
                                         child_field.name if child_field else None)
            if child_errors:
                out[key] = child_errors
        if not errors:
            self.entities[entity].append(data)
        return out

    def _resolve(self, errors: dict[Any, Any]) -> None:
        by_key: dict[str, dict[str, str]] = {}
        for name in CONFIG_ENTITIES:
            spec = SPECS[name]
            keys: dict[str, str] = {}
            for data in self.entities[name]:
                keys[data["id"]] = data["id"]
                if spec.endpoint_key and data.get(spec.endpoint_key):
                    keys[str(data[spec.endpoint_key])] = data["id"]
            by_key[name] = keys
        for entity, data, field_name, ref, entry_errors in self.refs:
            target = SPECS[entity].get_field(field_name)
            reference = target.reference if target else None
            key = ref.get("name") or ref.get("id") if isinstance(ref, dict) else ref
            found = by_key.get(reference or "", {}).get(str(key))
            if found is None:
                entry_errors[field_name] = (f"invalid reference '{field_name}: {key}' "
                                            f"(no such entry in '{reference}')")
                errors.setdefault(entity, {})
            else:
                data[field_name] = {"id": found}
        for entity, data, parent_id, index in self.reid:
            data["id"] = _deterministic_id(entity, data, parent_id, index)
        self._check_references(errors)
        self._check_unique(errors)

    def _check_references(self, errors: dict[Any, Any]) -> None:
        ids = {name: {d["id"] for d in self.entities[name]} for name in CONFIG_ENTITIES}
        for name in CONFIG_ENTITIES:
            for data in self.entities[name]:
                for fld in SPECS[name].foreign_fields:
                    ref = data.get(fld.name)
                    if ref is not None and ref["id"] not in ids.get(fld.reference or "", set()):
                        errors.setdefault(name, {})[fld.name] = (
                            f"invalid reference '{fld.name}: {ref['id']}' (no such entry in '{fld.reference}')")

    def _check_unique(self, errors: dict[Any, Any]) -> None:
        for name in CONFIG_ENTITIES:
            spec = SPECS[name]
            unique = [f.name for f in spec.fields if f.unique] + ["id"]
            for fld_name in unique:
                seen: set[Any] = set()
                for data in self.entities[name]:
                    value = data.get(fld_name)
                    if value is None:
                        continue
                    if value in seen:
                        errors.setdefault(name, {})["@entity"] = [
                            f"uniqueness violation: '{name}' entity with {fld_name} set to '{value}' already declared"]
                    seen.add(value)


def _looks_like_id_ref(value: Any) -> bool:
    if isinstance(value, dict):
        return set(value) == {"id"} and is_uuid(value.get("id"))
    return is_uuid(value)


def load(doc: Any, info: VersionInfo, enabled_plugins: Iterable[str] | None = None, random_ids: bool = False
         ) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Validate a parsed document; return (entities by name, format version). ``random_ids``:
    entities Kong gives no stable id get a random one (db_import), else a stable one."""
    return _Loader(info, enabled_plugins, random_ids).load(doc)


def load_text(text: str, info: VersionInfo, enabled_plugins: Iterable[str] | None = None,
              random_ids: bool = False) -> tuple[dict[str, list[dict[str, Any]]], str]:
    return load(parse_text(text), info, enabled_plugins, random_ids)


# ---------------------------------------------------------------------------
# Export and hash


class _Dumper(_SafeDumperBase):  # type: ignore[misc,valid-type]
    pass


def _represent_none(dumper: Any, _value: None) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:null", "~")


_Dumper.add_representer(type(None), _represent_none)


def export_document(entities: dict[str, list[dict[str, Any]]], info: VersionInfo) -> dict[str, Any]:
    doc: dict[str, Any] = {"_format_version": info.declarative_format, "_transform": False}
    for name in sorted(entities):
        rows = entities[name]
        if not rows:
            continue
        spec = SPECS.get(name)
        doc[name] = [to_export(spec, row) if spec else row for row in rows]
    return doc


def export_yaml(entities: dict[str, list[dict[str, Any]]], info: VersionInfo) -> str:
    return yaml.dump(export_document(entities, info), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True)


def _canonical_row(row: dict[str, Any]) -> dict[str, Any]:
    """Without timestamps; foreign keys as plain ids (API and export shapes hash alike)."""
    out = {}
    for key, value in row.items():
        if key in ("created_at", "updated_at"):
            continue
        if isinstance(value, dict) and set(value) == {"id"}:
            value = value["id"]
        out[key] = value
    return out


def config_hash(entities: dict[str, list[dict[str, Any]]]) -> str:
    """md5 of the canonical configuration; 32 zeros when it holds no entity."""
    canonical = {}
    for name in CONFIG_ENTITIES:
        rows = entities.get(name) or []
        if rows:
            canonical[name] = sorted((_canonical_row(row) for row in rows), key=lambda r: r["id"])
    if not canonical:
        return EMPTY_HASH
    return hashlib.md5(json.dumps(canonical, sort_keys=True, default=str).encode(), usedforsecurity=False).hexdigest()


# ---------------------------------------------------------------------------
# DB-less store


class MemoryStore:
    """The read API of EntityStore over a loaded declarative configuration.

    Writes are rejected like Kong DB-less (405, code 12, spec 15-off_spec.lua).
    """

    def __init__(self, entities: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.entities = {name: list((entities or {}).get(name) or []) for name in CONFIG_ENTITIES}
        for rows in self.entities.values():
            rows.sort(key=lambda r: r["id"])
        self.config_hash = config_hash(self.entities)

    @property
    def hash(self) -> str:
        return self.config_hash

    def load_config(self) -> Config:
        return Config(**{name: copy.deepcopy(rows) for name, rows in self.entities.items()})

    def probe(self) -> None:
        return None

    def enabled_in_cluster(self) -> list[str]:
        return sorted({p["name"] for p in self.entities["plugins"]})

    def _spec(self, entity: str) -> EntitySpec:
        if entity not in SPECS:
            raise NotFound()
        return SPECS[entity]

    def _find(self, spec: EntitySpec, key: str) -> dict[str, Any] | None:
        for row in self.entities[spec.name]:
            if row["id"] == key.lower() or (spec.endpoint_key and row.get(spec.endpoint_key) == key):
                return row
            if spec.name == "targets" and row.get("target") == key:
                return row
        return None

    def _parent_filter(self, spec: EntitySpec, parent: tuple[str, str] | None) -> tuple[str, str] | None:
        if parent is None:
            return None
        fld = spec.parent_field(parent[0])
        found = self._find(self._spec(parent[0]), parent[1]) if fld else None
        if fld is None or found is None:
            raise NotFound()
        return fld.name, found["id"]

    def get(self, entity: str, key: str, parent: tuple[str, str] | None = None) -> dict[str, Any]:
        spec = self._spec(entity)
        row = self._find(spec, key)
        flt = self._parent_filter(spec, parent)
        if row is None or (flt and (row.get(flt[0]) or {}).get("id") != flt[1]):
            raise NotFound()
        return copy.deepcopy(row)

    def page(self, entity: str, size: Any = None, offset: str | None = None, tags: str | None = None,
             tags_mode: str | None = None, parent: tuple[str, str] | None = None) -> Page:
        spec = self._spec(entity)
        limit = parse_size(size)
        tag_list, mode = parse_tags(tags)
        mode = tags_mode or mode
        after = decode_offset(offset) if offset else None
        flt = self._parent_filter(spec, parent)
        rows = [r for r in self.entities[spec.name]
                if (after is None or r["id"] > after)
                and matches_tags(r.get("tags"), tag_list, mode)
                and (flt is None or (r.get(flt[0]) or {}).get("id") == flt[1])]
        data = copy.deepcopy(rows[:limit])
        return Page(data, encode_offset(data[-1]["id"]) if len(rows) > limit else None)

    @staticmethod
    def _unsupported(operation: str, entity: str, key: str | None = None) -> OperationUnsupported:
        """The off strategy's errors (db/strategies/off): by primary key, or `by '<field>'`
        when the Admin API addressed the entity by its endpoint key (a name)."""
        spec = SPECS.get(entity)
        if key is not None and not is_uuid(key) and spec is not None and spec.endpoint_key:
            return OperationUnsupported(f"cannot {operation} '{entity}' entities by '{spec.endpoint_key}' "
                                        "when not using a database")
        return OperationUnsupported(f"cannot {operation} '{entity}' entities when not using a database")

    def insert(self, entity: str, body: dict[str, Any], parent: tuple[str, str] | None = None) -> dict[str, Any]:
        raise self._unsupported("create", entity)

    def update(self, entity: str, key: str, body: dict[str, Any], parent: tuple[str, str] | None = None
               ) -> dict[str, Any]:
        raise self._unsupported("update", entity, key)

    def upsert(self, entity: str, key: str, body: dict[str, Any], parent: tuple[str, str] | None = None
               ) -> dict[str, Any]:
        raise self._unsupported("create or update", entity, key)

    def delete(self, entity: str, key: str, parent: tuple[str, str] | None = None) -> str | None:
        raise self._unsupported("remove", entity, key)

    def export(self) -> dict[str, list[dict[str, Any]]]:
        return {name: [to_export(SPECS[name], r) for r in rows] for name, rows in self.entities.items() if rows}


def load_store(text: str, info: VersionInfo, enabled_plugins: Iterable[str] | None = None) -> MemoryStore:
    """A DB-less store from a declarative file's text; raises DeclarativeError."""
    entities = load_text(text, info, enabled_plugins)[0]
    return MemoryStore(entities)


def empty_store(info: VersionInfo) -> MemoryStore:
    """The store of a DB-less node started without `declarative_config`."""
    del info
    return MemoryStore({})
