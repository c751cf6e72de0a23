"""
Tests for the shape of the L{relayd} package: no import cycles, and the
parts that must stay free of reactor code (the message model, the SMTP
framing, syntax and SASL modules) import none.

The import graph is read from the source with L{ast}, module by module, so
it works the same whether a part is a module (C{relayd/smtp.py}) or a
package (C{relayd/smtp/}).  Each import is one of three kinds:

  - C{runtime}: run when the module is imported (module level, including
    under C{try}, C{with} or a class body);
  - C{type-checking}: under C{if TYPE_CHECKING:}, seen only by mypy;
  - C{deferred}: inside a function body, run when it is called.

Two cycle checks: the C{runtime} graph (a cycle there is an import that
fails or sees a half-initialised module), and the graph of all three kinds
(a cycle hidden behind C{TYPE_CHECKING} or a function-level import is still
two modules that need each other, the design problem the hiding papers
over).

Importing C{a.b.c} also runs C{a/__init__.py} and C{a/b/__init__.py}; those
implicit parent imports are not edges of the graph (a registry package
importing its own submodules, which import a sibling, is the intended
shape).  An explicit C{from a.b import name} of a name defined in
C{a/b/__init__.py} is an edge to C{a.b}.  The reactor-free check does count
parent packages: they are code that runs.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Set
from pathlib import Path

from attrs import frozen
from twisted.trial.unittest import SynchronousTestCase

import relayd

RUNTIME = "runtime"
TYPE_CHECKING = "type-checking"
DEFERRED = "deferred"

#: Import kinds that run code (what the reactor-free check follows).
EXECUTED = frozenset({RUNTIME, DEFERRED})

#: Modules that must not import reactor code, with all their submodules
#: when they are packages (STYLE.md: "message/ and smtp/framing.py,
#: syntax.py, sasl.py import no reactor code").
REACTOR_FREE = ("relayd.message", "relayd.smtp.framing", "relayd.smtp.syntax", "relayd.smtp.sasl")

#: What a reactor-free module must not import, nor anything it imports.
FORBIDDEN = "twisted.internet"


@frozen
class Import:
    """
    One import statement's effect on the graph.

    @ivar target: The imported module: the deepest module of the package
        for a relayd import, the dotted name as written for another.
    @ivar kind: L{RUNTIME}, L{TYPE_CHECKING} or L{DEFERRED}.
    @ivar where: C{path:line}, for the failure message.
    """

    target: str
    kind: str
    where: str


@frozen
class Graph:
    """
    The import graph of one package.

    @ivar modules: Every module's dotted name, packages included.
    @ivar internal: Module to its imports of modules of the package.
    @ivar external: Module to its imports of anything else.
    """

    modules: frozenset[str]
    internal: Mapping[str, tuple[Import, ...]]
    external: Mapping[str, tuple[Import, ...]]

    def edges(self, kinds: Set[str]) -> dict[str, set[str]]:
        """
        @param kinds: The import kinds to keep.
        @return: Module to the modules it imports with one of C{kinds}.
        """
        return {
            module: {i.target for i in imports if i.kind in kinds and i.target != module}
            for module, imports in self.internal.items()
        }

    def where(self, source: str, target: str, kinds: Set[str]) -> str:
        """
        @return: C{"path:line (kind)"} of the first import of C{target} by
            C{source} with one of C{kinds}.
        """
        for i in self.internal[source]:
            if i.target == target and i.kind in kinds:
                return f"{i.where} ({i.kind})"
        raise KeyError((source, target))


def discover(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """
    Find every module of a package on disk.

    @param root: The package's directory.
    @param package: Its dotted name.
    @return: Dotted module name to (source path, is a package).
    """
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            found[".".join((package, *parts[:-1]))] = (path, True)
        else:
            found[".".join((package, *parts))] = (path, False)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_statements(tree: ast.AST, kind: str = RUNTIME) -> Iterator[tuple[ast.stmt, str]]:
    """
    Yield every C{import} and C{from ... import} statement under C{tree}
    with its kind.

    @param tree: A parsed module (or any node below one).
    @param kind: The kind of the imports directly under C{tree}.
    """
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, kind
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            inner = TYPE_CHECKING if kind == RUNTIME else kind
            for statement in child.body:
                yield from import_statements(ast.Module([statement], []), inner)
            for statement in child.orelse:
                yield from import_statements(ast.Module([statement], []), kind)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from import_statements(child, DEFERRED if kind == RUNTIME else kind)
        else:
            yield from import_statements(child, kind)


def _deepest(name: str, modules: Set[str]) -> str | None:
    """
    @return: The longest prefix of C{name} in C{modules}, or L{None}.
    """
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def targets(
    statement: ast.stmt, module: str, is_package: bool, modules: Set[str], package: str
) -> Iterator[tuple[str, bool]]:
    """
    Resolve one import statement.

    @param statement: An L{ast.Import} or L{ast.ImportFrom}.
    @param module: The importing module's dotted name.
    @param is_package: C{module} is a package (its C{__init__.py}).
    @param modules: Every module of C{package}.
    @param package: The top-level package's name.
    @return: Pairs of (target, is a module of C{package}).
    """
    if isinstance(statement, ast.Import):
        names = [alias.name for alias in statement.names]
        for name in names:
            internal = _deepest(name, modules)
            yield (internal, True) if internal is not None else (name, False)
        return
    assert isinstance(statement, ast.ImportFrom)
    if statement.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (statement.level - 1)]
        source = ".".join(base + ([statement.module] if statement.module else []))
    else:
        source = statement.module or ""
    in_package = source == package or source.startswith(package + ".")
    for alias in statement.names:
        if not in_package:
            yield f"{source}.{alias.name}", False
            continue
        submodule = f"{source}.{alias.name}"
        target = submodule if submodule in modules else _deepest(source, modules)
        if target is not None:
            yield target, True


def build_graph(root: Path, package: str) -> Graph:
    """
    Read the import graph of a package from its source.

    @param root: The package's directory.
    @param package: Its dotted name.
    @return: The graph.
    """
    found = discover(root, package)
    modules = frozenset(found)
    internal: dict[str, tuple[Import, ...]] = {}
    external: dict[str, tuple[Import, ...]] = {}
    for module, (path, is_package) in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        mine: list[Import] = []
        theirs: list[Import] = []
        for statement, kind in import_statements(tree):
            where = f"{path.relative_to(root.parent)}:{statement.lineno}"
            for target, is_internal in targets(statement, module, is_package, modules, package):
                (mine if is_internal else theirs).append(Import(target, kind, where))
        internal[module] = tuple(mine)
        external[module] = tuple(theirs)
    return Graph(modules, internal, external)


def strongly_connected(edges: Mapping[str, Set[str]]) -> list[set[str]]:
    """
    The strongly connected components of more than one module (Tarjan's
    algorithm): each is a set of modules that all import each other,
    directly or not.

    @param edges: Module to the modules it imports.
    @return: The components, in the order Tarjan's algorithm closes them.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return components


