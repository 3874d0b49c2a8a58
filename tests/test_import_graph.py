"""The package's import graph, read from the source with `ast`: no circle, and no import that runs up a layer.

Layers, lowest first (a module may import only modules of a lower layer, or of its own layer without a circle):
the float64 oracle and plain helpers; the Triton kernels (torch and triton only); the PyTorch implementations; the
recurrent state; the model; data and generation; training; the experiments built on training (recall, bench, decode); the
grading package; and the front ends (widgets, figures, doctor, site, colab, lab, grade, make_exercises). Imports inside
functions count too: a lazy import that runs upward is still an arrow the wrong way. A new module must be given a
layer here, so the map cannot silently fall behind the code.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "logattn_ref"

LAYERS = [
    {"notation", "numpy_ref", "course", "notebooks", "runio", "results"},
    {"triton_kernels"},
    {"torch_attention"},
    {"recurrent", "family"},  # family: the linear-attention relatives, beside the recurrent state it reuses
    {"model"},
    {"data", "mqar", "generate"},
    {"train"},
    {"recall", "bench", "decode"},
    {"grading", "grading.assign", "grading.registry", "grading.checker", "grading.reset",
     *{f"grading.lesson{n}" for n in range(1, 10)}, "grading.lesson4b"},
    {"widgets", "figures", "doctor", "site", "colab", "lab", "grade", "make_exercises", "__init__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set:
    """The package modules ``path`` imports (relative or absolute, at module level or inside functions)."""
    name = _module_name(path)
    package_parts = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        package_parts = []
    found = set()
    known = set(RANK) | {_module_name(p) for p in PACKAGE.rglob("*.py")}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)] if node.level > 1 else package_parts
                prefix = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "logattn_ref":
                prefix = node.module[len("logattn_ref"):].lstrip(".")
            else:
                continue
            for alias in node.names:  # `from . import numpy_ref` names a module; `from .x import y` names x
                candidate = f"{prefix}.{alias.name}".strip(".")
                found.add(candidate if candidate in known else prefix)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "logattn_ref":
                    found.add(alias.name[len("logattn_ref"):].lstrip("."))
    found.discard("")
    found.discard(name)
    # A module's own parent packages are initialised before it runs (`from . import __path__`): not an arrow.
    parents = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
    return found - parents


def graph() -> dict:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    missing = sorted(set(graph()) - set(RANK))
    assert not missing, f"modules without a layer in tests/test_import_graph.py: {missing}"


def test_no_import_runs_up_a_layer():
    upward = [f"{a} (layer {RANK[a]}) imports {b} (layer {RANK[b]})"
              for a, targets in graph().items() for b in sorted(targets)
              if a in RANK and b in RANK and RANK[b] > RANK[a]]
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def _find_cycle(edges: dict):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_circle_of_imports():
    cycle = _find_cycle(graph())
    assert cycle is None, "a circle of imports: " + " -> ".join(cycle)


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
])
def test_cycle_finder_finds_a_circle(edges, expected):
    assert _find_cycle(edges) == expected


def test_reader_sees_relative_absolute_and_lazy_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "logattn_ref"
    (pkg / "grading").mkdir(parents=True)
    (pkg / "numpy_ref.py").write_text("")
    (pkg / "model.py").write_text("")
    (pkg / "grading" / "__init__.py").write_text("")
    (pkg / "grading" / "registry.py").write_text("")
    (pkg / "grading" / "lesson1.py").write_text(
        "from .. import numpy_ref\nfrom .registry import task\n"
        "def f():\n    from logattn_ref.model import GPT\n    import logattn_ref.numpy_ref\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert _imports(pkg / "grading" / "lesson1.py") == {"numpy_ref", "grading.registry", "model"}


def test_one_import_style_relative_inside_the_package():
    absolute = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n.split(".")[0] == "logattn_ref" for n in names):
                absolute.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not absolute, "absolute imports of the package from inside it (use relative ones): " + ", ".join(absolute)
