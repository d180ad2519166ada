"""The service's OpenAPI document as OpenAPI 3.0, for /docs only.

FastAPI writes OpenAPI 3.1; the Swagger UI shipped by the ``swagger-ui-bundle`` package
(4.15) reads only 3.0 and refuses a 3.1 document outright. This rewrites the few 3.1 forms
into their 3.0 equivalents (null in a type or a union becomes ``nullable``, ``const`` an
``enum``, numeric exclusive bounds the boolean form, schema ``examples`` one ``example``,
``contentMediaType`` a binary string). /openapi.json itself stays 3.1.
"""

from __future__ import annotations

import copy
from typing import Any

_NULL = {"type": "null"}


def downgrade(spec: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI 3.0.3 copy of ``spec`` (a 3.1 document); ``spec`` is not changed."""
    out = _walk(copy.deepcopy(spec))
    assert isinstance(out, dict)
    out["openapi"] = "3.0.3"
    for key in ("jsonSchemaDialect", "webhooks"):
        out.pop(key, None)
    return out


def _walk(node: Any) -> Any:
    if isinstance(node, list):
        return [_walk(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _walk(value) for key, value in node.items()}
    node.pop("$schema", None)
    kind = node.get("type")
    if isinstance(kind, list):
        types = [t for t in kind if t != "null"]
        if len(types) < len(kind):
            node["nullable"] = True
        if types:
            node["type"] = types[0]
        else:
            node.pop("type")
    for union in ("anyOf", "oneOf"):
        members = node.get(union)
        if isinstance(members, list) and _NULL in members:
            rest = [m for m in members if m != _NULL]
            node["nullable"] = True
            if len(rest) == 1 and isinstance(rest[0], dict):
                del node[union]
                for key, value in rest[0].items():
                    node.setdefault(key, value)
            else:
                node[union] = rest
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            node[plain] = value
            node[bound] = True
    examples = node.get("examples")
    if isinstance(examples, list):
        del node["examples"]
        if examples:
            node.setdefault("example", examples[0])
    if "contentMediaType" in node:
        node.pop("contentMediaType")
        node.pop("contentEncoding", None)
        node.setdefault("type", "string")
        node.setdefault("format", "binary")
    return node
