"""The library's shape: packages by stage, no import cycles (lazy imports included), no module
importing a later stage, and the workflow layer free of the heavy stack."""

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src" / "tunnelscope"

# Stages in data-flow order: a module may import its own stage or an earlier one, never a later.
STAGES = [
    {"registry", "io", "integrity", "gpuhost", "runtime", "joblog"},
    {"study"},
    {"data"},
    {"models"},
    {"training", "features"},  # siblings: both read and write backbones through models/
    {"probe"},
    {"metrics"},
    {"protocols"},
    {"analysis"},
    {"figures"},
    {"budget", "model_facts", "preflight", "verify"},
    {"commands", "cli"},
]
RANK = {name: i for i, stage in enumerate(STAGES) for name in stage}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every tunnelscope module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; write tunnelscope.PACKAGE.MODULE"
            base = node.module or ""
            # "from tunnelscope.data import synthetic" imports the module tunnelscope.data.synthetic
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    return {name: imported_modules(path, modules) - {name} for name, path in files.items()}


def stage(module: str) -> int:
    if module == "tunnelscope":  # the package's __init__ (its __version__): imports nothing, stage 0
        return 0
    top = module.split(".")[1]
    assert top in RANK, f"{module}: not in a stage of tests/test_layout.py (add its package there)"
    return RANK[top]


def test_no_module_imports_a_later_stage():
    late = [(m, d) for m, deps in import_graph().items() for d in deps if stage(d) > stage(m)]
    assert not late, "imports of a later stage: " + ", ".join(f"{m} -> {d}" for m, d in late)


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_packages_are_light_to_import():
    """Package __init__ files hold no code, so importing one module never drags in its siblings."""
    for init in SRC.rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        code = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        if init.parent == SRC:  # the top package also carries its version
            code = [n for n in code if not (isinstance(n, ast.Assign) and n.targets[0].id == "__version__")]
        assert not code, f"{init.relative_to(REPO)}: keep package __init__ files to a docstring"


def test_the_dag_code_imports_no_heavy_stack():
    """The Snakefile and rules import only torch-free modules, so a dry run takes seconds."""
    graph = import_graph()
    heavy = {"torch", "torchvision", "timm", "matplotlib", "seaborn", "sklearn", "shap", "pandas", "pyarrow"}
    rules = [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]
    direct = set()
    for path in rules:
        for line in path.read_text().splitlines():
            if line.startswith(("from tunnelscope", "import tunnelscope")):
                direct.add(line.split()[1])
    reached, todo = set(), list(direct)
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += graph.get(module, ())
    for module in reached:
        path = SRC.parent.joinpath(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in ast.parse(path.read_text()).body:  # top-level imports only: lazy ones are fine
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not {n.split(".")[0] for n in names} & heavy, (
                f"{module} (read by the DAG) imports {names} at the top"
            )


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 80


def test_modules_and_functions_stay_short():
    """No module over 450 lines; no function over 80, unless the comment line right above its
    def starts with "# long:" and says why."""
    long = []
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(REPO)}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                said = first >= 2 and lines[first - 2].strip().startswith("# long:")
                if size > MAX_FUNCTION_LINES and not said:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.name} is {size} lines")
    assert not long, "split these (or say why above the def, # long: ...):\n" + "\n".join(long)
