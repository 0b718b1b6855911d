"""The package's shape: its import graph is acyclic and data flows one way (DESIGN.md §4), and a
function-level import says why it is not at the top of its module."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ncbench"

# The flow, first to last; a module may import modules of its own layer or of earlier layers only.
# Every module of the package belongs to the layer of its longest listed prefix.
FLOW = (
    ("base", ("ncbench", "ncbench.registry", "ncbench.runtime", "ncbench.files", "ncbench.names",
              "ncbench.stats", "ncbench.distributed")),
    ("data", ("ncbench.data", "ncbench.episodes")),
    ("backbones", ("ncbench.backbones", "ncbench.checkpoint")),
    ("pretrain", ("ncbench.recipe", "ncbench.pretrain")),
    ("features", ("ncbench.features",)),
    ("heads/metrics", ("ncbench.heads", "ncbench.metrics", "ncbench.layerwise", "ncbench.tracking", "ncbench.ufm")),
    ("results", ("ncbench.results",)),
    ("pipeline", ("ncbench.taskfiles", "ncbench.tasks", "ncbench.unit", "ncbench.sandbox", "ncbench.run",
                  "ncbench.executor")),
    ("leaderboards", ("ncbench.verify", "ncbench.ranking", "ncbench.analysis", "ncbench.leaderboard", "ncbench.compare",
                      "ncbench.report")),
    ("cli", ("ncbench.api", "ncbench.submit", "ncbench.cli", "ncbench.__main__")),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    best = max(((len(prefix), i) for i, (_, prefixes) in enumerate(FLOW) for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    assert best is not None, f"{module} is in no layer of FLOW: place it in the flow"
    return best[1]


def imports(module: str) -> list[tuple[str, ast.AST, bool]]:
    """(imported ncbench module, node, inside a function) for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, child, in_function) for a in child.names if a.name.split(".")[0] == "ncbench")
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "ncbench":
                for a in child.names:  # `from ncbench import sandbox` imports the module ncbench.sandbox
                    sub = f"{child.module}.{a.name}"
                    found.append((sub if sub in MODULES else child.module, child, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


GRAPH = {m: sorted({target for target, _, _ in imports(m) if target != m}) for m in MODULES}


def test_every_module_is_in_the_flow():
    for module in MODULES:
        layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_flow(module):
    """Module-level and function-level imports alike: nothing imports a later layer."""
    late = [f"{target} ({FLOW[layer(target)][0]})" for target in GRAPH[module] if layer(target) > layer(module)]
    assert not late, f"{module} ({FLOW[layer(module)][0]}) imports against the flow: {late}"


def test_import_graph_is_acyclic():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in GRAPH[module]:
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [module, target] if target in path else [module, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [])


def test_function_level_imports_say_why():
    """A function-level import of any module carries a ``# lazy: <reason>`` comment (on its line, or on the
    comment line above its block of imports): it must buy start-up time or guard an optional dependency."""
    unexplained = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                i = node.lineno - 1
                while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")) and "# lazy:" not in lines[i]:
                    i -= 1  # the start of this block of imports
                if "# lazy:" not in lines[node.lineno - 1] and "# lazy:" not in lines[i] \
                        and not lines[i - 1].strip().startswith("# lazy:"):
                    unexplained.append(f"{module}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unexplained, "function-level imports without a '# lazy: <reason>' comment:\n" + "\n".join(unexplained)
