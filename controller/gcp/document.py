"""The Compute v1 discovery document, trimmed to the methods this controller calls.

google-api-python-client ships the whole document (about 5 MB of JSON) and keeps
it parsed, with a docstring for every method, for as long as the service object
lives: some 25 MB of a controller whose limit is 128 MiB, for the eight methods
it calls out of hundreds. The trimmed document is cut from the one the installed
library ships, at start, so the requests it builds are that library's own (paths,
parameters, query encoding); only the other resources, the schemas nothing kept
refers to, and the prose are left out.
"""

from __future__ import annotations

import json
from typing import Any

from googleapiclient.discovery_cache import get_static_doc

# resource -> the methods of it that controller.gcp.backends calls
USED: dict[str, tuple[str, ...]] = {
    "backendServices": ("get", "list", "patch"),
    "regionBackendServices": ("get", "list", "patch"),
    "globalOperations": ("wait",),
    "regionOperations": ("wait",),
}


def trimmed(api: str = "compute", version: str = "v1") -> str:
    """The library's static document of ``api`` ``version`` with only the USED methods
    and the schemas they refer to, without descriptions, as JSON text (parsed anew by
    the library, so none of the whole document's objects outlive this call)."""
    text = get_static_doc(api, version)
    if text is None:
        raise RuntimeError(f"google-api-python-client ships no {api} {version} document")
    full = json.loads(text)
    del text
    doc = {k: v for k, v in full.items() if k not in ("resources", "schemas", "description")}
    doc["resources"] = {
        resource: {"methods": {m: full["resources"][resource]["methods"][m] for m in methods}}
        for resource, methods in USED.items()
    }
    schemas: dict[str, Any] = {}
    todo = _refs(doc["resources"])
    while todo:
        name = todo.pop()
        if name not in schemas:
            schemas[name] = full["schemas"][name]
            todo += _refs(schemas[name])
    doc["schemas"] = schemas
    return json.dumps(_without_prose(doc), separators=(",", ":"))


def _refs(node: object) -> list[str]:
    """The schema names ``node`` refers to (``$ref``), at any depth."""
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _without_prose(node: object) -> Any:
    """``node`` without its ``description`` texts (a property or parameter named
    "description" is an object, and stays)."""
    if isinstance(node, dict):
        return {
            k: _without_prose(v)
            for k, v in node.items()
            if not (k == "description" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_without_prose(v) for v in node]
    return node
