"""The repository's import graph and sizes, read with :mod:`ast` (nothing is imported).

Used by ``tests/test_architecture.py`` (layering, size limits) and as a CLI::

    python -m tests.architecture            # package-level graph with edge counts
    python -m tests.architecture --dot      # Graphviz DOT of the module graph (| dot -Tsvg > graph.svg)
    python -m tests.architecture --sizes    # the largest modules and classes

The graph is built from whatever the tree contains: every ``.py`` under the project packages, with
relative imports resolved, imports inside functions (and under ``if TYPE_CHECKING:``) included, and
``importlib.import_module("literal")`` / ``__import__("literal")`` counted as imports.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The project's Python packages, top layer first (see docs/architecture.md).
PACKAGES: tuple[str, ...] = ("gateway", "hsm", "native", "mls")


@dataclass(frozen=True)
class Edge:
    """One import of a project module by a project module."""

    source: str
    target: str
    lineno: int
    kind: str  # "import", "from", "dynamic"
    deferred: bool = False  # inside a function: runs when called, not when the module loads
    type_checking: bool = False  # under ``if TYPE_CHECKING:``: never runs

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}"


@dataclass(frozen=True)
class DynamicImport:
    """A call of ``importlib.import_module`` / ``__import__``; ``target`` is None when not a literal."""

    source: str
    lineno: int
    call: str
    target: str | None


@dataclass(frozen=True)
class ClassSize:
    module: str
    qualname: str
    lineno: int
    lines: int


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    lines: int
    tree: ast.Module

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass
class Graph:
    """Modules of the project and the imports between them."""

    modules: dict[str, Module]
    edges: list[Edge] = field(default_factory=list)
    dynamic: list[DynamicImport] = field(default_factory=list)

    def imports(self) -> dict[str, set[str]]:
        """Module → set of imported project modules."""
        out: dict[str, set[str]] = {name: set() for name in self.modules}
        for e in self.edges:
            out.setdefault(e.source, set()).add(e.target)
        return out

    def edges_from(self, prefix: str) -> Iterator[Edge]:
        """Edges whose source is ``prefix`` or inside it."""
        return (e for e in self.edges if in_package(e.source, prefix))


def in_package(module: str, package: str) -> bool:
    """``module`` is ``package`` itself or one of its submodules."""
    return module == package or module.startswith(package + ".")


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    """Dotted name of the module at ``path`` (relative to ``root``) and whether it is a package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def discover(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Module]:
    """Parse every ``.py`` under ``root/<package>`` for each package."""
    modules: dict[str, Module] = {}
    for pkg in packages:
        base = root / pkg
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            if any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(root).parts):
                continue
            text = path.read_text(encoding="utf-8")
            name, is_package = module_name(root, path)
            modules[name] = Module(
                name, path, is_package, len(text.splitlines()), ast.parse(text, filename=str(path))
            )
    return modules


def resolve_relative(module: Module, level: int, name: str | None) -> str:
    """The absolute module named by ``from <level dots><name> import ...`` inside ``module``."""
    base = module.package.split(".") if module.package else []
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name) and func.id in ("import_module", "__import__"):
        return func.id
    if isinstance(func, ast.Attribute) and func.attr == "import_module":
        return "importlib.import_module"
    return None


def _dynamic_target(module: Module, call: ast.Call) -> str | None:
    if not call.args or not isinstance(call.args[0], ast.Constant) or not isinstance(call.args[0].value, str):
        return None
    name: str = call.args[0].value
    if not name.startswith("."):
        return name
    package: str | None = None
    for kw in call.keywords:
        if kw.arg == "package":
            if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                package = kw.value.value
            elif isinstance(kw.value, ast.Name) and kw.value.id in ("__name__", "__package__"):
                package = module.package
    if package is None and len(call.args) > 1 and isinstance(call.args[1], ast.Constant):
        package = str(call.args[1].value)
    if package is None:
        return None
    level = len(name) - len(name.lstrip("."))
    parts = package.split(".")
    parts = parts[: len(parts) - (level - 1)]
    rest = name.lstrip(".")
    return ".".join([*parts, rest] if rest else parts)


def _is_project(name: str, packages: Iterable[str]) -> bool:
    return any(in_package(name, p) for p in packages)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    """Collects the imports of one module, knowing whether each runs at load time."""

    def __init__(self, graph: Graph, module: Module, packages: tuple[str, ...]) -> None:
        self.graph, self.module, self.packages = graph, module, packages
        self.in_function = 0
        self.in_type_checking = 0

    def _add(self, node: ast.AST, targets: list[str], kind: str) -> None:
        seen: set[str] = set()
        for target in targets:
            if target in seen or target == self.module.name or not _is_project(target, self.packages):
                continue
            seen.add(target)
            self.graph.edges.append(
                Edge(
                    self.module.name,
                    target,
                    getattr(node, "lineno", 0),
                    kind,
                    deferred=self.in_function > 0,
                    type_checking=self.in_type_checking > 0,
                )
            )

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.in_function += 1
        self.generic_visit(node)
        self.in_function -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.in_type_checking += 1
            for stmt in node.body:
                self.visit(stmt)
            self.in_type_checking -= 1
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self._add(node, [alias.name for alias in node.names], "import")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = self.module
        base = resolve_relative(module, node.level, node.module) if node.level else node.module or ""
        targets = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.append(sub if sub in self.graph.modules else base)
        self._add(node, targets, "from")

    def visit_Call(self, node: ast.Call) -> None:
        call = _call_name(node.func)
        if call:
            target = _dynamic_target(self.module, node)
            self.graph.dynamic.append(DynamicImport(self.module.name, node.lineno, call, target))
            if target:
                self._add(node, [target], "dynamic")
        self.generic_visit(node)