def find_cycles(edges: Mapping[str, Set[str]]) -> list[list[str]]:
    """
    Find the import cycles of a graph: one per strongly connected component.

    @param edges: Module to the modules it imports.
    @return: For each component, a shortest cycle through its first module,
        as a list of modules whose last element is its first, for example
        C{["a", "b", "a"]}; C{[]} when the graph is acyclic.
    """
    return [_cycle_in(component, edges) for component in strongly_connected(edges)]


def _cycle_in(component: Set[str], edges: Mapping[str, Set[str]]) -> list[str]:
    """
    A shortest cycle through the first module of a strongly connected
    component (breadth-first, inside the component).
    """
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(edges.get(node, ())):
                if successor not in component:
                    continue
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if successor not in parents:
                    parents[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def describe_cycle(graph: Graph, cycle: list[str], kinds: Set[str]) -> str:
    """
    @return: The cycle, one import per line, with where each import is.
    """
    lines = [cycle[0]]
    for source, target in zip(cycle, cycle[1:], strict=False):
        lines.append(f"  -> {target}    [{graph.where(source, target, kinds)}]")
    return "\n".join(lines)


def reactor_code_path(graph: Graph, module: str) -> list[str] | None:
    """
    Find a chain of executed imports from C{module} (or one of its parent
    packages, which run first) to L{FORBIDDEN}.

    @return: The chain (modules, then the forbidden import and where it
        is), or L{None} when there is none.
    """
    parts = module.split(".")
    starts = [".".join(parts[:n]) for n in range(1, len(parts) + 1)]
    chains = {m: [m] for m in starts if m in graph.modules}
    frontier = list(chains)
    while frontier:
        following = []
        for node in frontier:
            for i in graph.external[node]:
                if i.kind in EXECUTED and (
                    i.target == FORBIDDEN or i.target.startswith(FORBIDDEN + ".")
                ):
                    return [*chains[node], f"{i.target}    [{i.where} ({i.kind})]"]
            for i in graph.internal[node]:
                if i.kind in EXECUTED and i.target not in chains:
                    chains[i.target] = [*chains[node], i.target]
                    following.append(i.target)
        frontier = following
    return None


def reactor_free_modules(graph: Graph) -> list[str]:
    """
    @return: The modules of L{REACTOR_FREE} that exist, with the modules
        of those that are packages.
    """
    return sorted(
        m for m in graph.modules if any(m == p or m.startswith(p + ".") for p in REACTOR_FREE)
    )


RELAYD = build_graph(Path(relayd.__file__).parent, "relayd")


class CycleTests(SynchronousTestCase):
    """
    relayd's modules do not import each other in a circle.
    """

    def assertAcyclic(self, graph: Graph, kinds: Set[str]) -> None:
        edges = graph.edges(kinds)
        components = strongly_connected(edges)
        if components:
            self.fail(
                f"import cycles ({', '.join(sorted(kinds))} imports):\n"
                + "\n\n".join(
                    f"{', '.join(sorted(c))} import each other; for example\n"
                    + describe_cycle(graph, _cycle_in(c, edges), kinds)
                    for c in components
                )
            )

    def test_graph_covers_the_package(self) -> None:
        """
        The graph has every module, packages included, and the imports
        between them: the checks below cannot pass on an empty graph.
        """
        for module in ("relayd", "relayd.reply", "relayd.upstream", "relayd.dialects"):
            self.assertIn(module, RELAYD.modules)
        edges = RELAYD.edges({RUNTIME})
        self.assertIn("relayd.dialects", edges["relayd.upstream"])
        self.assertIn("relayd.dialects.base", edges["relayd.dialects.mailpace"])
        self.assertIn("relayd.reply", edges["relayd.result"])

    def test_no_runtime_import_cycle(self) -> None:
        """
        No cycle among the imports that run at import time.
        """
        self.assertAcyclic(RELAYD, {RUNTIME})

    def test_no_import_cycle_behind_type_checking_or_in_functions(self) -> None:
        """
        No cycle either once the imports under C{if TYPE_CHECKING:} and
        those inside functions are counted: two modules that need each
        other are one part.
        """
        self.assertAcyclic(RELAYD, {RUNTIME, TYPE_CHECKING, DEFERRED})


class ReactorFreeTests(SynchronousTestCase):
    """
    The message model and the SMTP grammar import no C{twisted.internet}
    code, so they can be imported, tested and fuzzed alone.
    """

    def test_checked_modules_exist(self) -> None:
        """
        The message model, a module or a package, is among the checked
        modules.
        """
        self.assertIn("relayd.message", reactor_free_modules(RELAYD))

    def test_no_reactor_code_in_the_source(self) -> None:
        """
        No chain of executed imports (at import time or in a function)
        leads from a reactor-free module, or its parent packages, to
        C{twisted.internet}.
        """
        found = {}
        for module in reactor_free_modules(RELAYD):
            path = reactor_code_path(RELAYD, module)
            if path is not None:
                found[module] = "\n  -> ".join(path)
        self.assertEqual(found, {}, "\n".join(f"{m}:\n  {p}" for m, p in found.items()))

    def test_no_reactor_code_once_imported(self) -> None:
        """
        Importing a reactor-free module in a fresh interpreter loads no
        C{twisted.internet} module, through third-party code included.
        """
        script = (
            "import importlib, sys\n"
            "importlib.import_module(sys.argv[1])\n"
            "print(' '.join(sorted(m for m in sys.modules"
            f" if m == {FORBIDDEN!r} or m.startswith({FORBIDDEN + '.'!r}))))\n"
        )
        loaded = {}
        for module in reactor_free_modules(RELAYD):
            done = subprocess.run(
                [sys.executable, "-c", script, module],
                capture_output=True,
                text=True,
                check=True,
            )
            if done.stdout.strip():
                loaded[module] = done.stdout.strip()
        self.assertEqual(loaded, {})


class SyntheticGraphTests(SynchronousTestCase):
    """
    The graph builder and the cycle finder on made-up packages, so that the
    checks above are known to fail when they should.
    """

    def test_find_cycles(self) -> None:
        """
        A cycle is found and printed in order, first module last again;
        an acyclic graph has none.
        """
        self.assertEqual(find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}), [])
        self.assertEqual(find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}), [["a", "b", "c", "a"]])
        self.assertEqual(
            find_cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}}),
            [["c", "d", "c"], ["a", "b", "a"]],
        )

    def package(self, files: dict[str, str]) -> Graph:
        """
        Write a package C{pkg} with C{files} (relative path to source) and
        read its graph.
        """
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        for name, source in files.items():
            path = directory / "pkg" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source, encoding="utf-8")
        return build_graph(directory / "pkg", "pkg")

    def test_kinds_and_resolution(self) -> None:
        """
        Absolute, relative and submodule imports resolve to the module they
        load; imports under C{TYPE_CHECKING} and inside functions get their
        own kind; other packages' imports are external.
        """
        graph = self.package(
            {
                "__init__.py": "from pkg import sub\n",
                "a.py": (
                    "from typing import TYPE_CHECKING\n"
                    "import pkg.b\n"
                    "try:\n    from .sub import helper\nexcept ImportError:\n    pass\n"
                    "if TYPE_CHECKING:\n    from pkg.sub.leaf import Thing\n"
                    "else:\n    import json\n"
                    "def f():\n    from . import b\n    from twisted.internet import defer\n"
                ),
                "b.py": "",
                "sub/__init__.py": "from .. import b\n",
                "sub/leaf.py": "from ..sub import helper\n",
            }
        )
        self.assertEqual(graph.modules, {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.leaf"})
        self.assertEqual(
            [(i.target, i.kind) for i in graph.internal["pkg.a"]],
            [
                ("pkg.b", RUNTIME),
                ("pkg.sub", RUNTIME),
                ("pkg.sub.leaf", TYPE_CHECKING),
                ("pkg.b", DEFERRED),
            ],
        )
        self.assertEqual(
            [(i.target, i.kind) for i in graph.external["pkg.a"]],
            [
                ("typing.TYPE_CHECKING", RUNTIME),
                ("json", RUNTIME),
                ("twisted.internet.defer", DEFERRED),
            ],
        )
        self.assertEqual(graph.edges({RUNTIME})["pkg"], {"pkg.sub"})
        self.assertEqual(graph.edges({RUNTIME})["pkg.sub"], {"pkg.b"})
        self.assertEqual(graph.edges({RUNTIME})["pkg.sub.leaf"], {"pkg.sub"})

    def test_cycle_behind_type_checking_fails(self) -> None:
        """
        Two modules that import each other, one of them only under
        C{TYPE_CHECKING} (the shape relayd.upstream and relayd.dialects
        once had): the runtime check passes, the complete check fails and
        says where each import is.
        """
        graph = self.package(
            {
                "__init__.py": "",
                "upstream.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from pkg.dialects import IDialect\n"
                    "def make():\n    from pkg.dialects import get\n"
                ),
                "dialects.py": "from pkg.upstream import Accepted\n",
            }
        )
        CycleTests("assertAcyclic").assertAcyclic(graph, {RUNTIME})
        kinds = {RUNTIME, TYPE_CHECKING, DEFERRED}
        with self.assertRaises(self.failureException) as caught:
            CycleTests("assertAcyclic").assertAcyclic(graph, kinds)
        message = str(caught.exception)
        self.assertIn("pkg.dialects\n  -> pkg.upstream    [", message)
        self.assertIn("dialects.py:1 (runtime)]\n  -> pkg.dialects    [", message)
        self.assertIn("upstream.py:3 (type-checking)]", message)

    def test_reactor_code_through_a_parent_package(self) -> None:
        """
        A module is not reactor-free when its package's C{__init__.py}
        imports one that imports C{twisted.internet}; one that imports only
        under C{TYPE_CHECKING} is.
        """
        graph = self.package(
            {
                "__init__.py": "",
                "smtp/__init__.py": "from pkg.smtp.session import Protocol\n",
                "smtp/session.py": "from twisted.internet import defer\n",
                "smtp/framing.py": "",
                "message.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from twisted.internet.defer import Deferred\n"
                ),
            }
        )
        path = reactor_code_path(graph, "pkg.smtp.framing")
        assert path is not None
        self.assertEqual(path[:2], ["pkg.smtp", "pkg.smtp.session"])
        self.assertTrue(path[2].startswith("twisted.internet.defer    ["))
        self.assertIsNone(reactor_code_path(graph, "pkg.message"))
