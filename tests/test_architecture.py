"""The layering contract of the code base (DESIGN.md; issue 16), checked on the import graph of the source.

Every import counts, at module level or inside a function. The rules:

1. ``irn_core`` imports nothing of ``bench``, MLflow, Optuna or pandas (it is usable on its own).
2. Only ``bench.tracking`` imports MLflow; only ``bench.search`` (the package) imports Optuna.
3. Nothing imports the CLI (``bench.cli``) but ``bench.__main__`` and the CLI's own modules.
4. No module imports a private name (``_x``) of another module (a private submodule of its own package is fine).
5. No import cycle among the modules of ``bench`` and ``irn_core``.
6. No module over 500 lines.

``test_checker_finds_violations`` runs the same checker on a small synthetic tree with one violation of each
rule, so that a checker that silently passes everything fails here.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "irn_core")
MAX_LINES = 500


def module_map(root: Path, packages=PACKAGES) -> Dict[str, Path]:
    mods = {}
    for pkg in packages:
        for p in sorted((root / pkg).rglob("*.py")):
            parts = p.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = p
    return mods


def imports_of(name: str, path: Path) -> List[Tuple[str, List[str]]]:
    """(imported module, names taken from it) for every import statement of the file, absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names]))
    return out


def check_tree(root: Path, packages=PACKAGES) -> List[str]:
    """Every violation of the rules in the module docstring, one line each."""
    mods = module_map(root, packages)
    problems: List[str] = []
    edges: Dict[str, Set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            problems.append(f"{name}: {lines} lines (over {MAX_LINES})")
        for mod, names in imports_of(name, path):
            top = mod.split(".")[0]
            if name.startswith("irn_core") and top in ("bench", "mlflow", "optuna", "pandas"):
                problems.append(f"{name}: irn_core imports {mod}")
            if top == "mlflow" and name != "bench.tracking":
                problems.append(f"{name}: imports MLflow (only bench.tracking may)")
            if top == "optuna" and not (name == "bench.search" or name.startswith("bench.search.")):
                problems.append(f"{name}: imports Optuna (only bench.search may)")
            in_cli = name in ("bench.__main__", "bench.cli") or name.startswith("bench.cli.")
            if (mod == "bench.cli" or mod.startswith("bench.cli.")) and not in_cli:
                problems.append(f"{name}: imports the CLI ({mod})")
            for t in [mod] + [f"{mod}.{n}" for n in names]:
                if t in mods and t != name:
                    edges[name].add(t)
            if top in packages:
                for n in names:
                    sub = f"{mod}.{n}"
                    own_private_submodule = sub in mods and mod == (name if path.name == "__init__.py"
                                                                    else name.rpartition(".")[0])
                    if n.startswith("_") and not own_private_submodule:
                        problems.append(f"{name}: imports the private name {n} of {mod}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in _cycles(edges)]
    return problems


def _cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle (as a path) per strongly connected component with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    comps: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    out = []
    for comp in comps:  # a readable path: walk inside the component from its first module back to it
        members, path, seen = set(comp), [comp[0]], {comp[0]}
        while True:
            nxt = sorted(edges[path[-1]] & members)
            back = [w for w in nxt if w == comp[0]]
            if back and len(path) > 1:
                out.append(path + [comp[0]])
                break
            fresh = [w for w in nxt if w not in seen]
            if not fresh:
                out.append(path + ["…"])
                break
            path.append(fresh[0])
            seen.add(fresh[0])
    return out


def test_layers_hold():
    problems = check_tree(ROOT)
    assert not problems, "architecture rules broken:\n" + "\n".join(problems)


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_checker_finds_violations(tmp_path):
    _write(tmp_path, "irn_core/__init__.py", "")
    _write(tmp_path, "irn_core/layers.py", "import pandas\nfrom bench.tracking import Tracker\n")
    _write(tmp_path, "bench/__init__.py", "")
    _write(tmp_path, "bench/__main__.py", "from .cli import main\n")
    _write(tmp_path, "bench/cli/__init__.py", "from . import _opts\n")  # own private submodule: allowed
    _write(tmp_path, "bench/cli/_opts.py", "")
    _write(tmp_path, "bench/tracking.py", "import mlflow\n")
    _write(tmp_path, "bench/report.py", "import mlflow\n\ndef f():\n    from .cli import app\n")
    _write(tmp_path, "bench/suite.py", "def f():\n    from .search import check\n")
    _write(tmp_path, "bench/search.py", "import optuna\nfrom .suite import _helper\n")
    _write(tmp_path, "bench/runner.py", "import optuna\n" + "x = 1\n" * MAX_LINES)
    problems = check_tree(tmp_path)
    expected = ["irn_core.layers: irn_core imports pandas",
                "irn_core.layers: irn_core imports bench.tracking",
                "bench.report: imports MLflow (only bench.tracking may)",
                "bench.report: imports the CLI (bench.cli)",
                "bench.runner: imports Optuna (only bench.search may)",
                "bench.search: imports the private name _helper of bench.suite",
                f"bench.runner: {MAX_LINES + 1} lines (over {MAX_LINES})",
                "import cycle: bench.search -> bench.suite -> bench.search"]
    for line in expected:
        assert line in problems, (line, problems)
    assert len(problems) == len(expected), problems


def test_cli_is_thin_to_import():
    """`bench --help` must not pay for torch, MLflow, Optuna or pandas: the CLI imports them inside commands."""
    heavy = {"torch", "mlflow", "optuna", "pandas", "matplotlib"}
    mods = module_map(ROOT)
    seen, todo = set(), ["bench.cli"]
    while todo:  # module-level imports only, transitively within the project (parent packages run first)
        m = todo.pop()
        if m in seen or m not in mods:
            continue
        seen.add(m)
        for node in ast.parse(mods[m].read_text(encoding="utf-8")).body:
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for mod, names in _top_imports(m, mods[m], node):
                assert mod.split(".")[0] not in heavy, f"{m} imports {mod} at module level"
                parts = mod.split(".")
                todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)] + [f"{mod}.{n}" for n in names]


def _top_imports(name: str, path: Path, node) -> List[Tuple[str, List[str]]]:
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names]
    if node.level:
        base = pkg.split(".")
        base = base[: len(base) - node.level + 1]
        return [(".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names])]
    return [(node.module or "", [a.name for a in node.names])]
