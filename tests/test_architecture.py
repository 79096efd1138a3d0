"""The layering the code relies on (docs/architecture.md), checked on the
source: every import of one module of the package by another, including
the ones inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reconciler"


def imports() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {m for m in found if m in modules and m != name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_module_imports_one_that_imports_it_back():
    graph = imports()
    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a]
                    if a in reachable(graph, b) and not (a.startswith(b + ".") or b.startswith(a + ".")))
    assert cycles == []


def packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded to the package's parts: each subpackage
    (reconciler.backup, .journal, .targets, ...) and each top-level module is
    one node; the package's own __init__ (its version) is left out."""
    def part(module: str) -> str | None:
        pieces = module.split(".")
        return ".".join(pieces[:2]) if len(pieces) > 1 else None
    folded: dict[str, set[str]] = {}
    for a, targets in graph.items():
        pa = part(a)
        if pa is None:
            continue
        folded.setdefault(pa, set())
        folded[pa] |= {pb for b in targets if (pb := part(b)) is not None and pb != pa}
    return folded


def test_no_package_imports_one_that_imports_it_back():
    """Layers, not modules: backup/ and journal/ both stand on targets/;
    neither imports the other (the journal's bases are recorded through a
    hook the daemon and the CLI connect)."""
    folded = packages(imports())
    cycles = sorted(f"{a} <-> {b}" for a in folded for b in folded[a] if a in reachable(folded, b))
    assert cycles == []
    assert "reconciler.journal" not in folded["reconciler.backup"]
    assert not {"reconciler.backup", "reconciler.journal"} & reachable(folded, "reconciler.targets")


def test_the_planner_and_the_status_records_talk_to_nothing():
    """plan and status are pure: no server, target, clock or file behind them."""
    graph = imports()
    for module in ("reconciler.plan", "reconciler.status"):
        reached = reachable(graph, module)
        assert not {"reconciler.admin", "reconciler.backup.job", "reconciler.daemon", "reconciler.api"} & reached


def _imported(path: Path) -> set[str]:
    """Every module `path` imports, and every name it takes from one (as module.name)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_only_the_admin_package_imports_grpc_and_only_targets_import_paramiko_or_boto3():
    """grpc is imported once, in admin/schema.py (after the namespace fix
    it needs); admin's other rooms take it from there; nothing outside
    admin/ touches it."""
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        names = _imported(path)
        if any(n == "grpc" or n.startswith("grpc.") for n in names):
            assert relative == "admin/schema.py", relative
        if "reconciler.admin.schema.grpc" in names:
            assert relative.startswith("admin/"), relative
        if any(n.split(".")[0] in ("paramiko", "boto3", "botocore") for n in names):
            assert relative.startswith("targets/"), relative
    assert "grpc" in _imported(PACKAGE / "admin" / "schema.py")  # the rule above is about a real import


def test_tests_benchmarks_and_scripts_share_only_tests_support():
    """What tests, bench/ and scripts/ share lives in tests/support/: no one
    imports a test module or the conftest."""
    root = PACKAGE.parent
    offenders = []
    for path in [*root.glob("tests/**/*.py"), *root.glob("bench/*.py"), *root.glob("scripts/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                last = name.split(".")[-1]
                if name.startswith("tests.") and (last.startswith("test_") or last == "conftest"):
                    offenders.append(f"{path.relative_to(root)} imports {name}")
    assert not offenders, offenders


def test_every_test_docs_reliability_cites_exists_and_runs_under_the_faults_marker():
    """docs/reliability.md promises that `pytest -m faults` runs the fault
    and hostile-input suite it lists: each test it cites must exist and
    carry the `faults` mark (by name; a `prefix*` cites every test so
    named). Read from the sources, without running anything."""
    import re
    root = PACKAGE.parent
    text = (root / "docs" / "reliability.md").read_text()
    cited: set[tuple[str, str]] = set()
    for cell in re.findall(r"`([^`]*)`", text):
        module = None
        for part in re.split(r",\s*", cell):
            if m := re.fullmatch(r"(?:tests/)?(test_\w+\.py)::(\w+\*?)(?:\[.*\])?", part):
                module = m.group(1)
                cited.add((module, m.group(2)))
            elif (m := re.fullmatch(r"::(\w+\*?)(?:\[.*\])?", part)) and module:
                cited.add((module, m.group(1)))
    assert len(cited) > 20, "the citations were not found: has the table's format changed?"
    marked: dict[str, dict[str, bool]] = {}
    for module in {m for m, _ in cited}:
        tree = ast.parse((root / "tests" / module).read_text())
        module_marked = any(isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark"
                                                                 for t in node.targets)
                            and "faults" in ast.unparse(node.value) for node in tree.body)
        marked[module] = {node.name: module_marked or any("mark.faults" in ast.unparse(d)
                                                          for d in node.decorator_list)
                          for node in tree.body if isinstance(node, ast.FunctionDef)}
    problems = []
    for module, name in sorted(cited):
        tests = {n: f for n, f in marked[module].items()
                 if (n.startswith(name[:-1]) if name.endswith("*") else n == name)}
        if not tests:
            problems.append(f"{module}::{name} does not exist")
        problems += [f"{module}::{n} is not marked faults" for n, faults in tests.items() if not faults]
    assert not problems, problems
