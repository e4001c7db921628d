"""The trimmed Compute discovery document: the methods the controller calls, exactly as
the installed google-api-python-client describes them, and nothing it would keep
parsed for nothing."""

from __future__ import annotations

import json
from typing import Any

from googleapiclient.discovery_cache import get_static_doc

from controller.gcp import document


def _library() -> dict[str, Any]:
    text = get_static_doc("compute", "v1")
    assert text is not None
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def test_the_methods_called_are_the_librarys_own_but_for_their_prose() -> None:
    full, trimmed = _library(), json.loads(document.trimmed())
    for resource, methods in document.USED.items():
        for name in methods:
            ours = trimmed["resources"][resource]["methods"][name]
            theirs = full["resources"][resource]["methods"][name]
            assert ours == document._without_prose(theirs)
            assert (ours["httpMethod"], ours["path"]) == (theirs["httpMethod"], theirs["path"])
    assert {k: v for k, v in trimmed.items() if k not in ("resources", "schemas")} == {
        k: document._without_prose(v)
        for k, v in full.items()
        if k not in ("resources", "schemas", "description")
    }


def test_only_the_methods_called_and_the_schemas_they_refer_to_are_kept() -> None:
    full, trimmed = _library(), json.loads(document.trimmed())
    assert {r: tuple(d["methods"]) for r, d in trimmed["resources"].items()} == document.USED
    assert "BackendService" in trimmed["schemas"] and "Operation" in trimmed["schemas"]
    assert len(trimmed["schemas"]) < len(full["schemas"]) / 10
    assert set(document._refs(trimmed)) <= set(trimmed["schemas"])  # every $ref resolves
    assert len(document.trimmed()) < len(get_static_doc("compute", "v1") or "") / 20


def test_prose_goes_but_a_property_named_description_stays() -> None:
    trimmed = json.loads(document.trimmed())
    assert "description" in trimmed["schemas"]["BackendService"]["properties"]
    assert "description" not in trimmed["schemas"]["BackendService"]
    assert "description" not in trimmed["resources"]["backendServices"]["methods"]["patch"]