def build_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> Graph:
    """Parse the packages under ``root`` and collect every import between project modules.

    ``from a.b import c`` is an edge to ``a.b.c`` when ``c`` is a module of the tree, else to ``a.b``.
    """
    packages = tuple(packages)
    graph = Graph(discover(root, packages))
    for module in graph.modules.values():
        _Collector(graph, module, packages).visit(module.tree)
    graph.edges.sort(key=lambda e: (e.source, e.target, e.lineno))
    return graph


def group_of(module: str, depth: Mapping[str, int] | None = None) -> str:
    """The group a module is counted in: its top-level package, or ``mls.<sub>`` inside ``mls``.

    ``depth`` maps a top-level package to how many name parts its groups keep (default: 2 for ``mls``,
    1 for the others). ``mls/__init__.py`` is the group ``mls``.
    """
    depth = {"mls": 2} if depth is None else depth
    parts = module.split(".")
    return ".".join(parts[: depth.get(parts[0], 1)])


def package_edges(graph: Graph, depth: Mapping[str, int] | None = None) -> Counter[tuple[str, str]]:
    """(group, imported group) → number of (module, imported module) pairs, without pairs inside a group."""
    counts: Counter[tuple[str, str]] = Counter()
    for source, target in sorted({(e.source, e.target) for e in graph.edges}):
        a, b = group_of(source, depth), group_of(target, depth)
        if a != b:
            counts[(a, b)] += 1
    return counts


def _first_edges(edges: Iterable[Edge]) -> list[Edge]:
    """One edge per (source, target), the first by line."""
    out: dict[tuple[str, str], Edge] = {}
    for e in sorted(edges, key=lambda e: (e.source, e.target, e.lineno)):
        out.setdefault((e.source, e.target), e)
    return list(out.values())


def layering_violations(
    graph: Graph,
    layers: Iterable[str] = PACKAGES,
    narrow: Mapping[tuple[str, str], Iterable[str]] | None = None,
) -> list[Edge]:
    """Edges that go up (or sideways) between the top-level packages ``layers`` (top layer first).

    ``narrow`` limits a downward dependency further: ``{("native", "mls"): ("mls.errors",)}`` lets
    ``native`` import of ``mls`` only ``mls.errors`` (and its submodules).
    """
    rank = {pkg: i for i, pkg in enumerate(layers)}
    narrow = narrow or {}
    bad = []
    for e in graph.edges:
        a, b = e.source.split(".")[0], e.target.split(".")[0]
        if a == b or a not in rank or b not in rank:
            continue
        goes_up = rank[b] <= rank[a]
        too_wide = (a, b) in narrow and not any(in_package(e.target, p) for p in narrow[(a, b)])
        if goes_up or too_wide:
            bad.append(e)
    return _first_edges(bad)


def imports_outside(graph: Graph, sources: str, scope: str, allowed: Iterable[str]) -> list[Edge]:
    """Edges from inside ``sources`` into ``scope`` whose target is neither in ``allowed`` nor in ``sources``.

    ``allowed`` holds module names; each allows that module and its submodules.
    """
    allowed = tuple(allowed)
    return _first_edges(
        e
        for e in graph.edges_from(sources)
        if in_package(e.target, scope)
        and not in_package(e.target, sources)
        and not any(in_package(e.target, a) for a in allowed)
    )


def importers_outside(
    graph: Graph,
    target: str,
    among: Iterable[str],
    allowed: Iterable[str] = (),
    allowed_exact: Iterable[str] = (),
) -> list[Edge]:
    """Edges into ``target`` (or its submodules) from modules inside ``among`` that may not import it.

    A module may when it is inside ``target`` itself, inside one of ``allowed``, or named in
    ``allowed_exact`` (to allow a package's ``__init__`` without its submodules).
    """
    among, allowed, allowed_exact = tuple(among), tuple(allowed), frozenset(allowed_exact)
    return _first_edges(
        e
        for e in graph.edges
        if in_package(e.target, target)
        and not in_package(e.source, target)
        and any(in_package(e.source, a) for a in among)
        and e.source not in allowed_exact
        and not any(in_package(e.source, a) for a in allowed)
    )


