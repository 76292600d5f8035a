"""The package's layers, read from the source: each module imports only from its own unit or from
units below it, there are no import cycles, and jface's own imports sit at module level.

The order (BUILD_NOTES.md, "Architecture"): base → pure ops → file formats → models → the two
methods → data → the training library → programs. A unit is a module or a package prefix; a module
belongs to the longest unit that prefixes it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (layer, units in order): a unit may import itself and every unit listed before it.
LAYERS = [
    ("base", ["jface", "jface.errors", "jface.arrays"]),
    ("ops", ["jface.geometry", "jface.sampling", "jface.lighting", "jface.render"]),
    ("formats", ["jface.files"]),
    ("models", ["jface.models", "jface.flame"]),
    ("methods", ["jface.stn", "jface.deca", "jface.fit"]),
    ("data", ["jface.data"]),
    ("training", ["jface.training"]),
    ("programs", [
        "jface.export", "jface.weights", "jface.render.__main__", "jface.models.__main__",
        "jface.models.defaults.cli", "jface.data.__main__", "jface.stn.demo", "jface.reconstruct",
        "jface.flatten", "jface.demos", "jface.bench", "train",
    ]),
]
UNITS = [unit for _, units in LAYERS for unit in units]

# Imports allowed inside functions: optional dependencies, and the Pallas / GPU paths that a CPU
# install never loads. jface's own modules are always imported at module level.
OPTIONAL = {"PIL", "tensorflow_datasets", "dlib", "face_recognition_models", "mediapipe", "imageio",
            "imageio_ffmpeg", "skimage", "torch", "jax.experimental.pallas", "jax._src", "cv2",
            "array_record", "grain", "tensorboardX", "scipy.io", "h5py", "trimesh", "dm_pix", "pix", "tqdm", "IPython"}


def _modules():
    out = {}
    for path in sorted(list((ROOT / "jface").rglob("*.py")) + list((ROOT / "train").rglob("*.py"))):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _unit(module: str) -> int:
    best = None
    for index, unit in enumerate(UNITS):
        if module == unit or module.startswith(unit + "."):
            if best is None or len(unit) >= len(UNITS[best]):
                best = index
    if best is None:
        raise AssertionError(f"{module}: in no layer of tests/test_layers.py (add it to LAYERS)")
    return best


def _resolve(module: str, node, is_package: bool):
    """Absolute names of what ``node`` imports (submodules where they are modules)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module
    names = []
    for alias in node.names:
        full = f"{target}.{alias.name}"
        names.append(full if full in MODULES else target)
    return names


def _own(name: str):
    """The jface / train module that ``name`` refers to (a parent module when it names an attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports():
    """module -> list of (imported module, at module level?, line, raw name)."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        top = {id(node) for node in tree.body}
        for node in tree.body:  # `if TYPE_CHECKING:` / try-import blocks at module level count as top
            if isinstance(node, (ast.If, ast.Try)):
                top.update(id(child) for child in ast.walk(node))
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _resolve(module, node, path.name == "__init__.py"):
                    edges.append((_own(name), id(node) in top, node.lineno, name))
        graph[module] = edges
    return graph


GRAPH = _imports()


def test_every_module_is_in_a_layer():
    for module in MODULES:
        _unit(module)


def test_no_module_imports_a_layer_above_it():
    violations = []
    for module, edges in GRAPH.items():
        for target, _, line, _ in edges:
            if target is None or target == module:
                continue
            if _unit(target) > _unit(module):
                violations.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} imports {target} "
                                  f"({UNITS[_unit(target)]} is above {UNITS[_unit(module)]})")
    assert not violations, "layer violations:\n" + "\n".join(violations)


def test_no_import_cycles():
    graph = {m: {t for t, _, _, _ in edges if t is not None and t != m} for m, edges in GRAPH.items()}
    # a package's __init__ re-exporting its submodules is not a cycle with them
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_own_modules_are_imported_at_module_level():
    inner = []
    for module, edges in GRAPH.items():
        for target, at_top, line, name in edges:
            if target is not None and not at_top:
                inner.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {name}")
    assert not inner, "jface imports inside functions (move them to the top):\n" + "\n".join(inner)


@pytest.mark.parametrize("source", ["from jface.bench import deca", "import train.stn"])
def test_the_checker_sees_a_violation(source, tmp_path):
    """The checker itself: a library module importing a program is a violation."""
    tree = ast.parse(source)
    node = tree.body[0]
    names = _resolve("jface.models.morphable", node, False)
    target = _own(names[0])
    assert _unit(target) > _unit("jface.models.morphable")
