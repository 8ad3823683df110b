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
            modules[name] = Module(name, path, is_package, len(text.splitlines()),
                                   ast.parse(text, filename=str(path)))
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


def build_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> Graph:
    """Parse the packages under ``root`` and collect every import between project modules.

    ``from a.b import c`` is an edge to ``a.b.c`` when ``c`` is a module of the tree, else to ``a.b``.
    """
    packages = tuple(packages)
    graph = Graph(discover(root, packages))
    for module in graph.modules.values():
        for node in ast.walk(module.tree):
            targets: list[tuple[str, str]] = []
            if isinstance(node, ast.Import):
                targets = [(alias.name, "import") for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve_relative(module, node.level, node.module) if node.level else node.module or ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append((sub if sub in graph.modules else base, "from"))
            elif isinstance(node, ast.Call) and (call := _call_name(node.func)):
                target = _dynamic_target(module, node)
                graph.dynamic.append(DynamicImport(module.name, node.lineno, call, target))
                if target:
                    targets = [(target, "dynamic")]
            seen: set[str] = set()
            for target, kind in targets:
                if target in seen or target == module.name or not _is_project(target, packages):
                    continue
                seen.add(target)
                graph.edges.append(Edge(module.name, target, getattr(node, "lineno", 0), kind))
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
    """(group, imported group) → number of module-level edges, without edges inside one group."""
    counts: Counter[tuple[str, str]] = Counter()
    for e in graph.edges:
        a, b = group_of(e.source, depth), group_of(e.target, depth)
        if a != b:
            counts[(a, b)] += 1
    return counts


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
                visit(module, [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])],
                      prefix)

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
    for source, targets in sorted(graph.imports().items()):
        for target in sorted(targets):
            style = ' [style=dashed]' if any(
                e.kind == "dynamic" for e in graph.edges if e.source == source and e.target == target
            ) else ""
            lines.append(f'  "{source}" -> "{target}"{style};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _print_counts(title: str, counts: Counter[tuple[str, str]], keep: str | None = None) -> None:
    print(title)
    rows = [(a, b, n) for (a, b), n in counts.items() if keep is None or (a.startswith(keep) and b.startswith(keep))]
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
    _print_counts("top-level packages (importer -> imported, module edges):",
                  package_edges(graph, depth={}))
    print()
    _print_counts("mls subpackages (importer -> imported, module edges):", package_edges(graph), keep="mls")
    if graph.dynamic:
        print("\ndynamic imports:")
        for d in graph.dynamic:
            print(f"  {d.source}:{d.lineno}  {d.call}({d.target or '<not a literal>'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
