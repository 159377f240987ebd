"""The package rules, checked by reading every import of the project's four packages.

1. The library layers depend one way: ``config <- models <- {trainer, streaming}``; inside ``models``,
   ``records <- archs <- registry <- inference`` (a sub-package never imports one to its right), and inside
   ``trainer``, ``datasets <- evaluation <- training`` (the registry and backfill commands sit on top).
2. Apps rule: an app (``streaming.apps.*``, the runtimes behind the ``corestream`` commands) may compose the
   trainer and the stream processor, through their public names only (no ``_private`` module or name); no other
   streaming module imports ``trainer``, and nothing in ``trainer`` imports ``streaming``.
3. No import cycle between any two project modules. Counted: every ``import`` / ``from ... import`` at module
   level and inside functions or methods (a deferred import still ties the two modules: ``trainer.train`` and
   ``trainer.train_hybrid`` were such a loop). Not counted: imports under ``if TYPE_CHECKING:`` (never run),
   names loaded by ``importlib`` from a registry (``models.archs.base.ARCHS``: dispatch, the point of a
   registry), and the implicit import of a module's parent packages (a package's ``__init__`` that re-exports
   its modules would otherwise make every sibling import a loop). ``from pkg import name`` counts as an import of
   ``pkg.name`` when that is a module, else of ``pkg``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "models", "trainer", "streaming")
APPS = "streaming.apps"

# module prefix -> project module prefixes it must never import; the longest matching prefix applies
FORBIDDEN: dict[str, set[str]] = {
    "config": {"models", "trainer", "streaming"},
    "models": {"trainer", "streaming"},
    "models.records": {"models.archs", "models.registry", "models.inference", "trainer", "streaming"},
    "models.archs": {"models.records", "models.registry", "models.inference", "trainer", "streaming"},
    "models.registry": {"models.inference", "trainer", "streaming"},
    "trainer": {"streaming"},
    "trainer.datasets": {"trainer.evaluation", "trainer.training", "trainer.registry_cli", "trainer.backfill",
                         "streaming"},
    "trainer.evaluation": {"trainer.training", "trainer.registry_cli", "trainer.backfill", "streaming"},
    "streaming": {"trainer", APPS},
    APPS: set(),  # the apps rule: trainer allowed, public names only (test_apps_use_public_trainer_names)
    "streaming.cli": {"trainer"},  # the command table names the apps
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(path): path for package in PACKAGES
                            for path in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (sub for child in node.orelse for sub in _import_nodes(ast.Module([child], [])))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _import_nodes(node)


def imports_of(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """The project modules that ``module`` imports, each with the names it takes (empty for ``import x``)."""
    found: list[tuple[str, list[str]]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:  # relative: from . import x, from ..a import b
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            target = f"{base}.{alias.name}"
            found.append((target, []) if target in MODULES else (base, [alias.name]))
    return [(target, names) for target, names in found if target.split(".")[0] in PACKAGES]


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (see the module docstring for what counts)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        graph[module] = {target for target, _ in imports_of(module, path) if target in MODULES and target != module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One loop path (first module repeated at the end) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_loop_in(graph, group) for group in groups]


def _loop_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group (breadth first)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no loop in {sorted(group)}")


def rule_for(module: str) -> set[str]:
    prefix = max((p for p in FORBIDDEN if module == p or module.startswith(p + ".")), key=len)
    return FORBIDDEN[prefix]


def _under(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def test_packages_depend_one_way() -> None:
    violations = []
    for module, path in MODULES.items():
        forbidden = rule_for(module)
        for target, _ in imports_of(module, path):
            bad = sorted(p for p in forbidden if _under(target, p) and not _under(module, p))
            violations += [f"{module} imports {target} (rule: no {p})" for p in bad]
    assert not violations, "dependency rule broken:\n" + "\n".join(sorted(set(violations)))


def test_apps_use_public_trainer_names() -> None:
    """An app composes trainer and streaming through public functions: no ``_private`` trainer module or name."""
    private = []
    for module, path in MODULES.items():
        if not _under(module, APPS):
            continue
        for target, names in imports_of(module, path):
            if _under(target, "trainer") and (any(part.startswith("_") for part in target.split("."))
                                              or any(name.startswith("_") for name in names)):
                private.append(f"{module} imports {target} {names}")
    assert not private, "apps must use the trainer's public names:\n" + "\n".join(private)


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycle(s) between project modules:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_reports_the_loop() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_deferred_imports_count_and_type_only_imports_do_not(tmp_path: Path) -> None:
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from models.archs.base import Classifier\n"
              "def f():\n    from trainer.training.train import train_model\n")
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert imports_of("probe", path) == [("trainer.training.train", ["train_model"])]


@pytest.mark.parametrize(("module", "absent"), [
    ("streaming.pipeline.processor", ["boto3", "trainer"]),
    ("trainer.datasets.build", ["confluent_kafka", "prometheus_client", "streaming"]),
    ("models.inference.predictor", ["confluent_kafka", "prometheus_client", "boto3", "streaming", "trainer"]),
    # the arch registries import an architecture when it is first used: naming them loads no `transformers`
    ("models.archs.checkpoint", ["transformers", "boto3", "trainer"]),
    ("trainer.training.config", ["transformers", "trainer.training.hybrid"]),
])
def test_importing_a_layer_loads_only_what_it_needs(module: str, absent: list[str]) -> None:
    code = (f"import sys, {module}\n"
            f"loaded = [m for m in {absent!r} if m in sys.modules]\n"
            "print(','.join(loaded))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {module} loaded {out.stdout.strip()}"


def test_every_package_says_what_it_holds() -> None:
    """Each package's ``__init__`` opens with a one-line docstring."""
    missing = [module for module, path in MODULES.items() if path.name == "__init__.py"
               and not (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").strip()]
    assert not missing, f"packages without a docstring: {missing}"
