"""The package's layering, read from its import statements (module level and inside functions).

- no import cycle between modules of `megatron`;
- `megatron.core` (the library) imports neither `megatron.training` (the application) nor
  `megatron.tokenizer`;
- no module of `megatron.core.datasets` imports the curriculum (the curriculum attaches itself to
  datasets from the outside, through their `sample_source()`);
- the model side (`transformer`, `models`, `random_ltd`) does not import the curriculum.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "megatron"


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules():
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: pathlib.Path, modules) -> set:
    """The `megatron` modules a file imports (a `from pkg import name` of a submodule counts as
    that submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]  # a name inside a module: the module
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph():
    modules = all_modules()
    return {name: imported_modules(path, modules) for name, path in modules.items()}


def _is_package_of(package: str, module: str) -> bool:
    return module == package or module.startswith(package + ".")


def find_cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # a package's __init__ importing its own submodules is not a cycle through them
            if _is_package_of(nxt, node):
                continue
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_there_is_a_package_to_check(graph):
    assert "megatron.core.datasets.gpt_dataset" in graph
    assert "megatron.core.curriculum.analysis" in graph["megatron.training.data_efficiency"]


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_detection_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    "importer, forbidden",
    [
        ("megatron.core", "megatron.training"),
        ("megatron.core", "megatron.tokenizer"),
        ("megatron.core.datasets", "megatron.core.curriculum"),
        ("megatron.core.transformer", "megatron.core.curriculum"),
        ("megatron.core.models", "megatron.core.curriculum"),
        ("megatron.core.random_ltd", "megatron.core.curriculum"),
    ],
)
def test_layering(graph, importer, forbidden):
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if _is_package_of(importer, module)
        for target in targets
        if _is_package_of(forbidden, target)
    )
    assert not bad, "\n".join(bad)
