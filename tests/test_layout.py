"""The generated project's layout, read from its imports with `ast`: its top-level folders and
modules form the layers of LAYERS, each importing only from its own layer or a lower one, with
no cycle between them; no module imports another module's private name; every package's
`__init__.py` says in one paragraph what it owns. Checked on the default project and on the
all-non-default one (the image_folder loader, no TensorBoard, no sweeps)."""

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Render
from test_options import ALL_NON_DEFAULT

# The layers, bottom to top: a module imports from its own layer and the layers below it only.
LAYERS: list[tuple[str, ...]] = [
    # small helpers; and how a process ends, standard library only: the entry points import it
    # before anything else, and engine/signals.py ends a second Ctrl-C through it
    ("utils", "exit_status"),
    ("logger",),  # logging, the epoch writer, metrics.csv, TensorBoard
    ("engine",),  # what drives a run: checkpoints, resume, signals, devices, DDP, ...
    ("config_schema", "parse_config", "cli"),  # the config
    ("base",),  # the base classes users subclass
    ("data_loader", "model"),  # the user's data and model
    ("trainer",),  # the user's training step
    # entry points, and the packages of their work
    (
        "train",
        "test",
        "predict",
        "export",
        "launch",
        "sweep",
        "report",
        "convert_checkpoint",
        "sweeps",
        "reports",
        "inference",
    ),
]
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}
PROJECTS = [pytest.param({}, id="defaults"), pytest.param(ALL_NON_DEFAULT, id="non-defaults")]


@dataclass(frozen=True)
class Import:
    """`importer` (a module of the project) imports `module` (another one) at `line`, and `name`
    of it when `name` is not None."""

    importer: str
    line: int
    module: str
    name: str | None = None

    def where(self) -> str:
        return f"{self.importer} (line {self.line})"


def unit(module: str) -> str:
    """The top-level folder or module that `module` belongs to: its layer's member."""
    return module.partition(".")[0]


def module_name(project: Path, path: Path) -> str:
    parts = path.relative_to(project).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def project_modules(project: Path) -> dict[str, ast.Module]:
    """Every module of the project (its own tests included, under `tests.`) by dotted name, parsed."""
    return {module_name(project, path): ast.parse(path.read_text(), str(path)) for path in project.rglob("*.py")}


def imports_of(name: str, tree: ast.Module, modules: dict[str, ast.Module]) -> Iterator[Import]:
    """The project modules (and names of them) that module `name` imports, anywhere in it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield Import(name, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    yield Import(name, node.lineno, submodule)
                else:
                    yield Import(name, node.lineno, node.module, alias.name)


def code_imports(project: Path) -> list[Import]:
    """The imports between the project's modules, its tests left out (they may import anything)."""
    modules = project_modules(project)
    return [
        found
        for name, tree in modules.items()
        if unit(name) != "tests"
        for found in imports_of(name, tree, modules)
        if found.module != name
    ]


def unit_graph(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for found in imports:
        if unit(found.importer) != unit(found.module):
            graph.setdefault(unit(found.importer), set()).add(unit(found.module))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as the path that closes it (`[a, b, a]`), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    return next((cycle for node in sorted(graph) if (cycle := visit(node, []))), None)


def module_aliases(tree: ast.Module, modules: dict[str, ast.Module]) -> dict[str, str]:
    """Local name -> project module, for the names that a module's imports bind to modules."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules or unit(alias.name) in modules:
                    # `import a.b` binds `a`; `import a.b as c` binds `c` to a.b
                    aliases[alias.asname or unit(alias.name)] = alias.name if alias.asname else unit(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(name: str, tree: ast.Module, modules: dict[str, ast.Module]) -> Iterator[str]:
    """Where module `name` reaches into another module's private names: `from x import _y`, or
    `x._y` where `x` names an imported project module (`x.sub._y` too)."""
    for found in imports_of(name, tree, modules):
        if found.name is not None and is_private(found.name):
            yield f"{found.where()}: from {found.module} import {found.name}"
    aliases = module_aliases(tree, modules)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
            continue
        chain, value = [], node.value
        while isinstance(value, ast.Attribute):
            chain.insert(0, value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in aliases:
            target = ".".join([aliases[value.id], *chain])
            if target in modules:
                yield f"{name} (line {node.lineno}): {target}.{node.attr}"


@pytest.mark.parametrize("answers", PROJECTS)
def test_no_import_cycle_between_top_level_folders_and_modules(rendered: Render, answers: dict[str, str]) -> None:
    graph = unit_graph(code_imports(rendered(**answers)))
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("answers", PROJECTS)
def test_every_import_goes_down_the_layers(rendered: Render, answers: dict[str, str]) -> None:
    project = rendered(**answers)
    units = {unit(name) for name in project_modules(project)} - {"tests"}
    assert not units - set(LAYER_OF), f"not in a layer of LAYERS (add them): {sorted(units - set(LAYER_OF))}"
    upward = [
        f"{found.where()} imports {found.module}: {unit(found.importer)} (layer {LAYER_OF[unit(found.importer)]}) "
        f"is below {unit(found.module)} (layer {LAYER_OF[unit(found.module)]})"
        for found in code_imports(project)
        if LAYER_OF[unit(found.module)] > LAYER_OF[unit(found.importer)]
    ]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("answers", PROJECTS)
def test_no_module_uses_another_modules_private_names(rendered: Render, answers: dict[str, str]) -> None:
    modules = project_modules(rendered(**answers))
    found = [use for name, tree in modules.items() for use in private_uses(name, tree, modules)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("answers", PROJECTS)
def test_every_package_says_what_it_owns(rendered: Render, answers: dict[str, str]) -> None:
    project = rendered(**answers)
    packages = sorted(path.parent.relative_to(project).as_posix() for path in project.rglob("__init__.py"))
    assert {"base", "engine", "utils", "logger", "data_loader", "model", "trainer", "reports"} <= set(packages)
    for package in packages:
        docstring = ast.get_docstring(ast.parse((project / package / "__init__.py").read_text()))
        assert docstring, f"{package}/__init__.py has no docstring: say what the package owns"
        assert "\n\n" not in docstring, f"{package}/__init__.py: one paragraph"
