"""Checking JSON values against the schemas of the gateway's OpenAPI 3.1 document.

``jsonschema`` is not a dependency of the project, so this is the subset of JSON Schema 2020-12 that
``gateway/openapi.py`` writes: ``type`` (one or a list), ``properties``, ``required``,
``additionalProperties``, ``items``, ``minItems``/``maxItems``, ``enum``, ``const``, ``oneOf``, ``anyOf``,
``$ref`` (local), ``minimum``/``maximum``, ``pattern``, ``maxLength``; annotations (``description``,
``default``, ``contentEncoding``, ``format``, ``title``) are not checked. A keyword outside both lists
fails the check, so the document cannot use a keyword this module would silently ignore.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

ASSERTIONS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "oneOf",
        "anyOf",
        "$ref",
        "minimum",
        "maximum",
        "pattern",
        "maxLength",
    }
)
ANNOTATIONS = frozenset({"description", "default", "contentEncoding", "format", "title", "examples"})
TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, TYPES[name])


def errors(value: Any, schema: dict[str, Any], doc: dict[str, Any], where: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema`` (``$ref`` resolved in ``doc``); empty when it conforms."""
    unknown = set(schema) - ASSERTIONS - ANNOTATIONS
    if unknown:
        return [f"{where}: schema keywords this check does not know: {sorted(unknown)}"]
    if "$ref" in schema:
        return errors(value, resolve(doc, schema["$ref"]), doc, where)
    out: list[str] = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, n) for n in names):
            return [f"{where}: {type(value).__name__} is not {names}"]
    if "const" in schema and value != schema["const"]:
        out.append(f"{where}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    for key in ("oneOf", "anyOf"):
        if key in schema:
            matches = [not errors(value, s, doc, where) for s in schema[key]]
            if (sum(matches) != 1) if key == "oneOf" else not any(matches):
                out.append(f"{where}: {sum(matches)} of the {key} alternatives match")
    if isinstance(value, dict):
        out += _object(value, schema, doc, where)
    if isinstance(value, list):
        out += _array(value, schema, doc, where)
    if isinstance(value, str):
        out += _string(value, schema, where)
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{where}: {value} > {schema['maximum']}")
    return out


def _object(value: dict[str, Any], schema: dict[str, Any], doc: dict[str, Any], where: str) -> list[str]:
    out = [f"{where}: missing {name!r}" for name in schema.get("required", []) if name not in value]
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in props:
            out += errors(item, props[name], doc, f"{where}.{name}")
        elif extra is False:
            out.append(f"{where}: unexpected {name!r}")
        elif isinstance(extra, dict):
            out += errors(item, extra, doc, f"{where}.{name}")
    return out


def _array(value: list[Any], schema: dict[str, Any], doc: dict[str, Any], where: str) -> list[str]:
    out = []
    if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
        out.append(f"{where}: {len(value)} items")
    if "items" in schema:
        for n, item in enumerate(value):
            out += errors(item, schema["items"], doc, f"{where}[{n}]")
    return out


def _string(value: str, schema: dict[str, Any], where: str) -> list[str]:
    out = []
    if "pattern" in schema and not re.search(schema["pattern"], value):
        out.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        out.append(f"{where}: longer than {schema['maxLength']}")
    if schema.get("contentEncoding") == "base64":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            out.append(f"{where}: not standard base64")
    return out


def resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    assert isinstance(node, dict), ref
    return node


def walk_schemas(node: Any, where: str = "$") -> list[tuple[str, dict[str, Any]]]:
    """Every schema object under ``node`` (each with where it is), for checking their keywords."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "schema" in node and isinstance(node["schema"], dict):
            found += _schemas(node["schema"], where + ".schema")
        for key, item in node.items():
            if key != "schema":
                found += walk_schemas(item, f"{where}.{key}")
    elif isinstance(node, list):
        for n, item in enumerate(node):
            found += walk_schemas(item, f"{where}[{n}]")
    return found


def _schemas(schema: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(where, schema)]
    for key in ("properties",):
        for name, sub in schema.get(key, {}).items():
            found += _schemas(sub, f"{where}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += _schemas(schema[key], f"{where}.{key}")
    for key in ("oneOf", "anyOf"):
        for n, sub in enumerate(schema.get(key, [])):
            found += _schemas(sub, f"{where}.{key}[{n}]")
    return found