def deep_imports(graph: Graph, sources: str, package: str) -> list[Edge]:
    """Edges from inside ``sources`` into a submodule of ``package`` (anything but the package itself)."""
    return _first_edges(e for e in graph.edges_from(sources) if e.target.startswith(package + "."))


def load_time_cycles(graph: Graph) -> list[list[str]]:
    """Import cycles among the imports that run when a module loads (not deferred, not TYPE_CHECKING).

    Each cycle is a strongly connected component of two or more modules, sorted.
    """
    succ: dict[str, set[str]] = {name: set() for name in graph.modules}
    for e in graph.edges:
        if not e.deferred and not e.type_checking and e.target in succ:
            succ[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the module graph is a few hundred nodes deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(succ):
        if v not in index:
            connect(v)
    return sorted(out)


def oversize(graph: Graph, max_module_lines: int, max_class_lines: int) -> dict[str, int]:
    """Modules over ``max_module_lines`` and classes (``module.Class``) over ``max_class_lines``."""
    out = {name: n for name, n in module_sizes(graph) if n > max_module_lines}
    out.update({f"{c.module}.{c.qualname}": c.lines for c in class_sizes(graph) if c.lines > max_class_lines})
    return out


def class_sizes(graph: Graph) -> list[ClassSize]:
    """Every class (nested ones too) with its length ``end_lineno - lineno + 1``, largest first."""
    out: list[ClassSize] = []

    def visit(module: str, body: Iterable[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                qual = f"{prefix}{node.name}"
                end = node.end_lineno or node.lineno
                out.append(ClassSize(module, qual, node.lineno, end - node.lineno + 1))
                visit(module, node.body, qual + ".")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(module, node.body, f"{prefix}{node.name}.<locals>.")
            elif isinstance(node, ast.If | ast.Try | ast.With):
                visit(
                    module,
                    [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])],
                    prefix,
                )

    for m in graph.modules.values():
        visit(m.name, m.tree.body, "")
    return sorted(out, key=lambda c: -c.lines)


def module_sizes(graph: Graph) -> list[tuple[str, int]]:
    """(module, lines), largest first."""
    return sorted(((m.name, m.lines) for m in graph.modules.values()), key=lambda t: -t[1])


def to_dot(graph: Graph) -> str:
    """Graphviz DOT of the module graph, one cluster per top-level package."""
    lines = ["digraph imports {", "  rankdir=LR;", '  node [shape=box, fontsize=10, fontname="Helvetica"];']
    by_pkg: dict[str, list[str]] = {}
    for name in sorted(graph.modules):
        by_pkg.setdefault(name.split(".")[0], []).append(name)
    for pkg, names in by_pkg.items():
        lines.append(f'  subgraph "cluster_{pkg}" {{')
        lines.append(f'    label="{pkg}";')
        lines.extend(f'    "{n}";' for n in names)
        lines.append("  }")
    dynamic = {(e.source, e.target) for e in graph.edges if e.kind == "dynamic"}
    for source, targets in sorted(graph.imports().items()):
        for target in sorted(targets):
            style = " [style=dashed]" if (source, target) in dynamic else ""  # importlib: dashed
            lines.append(f'  "{source}" -> "{target}"{style};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _print_counts(title: str, counts: Counter[tuple[str, str]], keep: str | None = None) -> None:
    print(title)
    rows = [
        (a, b, n)
        for (a, b), n in counts.items()
        if keep is None or (in_package(a, keep) and in_package(b, keep))
    ]
    for a, b, n in sorted(rows):
        print(f"  {a:<22} -> {b:<22} {n:>4}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.architecture", description=__doc__.splitlines()[0])
    parser.add_argument("--dot", action="store_true", help="print Graphviz DOT of the module graph")
    parser.add_argument("--sizes", action="store_true", help="print the largest modules and classes")
    parser.add_argument("--top", type=int, default=15, help="how many rows --sizes prints (default 15)")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    graph = build_graph(args.root)
    if args.dot:
        sys.stdout.write(to_dot(graph))
        return 0
    if args.sizes:
        print("largest modules (lines):")
        for name, n in module_sizes(graph)[: args.top]:
            print(f"  {n:>5}  {name}")
        print("largest classes (lines):")
        for c in class_sizes(graph)[: args.top]:
            print(f"  {c.lines:>5}  {c.module}.{c.qualname}  (line {c.lineno})")
        return 0
    print(f"{len(graph.modules)} modules, {len(graph.edges)} import edges\n")
    _print_counts("top-level packages (importer -> imported, module pairs):", package_edges(graph, depth={}))
    print()
    _print_counts("mls subpackages (importer -> imported, module pairs):", package_edges(graph), keep="mls")
    if graph.dynamic:
        print("\ndynamic imports:")
        for d in graph.dynamic:
            print(f"  {d.source}:{d.lineno}  {d.call}({d.target or '<not a literal>'})")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:  # piped into head or similar
        sys.stderr.close()
        raise SystemExit(0) from None
