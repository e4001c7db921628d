"""deploy/iam/role.yaml grants exactly what the Compute calls in controller/gcp/backends.py
need: a call added without its permission, or a permission no call uses, fails here.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

import googleapiclient
import pytest
import yaml

from controller.gcp import document

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ROOT / "controller" / "gcp" / "backends.py"
ROLE = ROOT / "deploy" / "iam" / "role.yaml"
DISCOVERY = Path(googleapiclient.__file__).parent / "discovery_cache/documents/compute.v1.json"

Call = tuple[str, str]  # (collection, method), e.g. ("backendServices", "patch")

# The IAM permission each Compute method needs. A PATCH is an update as far as IAM is
# concerned, and waiting on an Operation reads it. A call missing here fails the test:
# add its permission (from the method's reference page) here and to role.yaml.
PERMISSION: dict[Call, str] = {
    ("backendServices", "get"): "compute.backendServices.get",
    ("backendServices", "list"): "compute.backendServices.list",
    ("backendServices", "patch"): "compute.backendServices.update",
    ("backendServices", "update"): "compute.backendServices.update",
    ("regionBackendServices", "get"): "compute.regionBackendServices.get",
    ("regionBackendServices", "list"): "compute.regionBackendServices.list",
    ("regionBackendServices", "patch"): "compute.regionBackendServices.update",
    ("regionBackendServices", "update"): "compute.regionBackendServices.update",
    ("globalOperations", "get"): "compute.globalOperations.get",
    ("globalOperations", "wait"): "compute.globalOperations.get",
    ("regionOperations", "get"): "compute.regionOperations.get",
    ("regionOperations", "wait"): "compute.regionOperations.get",
}

# What `gcloud iam roles create --file` reads, and the stages it accepts.
ROLE_FIELDS = {"title", "description", "stage", "includedPermissions"}
STAGES = {"ALPHA", "BETA", "GA", "DEPRECATED", "DISABLED", "EAP"}


def _is_self_attr(node: ast.AST, attr: str) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == attr
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def _walk(function: ast.FunctionDef) -> Iterator[ast.AST]:
    """The nodes of one method, without those of functions nested in it."""
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


def _literals(function: ast.FunctionDef) -> dict[str, set[str]]:
    """The string literals each local name is assigned in ``function`` (``a = "x"`` and
    ``a, b = "x", ...``), whatever the branch."""
    found: dict[str, set[str]] = {}
    for node in _walk(function):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs: list[tuple[ast.expr, ast.expr]] = [(target, node.value)]
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts, strict=False))
            for name, value in pairs:
                if (
                    isinstance(name, ast.Name)
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                ):
                    found.setdefault(name.id, set()).add(value.value)
    return found


class ComputeCalls:
    """Which Compute methods class ``Compute`` of backends.py calls, read from its source.

    The collections are the values of ``self._collections`` (``self._api.X()``); a call is
    an attribute of one of them: taken straight from ``self._collections[KEY]``, from a
    local name bound to that, or from a local name bound to what a helper method returns
    (``services, ... = self._services(scope)``). KEY is a literal or a local name assigned
    literals. Anything it cannot resolve fails with the reason rather than being skipped.
    """

    def __init__(self, source: str) -> None:
        module = ast.parse(source)
        [compute] = [n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "Compute"]
        self.methods = {n.name: n for n in compute.body if isinstance(n, ast.FunctionDef)}
        self.collections = self._collections()
        self.unresolved: list[str] = []
        # helper method -> {position in its returned tuple (None: not a tuple): collections}
        self.helpers = {name: self._returned(f) for name, f in self.methods.items()}
        self.helpers = {name: r for name, r in self.helpers.items() if r}
        self.calls: set[Call] = set()
        for function in self.methods.values():
            self.calls |= self._calls_in(function)

    def _collections(self) -> set[str]:
        init = self.methods["__init__"]
        for node in _walk(init):
            if (
                isinstance(node, ast.Assign)
                and any(_is_self_attr(t, "_collections") for t in node.targets)
                and isinstance(node.value, ast.Dict)
            ):
                names = set()
                for key, value in zip(node.value.keys, node.value.values, strict=True):
                    assert isinstance(key, ast.Constant) and isinstance(key.value, str)
                    assert isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
                    assert _is_self_attr(value.func.value, "_api"), ast.unparse(value)
                    assert key.value == value.func.attr, f"{key.value} is {value.func.attr}"
                    names.add(key.value)
                return names
        raise AssertionError("no `self._collections = {...}` in Compute.__init__")

    def _keys(self, subscript: ast.Subscript, function: ast.FunctionDef) -> set[str]:
        """The collections ``self._collections[...]`` may name in ``function``."""
        key = subscript.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            keys = {key.value}
        elif isinstance(key, ast.Name) and key.id in _literals(function):
            keys = _literals(function)[key.id]
        else:
            self.unresolved.append(f"{function.name}: {ast.unparse(subscript)}")
            return set()
        unknown = keys - self.collections
        assert not unknown, f"{function.name}: no collection {unknown} in self._collections"
        return keys

    def _is_collection(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Subscript) and _is_self_attr(node.value, "_collections")

    def _returned(self, function: ast.FunctionDef) -> dict[int | None, set[str]]:
        """The collections ``function`` returns, by position in the returned tuple."""
        found: dict[int | None, set[str]] = {}
        for node in _walk(function):
            if not isinstance(node, ast.Return) or node.value is None:
                continue
            elements = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for i, element in enumerate(elements):
                if self._is_collection(element):
                    assert isinstance(element, ast.Subscript)
                    position = i if isinstance(node.value, ast.Tuple) else None
                    found.setdefault(position, set()).update(self._keys(element, function))
        return found

    def _bound(self, function: ast.FunctionDef) -> dict[str, set[str]]:
        """Local names of ``function`` bound to a collection, and which it may be."""
        bound: dict[str, set[str]] = {}
        for node in _walk(function):
            if not isinstance(node, ast.Assign):
                continue
            value = node.value
            for target in node.targets:
                if self._is_collection(value) and isinstance(target, ast.Name):
                    assert isinstance(value, ast.Subscript)
                    bound.setdefault(target.id, set()).update(self._keys(value, function))
                elif (
                    isinstance(value, ast.Call)
                    and isinstance(value.func, ast.Attribute)
                    and _is_self_attr(value.func, value.func.attr)
                    and value.func.attr in self.helpers
                ):
                    returned = self.helpers[value.func.attr]
                    if isinstance(target, ast.Tuple):
                        for i, element in enumerate(target.elts):
                            if i in returned and isinstance(element, ast.Name):
                                bound.setdefault(element.id, set()).update(returned[i])
                    elif isinstance(target, ast.Name) and None in returned:
                        bound.setdefault(target.id, set()).update(returned[None])
        return bound

    def _calls_in(self, function: ast.FunctionDef) -> set[Call]:
        bound = self._bound(function)
        calls: set[Call] = set()
        for node in _walk(function):
            if not isinstance(node, ast.Attribute):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in bound:
                calls |= {(c, node.attr) for c in bound[node.value.id]}
            elif self._is_collection(node.value):
                assert isinstance(node.value, ast.Subscript)
                calls |= {(c, node.attr) for c in self._keys(node.value, function)}
        return calls

    def api_uses(self) -> set[str]:
        """Every ``self._api.X`` anywhere in the class: collections used outside the table."""
        return {
            node.attr
            for function in self.methods.values()
            for node in _walk(function)
            if isinstance(node, ast.Attribute) and _is_self_attr(node.value, "_api")
        }


@pytest.fixture(scope="module")
def analysis() -> ComputeCalls:
    return ComputeCalls(BACKENDS.read_text())


@pytest.fixture(scope="module")
def role() -> dict[str, object]:
    loaded = yaml.safe_load(ROLE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_role_grants_exactly_the_permissions_of_the_compute_calls(
    analysis: ComputeCalls, role: dict[str, object]
) -> None:
    assert analysis.unresolved == [], "calls on collections the test cannot tell apart"
    unknown = sorted(analysis.calls - PERMISSION.keys())
    assert unknown == [], f"Compute calls with no permission in this test's table: {unknown}"
    needed = {PERMISSION[call] for call in analysis.calls}
    permissions = role["includedPermissions"]
    assert isinstance(permissions, list)
    granted = set(permissions)
    assert sorted(needed - granted) == [], "calls the role does not allow"
    assert sorted(granted - needed) == [], "permissions no call needs"


def test_the_controller_calls_get_list_patch_and_wait_in_both_scopes(
    analysis: ComputeCalls,
) -> None:
    # What backends.py does today; the test above is what must hold as it changes.
    assert analysis.calls == {
        ("backendServices", "get"),
        ("backendServices", "list"),
        ("backendServices", "patch"),
        ("regionBackendServices", "get"),
        ("regionBackendServices", "list"),
        ("regionBackendServices", "patch"),
        ("globalOperations", "wait"),
        ("regionOperations", "wait"),
    }


def test_every_call_found_is_a_method_of_the_compute_api(analysis: ComputeCalls) -> None:
    resources = json.loads(DISCOVERY.read_text())["resources"]
    assert analysis.api_uses() == analysis.collections, "a collection outside _collections"
    for collection, method in analysis.calls:
        methods = resources[collection]["methods"]
        assert method in methods, f"{collection}.{method} is not in compute v1"
        assert methods[method]["id"] == f"compute.{collection}.{method}"


def test_the_trimmed_discovery_document_keeps_exactly_the_methods_called(
    analysis: ComputeCalls,
) -> None:
    kept = {(resource, m) for resource, methods in document.USED.items() for m in methods}
    assert kept == analysis.calls


def test_role_file_is_in_the_form_gcloud_iam_roles_create_reads(
    role: dict[str, object],
) -> None:
    assert set(role) == ROLE_FIELDS
    assert role["stage"] in STAGES
    assert isinstance(role["title"], str) and 0 < len(role["title"]) <= 100
    assert isinstance(role["description"], str) and 0 < len(role["description"]) <= 256
    permissions = role["includedPermissions"]
    assert isinstance(permissions, list)
    assert permissions == sorted(set(permissions)), "sorted, each once"
    assert all(p.startswith("compute.") for p in permissions)


SAMPLE = """
class Compute:
    def __init__(self):
        self._collections = {
            "backendServices": self._api.backendServices(),
            "regionBackendServices": self._api.regionBackendServices(),
            "globalOperations": self._api.globalOperations(),
        }

    def direct(self):
        return self._collections["backendServices"].delete(project="p").execute()

    def named(self, regional):
        if regional:
            which = "regionBackendServices"
        else:
            which = "backendServices"
        services = self._collections[which]
        item = {"a": 1}.get("a")  # a dict's get is no Compute call
        return services.insert(body=item)

    def _pick(self):
        return self._collections["globalOperations"], "global"

    def through_a_helper(self):
        operations, _ = self._pick()
        return operations.list

    def unresolvable(self, key):
        return self._collections[key].get
"""


def test_analysis_finds_calls_through_subscripts_names_and_helpers() -> None:
    sample = ComputeCalls(SAMPLE)
    assert sample.calls == {
        ("backendServices", "delete"),
        ("backendServices", "insert"),
        ("regionBackendServices", "insert"),
        ("globalOperations", "list"),
    }
    # A key it cannot follow is reported, so the role test fails instead of missing it.
    assert sample.unresolved == ["unresolvable: self._collections[key]"]
