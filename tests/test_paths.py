"""The results layout has one home (tunnelscope.study.paths): the rules and the library spell no
path of a study's files themselves, and the budget finds the benchmark files the rules write."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from tunnelscope import budget
from tunnelscope.study import paths
from tunnelscope.study.config import Study
from tunnelscope.study.schema import load_schema

# the top folders of a results directory
TOP = sorted({t.split("/")[0] for t in paths.TEMPLATES.values() if "/" in t} | {"logs", "benchmarks"})
SPELLED = re.compile(rf"^/?({'|'.join(TOP)})/")


def test_a_template_fills_what_it_is_given_and_keeps_the_rest():
    layout = paths.ResultsLayout("out")
    assert layout.path("probe_table") == "out/cells/{cell}/probes/{solver}/{eval_set}.parquet"
    assert layout.path("probe_table", cell="c", solver="lbfgs") == "out/cells/c/probes/lbfgs/{eval_set}.parquet"
    assert layout.log("probe", cell="c") == "out/logs/probe/c_{eval_set}_{solver}.log"
    assert layout.log("analysis") == "out/logs/analysis.log"
    assert layout.benchmark("prepare", dataset="toy", transform="r32") == "out/benchmarks/prepare/toy/r32.tsv"
    with pytest.raises(KeyError, match="no wildcard seed"):
        layout.path("checkpoint", seed=0)


def test_the_rules_spell_no_path():
    """Every path in the rules comes from PATHS (or another rule's output)."""
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        for number, line in enumerate(smk.read_text().splitlines(), 1):
            assert "{RESULTS}/" not in line and not re.search(rf"[\"']/?({'|'.join(TOP)})/", line), (
                f"{smk.name}:{number}: a path spelled in a rule; name it in tunnelscope/study/paths.py: {line.strip()}"
            )


def _docstrings(tree) -> set[int]:
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
    }


def _spelled(tree) -> list[ast.Constant]:
    """Strings (docstrings aside) that start like a path under a results directory, and folder
    names of one joined onto a path (``results / "aggregate"``)."""
    docs = _docstrings(tree)
    found = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
        if SPELLED.search(node.value)
    ]
    joined = [
        node.right
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
        if node.right.value in TOP
    ]
    return found + joined


def test_the_library_and_scripts_spell_no_path_of_the_results_layout():
    found = []
    modules = [*(REPO / "src" / "tunnelscope").rglob("*.py"), *(REPO / "workflow" / "scripts").glob("*.py")]
    for module in sorted(modules):
        if module.name == "paths.py" and module.parent.name == "study":
            continue
        found += [
            f"{module.relative_to(REPO)}:{n.lineno}: {n.value!r}" for n in _spelled(ast.parse(module.read_text()))
        ]
    assert not found, "paths spelled outside tunnelscope/study/paths.py:\n" + "\n".join(found)


def test_the_check_finds_a_spelled_path():
    code = '"""cells/ in a docstring"""\np = results / "aggregate" / "x.csv"\nq = f"{results}/cells/{c}/m.parquet"'
    assert [n.value for n in _spelled(ast.parse(code))] == ["/cells/", "aggregate"]


@pytest.mark.integration
def test_the_budget_reads_the_benchmark_files_the_rules_write(study, monkeypatch):
    """After the tiny study ran, every prepare, pretrain, embed and probe job of its budget has
    its benchmark file where the budget looks for it, and validate's rates are measured ones."""
    monkeypatch.chdir(study)
    tiny = Study(yaml.safe_load((Path(study) / "tiny.yaml").read_text()), load_schema())
    budgets = budget.cell_budgets(tiny)
    jobs = [job for b in budgets for job in b.jobs]
    assert {job.stage for job in jobs} == set(budget.STAGES)
    missing = [job.benchmark for job in jobs if not (Path(tiny.results) / job.benchmark).is_file()]
    assert not missing, missing
    rates = budget.calibrate(budgets, tiny.results)
    assert all(origin == "measured" for origin in rates.origin.values()) and len(rates.measured) == len(jobs)
