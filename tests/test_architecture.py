"""The structure of the repository: layering, mls/ internal order, no dynamic imports, size limits.

Rules from docs/architecture.md; the graph is read with :mod:`tests.architecture` (``ast``, nothing is
imported). There are no allow-lists: a rule holds for the whole tree. Failures name each offending import
as ``module -> imported module``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.architecture import (
    PACKAGES,
    Edge,
    Graph,
    build_graph,
    deep_imports,
    importers_outside,
    imports_outside,
    in_package,
    layering_violations,
    load_time_cycles,
    oversize,
)

MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300

#: Top layer first: a package imports only packages after it in this tuple.
LAYERS = ("gateway", "hsm", "native", "mls")
#: A downward import narrowed further: of ``mls``, ``native`` may import only ``mls.errors``.
NARROW = {("native", "mls"): ("mls.errors",)}

#: The public entry points of mls that gateway/ may import: the library's API (``mls/__init__.py``) and the
#: conformance runner (``mls-gateway conformance``). Everything else of mls is reached through these.
MLS_PUBLIC_MODULES = frozenset({"mls", "mls.conformance"})

# Inside mls/: what each low module or subpackage may import of mls (besides itself). Rules that hold today.
MLS_LOWER_IMPORTS: dict[str, tuple[str, ...]] = {
    "mls.errors": (),
    "mls.wire.codec": ("mls.errors",),
    "mls.wire.struct": ("mls.errors", "mls.wire.codec"),
    "mls.crypto": ("mls.errors", "mls.wire.codec", "mls.wire.struct"),
    "mls.tree.tree_math": (),
}

# Inside the project (gateway/ aside: its own rule above): the top of mls/ and who may import it.
# (module, packages allowed to import it with their submodules, modules allowed exactly)
MLS_TOP: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("mls.group", ("mls.client", "mls.conformance"), ("mls",)),
    ("mls.client", ("mls.conformance",), ("mls",)),
    ("mls.conformance", (), ()),
)
NOT_GATEWAY = ("mls", "hsm", "native")


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph()


def _report(edges: Iterable[Edge]) -> str:
    return "\n".join(f"  {e}   ({e.source}:{e.lineno})" for e in edges)


def test_graph_sees_the_whole_tree(graph: Graph) -> None:
    for pkg in PACKAGES:
        assert pkg in graph.modules, f"package {pkg} not found"
    assert "mls.group" in graph.modules and "mls.wire.codec" in graph.modules
    assert len(graph.edges) > 100


def test_layering_imports_go_down_only(graph: Graph) -> None:
    bad = layering_violations(graph, LAYERS, NARROW)
    assert not bad, (
        "a lower layer imports a higher one (gateway -> hsm -> native -> mls; native uses only mls.errors):\n"
        + _report(bad)
    )


def test_gateway_uses_mls_public_api_only(graph: Graph) -> None:
    bad = [e for e in deep_imports(graph, "gateway", "mls") if e.target not in MLS_PUBLIC_MODULES]
    assert not bad, "gateway/ imports an mls submodule; use `from mls import ...`:\n" + _report(bad)


def test_no_dynamic_imports_in_mls(graph: Graph) -> None:
    bad = [d for d in graph.dynamic if in_package(d.source, "mls")]
    assert not bad, "mls/ imports by name at run time:\n" + "\n".join(
        f"  {d.source}:{d.lineno} {d.call}({d.target or '...'})" for d in bad
    )


def test_size_limits(graph: Graph) -> None:
    bad = oversize(graph, MAX_MODULE_LINES, MAX_CLASS_LINES)
    assert not bad, (
        f"over {MAX_MODULE_LINES} lines (module) or {MAX_CLASS_LINES} lines (class):\n"
        + "\n".join(f"  {name}: {n} lines" for name, n in sorted(bad.items()))
    )


@pytest.mark.parametrize("lower", sorted(MLS_LOWER_IMPORTS))
def test_mls_lower_modules_import_only_below(graph: Graph, lower: str) -> None:
    assert lower in graph.modules, f"{lower} is gone: update MLS_LOWER_IMPORTS"
    bad = imports_outside(graph, lower, "mls", MLS_LOWER_IMPORTS[lower])
    allowed = ", ".join(MLS_LOWER_IMPORTS[lower]) or "nothing"
    assert not bad, f"{lower} may import of mls only {allowed}:\n" + _report(bad)


@pytest.mark.parametrize(("top", "importers", "exact"), MLS_TOP, ids=[t[0] for t in MLS_TOP])
def test_mls_top_is_imported_from_above_only(
    graph: Graph, top: str, importers: tuple[str, ...], exact: tuple[str, ...]
) -> None:
    bad = importers_outside(graph, top, NOT_GATEWAY, importers, exact)
    who = ", ".join([*importers, *(f"{m}/__init__" for m in exact)]) or "nothing outside it"
    assert not bad, f"{top} is imported from below (allowed: {who}):\n" + _report(bad)


def test_no_import_cycles_at_load_time(graph: Graph) -> None:
    cycles = load_time_cycles(graph)
    assert not cycles, "modules that import each other when loading:\n" + "\n".join(
        "  " + " <-> ".join(c) for c in cycles
    )


# --- the checker itself: each rule catches a violation on a small tree (so no test passes vacuously) ---


def _tree(root: Path, files: dict[str, str]) -> Graph:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for pkg in PACKAGES:
        (root / pkg).mkdir(exist_ok=True)
        (root / pkg / "__init__.py").touch()
    return build_graph(root)


def test_checker_catches_violations(tmp_path: Path) -> None:
    g = _tree(
        tmp_path,
        {
            "mls/errors.py": "",
            "mls/wire/__init__.py": "",
            "mls/wire/codec.py": "from ..errors import X\nfrom . import struct\n",
            "mls/wire/struct.py": "from .codec import Reader\n",
            "mls/crypto/__init__.py": "",
            "mls/crypto/backend.py": (
                "import importlib\ndef load():\n    return importlib.import_module('native.backend')\n"
            ),
            "mls/tree/__init__.py": "",
            "mls/tree/nodes.py": "def f():\n    from mls.group import state\n",
            "mls/group/__init__.py": "",
            "mls/group/state.py": "from mls.tree.nodes import f\n",
            "native/backend.py": "from mls.errors import X\nfrom mls.wire import codec\n",
            "hsm/token.py": "if True:\n    import gateway.app\n",
            "gateway/app.py": "from mls import Group\nfrom mls.group.state import S\n",
            "gateway/big.py": "class Big:\n" + "    x = 1\n" * 10 + "\n" * 5,
        },
    )
    assert {str(e) for e in layering_violations(g, LAYERS, NARROW)} == {
        "mls.crypto.backend -> native.backend",
        "native.backend -> mls.wire.codec",
        "hsm.token -> gateway.app",
    }
    assert [str(e) for e in deep_imports(g, "gateway", "mls")] == ["gateway.app -> mls.group.state"]
    assert [(d.source, d.target) for d in g.dynamic] == [("mls.crypto.backend", "native.backend")]
    assert [str(e) for e in imports_outside(g, "mls.wire.codec", "mls", ("mls.errors",))] == [
        "mls.wire.codec -> mls.wire.struct"
    ]
    assert imports_outside(g, "mls.wire.struct", "mls", ("mls.errors", "mls.wire.codec")) == []
    assert [str(e) for e in importers_outside(g, "mls.group", NOT_GATEWAY, ("mls.client",), ("mls",))] == [
        "mls.tree.nodes -> mls.group.state"
    ]
    assert load_time_cycles(g) == [["mls.wire.codec", "mls.wire.struct"]]  # the deferred nodes<->state is not
    assert oversize(g, 12, 8) == {"gateway.big": 16, "gateway.big.Big": 11}


def test_checker_resolves_relative_and_from_package_imports(tmp_path: Path) -> None:
    g = _tree(
        tmp_path,
        {
            "mls/a/__init__.py": "from . import b\nfrom .b import name\n",
            "mls/a/b.py": "from .. import errors\nfrom ..a import c\n",
            "mls/a/c.py": "import mls.errors as e\n__import__('mls.a')\n",
            "mls/errors.py": "",
        },
    )
    assert g.imports()["mls.a"] == {"mls.a.b"}
    assert g.imports()["mls.a.b"] == {"mls.errors", "mls.a.c"}
    assert g.imports()["mls.a.c"] == {"mls.errors", "mls.a"}
