"""The package's layering, checked on its source (docs/DESIGN.md draws it).

Layers, lowest first; a module may import its own package and the packages of lower layers,
never a higher one or a sibling of its own layer; no kdkit import sits inside a function; the
module graph has no cycle.

Run: .venv/bin/python -m pytest tests/test_architecture.py -q
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "kdkit"
LAYERS = [{"data"}, {"models"}, {"config"}, {"training"}, {"reporting"}, {"workflows"}, {"deploy", "cluster"},
          {"stream"}, {"bench"}, {"cli", "ui"}]
RANK = {pkg: i for i, group in enumerate(LAYERS) for pkg in group}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _package(module: str) -> str:
    """kdkit.data.graphs -> data; kdkit.config -> config; kdkit -> '' (the top package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _kdkit_imports(path: Path) -> list[tuple[ast.AST, str, bool]]:
    """(node, imported kdkit module, inside a function?) for every kdkit import of a file."""
    tree = ast.parse(path.read_text())
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(fn) if n is not fn)
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "kdkit":
            for alias in node.names:  # `from kdkit.data import graphs` imports the module kdkit.data.graphs
                sub = f"{node.module}.{alias.name}"
                targets.append(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            targets += [a.name for a in node.names if a.name.split(".")[0] == "kdkit"]
        found += [(node, t, id(node) in inside) for t in targets]
    return found


def test_every_package_is_in_a_layer_and_says_what_it_owns():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} | {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
    assert packages <= set(RANK), f"add {sorted(packages - set(RANK))} to LAYERS (and to docs/DESIGN.md)"
    for pkg in packages:
        path = ROOT / pkg / "__init__.py" if (ROOT / pkg).is_dir() else ROOT / f"{pkg}.py"
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc) > 80, f"kdkit.{pkg} needs a docstring saying what it owns and may import"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_respect_the_layers(module):
    src = _package(module)
    for node, target, in_function in _kdkit_imports(MODULES[module]):
        where = f"{MODULES[module].name if not MODULES[module].is_relative_to(ROOT) else MODULES[module].relative_to(ROOT.parent)}:{node.lineno}"
        assert not in_function, f"{where}: kdkit import inside a function ({target}); import at the top"
        dst = _package(target)
        if not src or not dst or dst == src:
            continue
        assert RANK[dst] < RANK[src], (f"{where}: kdkit.{src} (layer {RANK[src]}) imports {target} "
                                       f"(layer {RANK[dst]}): lower layers never import higher ones or siblings")


def test_no_import_cycles():
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for _node, target, _ in _kdkit_imports(path):
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # importing kdkit.data.graphs runs kdkit.data first
                dep = ".".join(parts[:i])
                if dep in MODULES and dep != module and not module.startswith(dep + "."):
                    graph[module].add(dep)
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join(stack[stack.index(d):] + [d]) if d in stack else d
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_library_layers_never_call_a_front_end():
    for module, path in MODULES.items():
        if _package(module) in ("cli", "ui"):
            continue
        text = path.read_text()
        assert "cli_main" not in text and "kdkit.cli.main" not in text.replace("``kdkit.cli.main``", ""), module


def test_lazy_imports_only_in_the_command_dispatch():
    """kdkit/cli/main.py imports a sub-command's topic module when that command runs (keeps
    `kdkit --help` instant); nothing else imports kdkit modules by name at run time."""
    for module, path in MODULES.items():
        if module != "kdkit.cli.main":
            assert "import_module(" not in path.read_text() or "kdkit." not in path.read_text().split(
                "import_module(", 1)[1][:80], f"{module} imports a kdkit module lazily"


def test_kdkit_help_says_what_each_command_says_of_itself():
    """``kdkit --help`` lists the lazy table's one-line help (no topic module imported); each topic
    module registers its command with that same text (``COMMANDS[name][1]``), so the two cannot
    drift apart again (export said "GAT" only, calibrate nothing of --adapt)."""
    import argparse

    from kdkit.cli.main import COMMANDS, build_parser

    sub = next(a for a in build_parser("*")._actions if isinstance(a, argparse._SubParsersAction))
    registered = {choice.dest: choice.help for choice in sub._choices_actions}
    assert {name: text for name, (_, text) in COMMANDS.items()} == registered


def test_training_and_the_detector_start_without_scikit_learn():
    """scikit-learn is imported where a metric or a learned combiner is computed, not at import:
    it added ~0.3 CPU s to every process's start-up (a second training rank's, a detector's)."""
    code = ("import sys, kdkit.workflows.run, kdkit.cli.main, kdkit.cli.train, kdkit.stream.detector; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn')[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.strip() == "[]", out.stdout


def test_no_private_fabric_or_pyg_attributes():
    """Speed-ups are parts of the model or trainer, not patches on library internals."""
    for module, path in MODULES.items():
        text = path.read_text()
        for private in ("._dataloader", "._forward_module", "._original_module", "._compiled_call_impl"):
            assert private not in text, f"{module} reads a private attribute ({private})"
        tree = ast.parse(text)
        for node in ast.walk(tree):  # no instance patching: `obj.forward = ...`
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    assert not (isinstance(t, ast.Attribute) and t.attr == "forward"), \
                        f"{path.relative_to(ROOT.parent)}:{node.lineno} assigns a forward on an instance"


def test_the_layering_test_catches_a_violation(tmp_path, monkeypatch):
    """A lower layer importing a front end, and an import inside a function, are both caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from kdkit.cli.main import main\n\ndef f():\n    from kdkit.data import graphs\n")
    found = _kdkit_imports(bad)
    assert [(t, inside) for _n, t, inside in found] == [("kdkit.cli.main", False), ("kdkit.data.graphs", True)]
    monkeypatch.setitem(MODULES, "kdkit.data.bad", bad)
    with pytest.raises(AssertionError, match="kdkit import inside a function|lower layers never import"):
        test_imports_respect_the_layers("kdkit.data.bad")
