"""The probe solvers off the CPU, without a GPU: run on the meta device under CUDA's device checks
(devicecheck.MetaAsAccelerator), bf16 resolution against a mocked torch.cuda, and a static check
of every seeded draw in src/tunnelscope."""

import ast
from pathlib import Path

import pytest
import torch
from devicecheck import MetaAsAccelerator
from test_probe import LBFGS, PAPER, blobs, probe_job_params, write_layers

from tunnelscope.probe import paper_recipe
from tunnelscope.probe.lbfgs import fit_lbfgs_probe, matmul_precision

SRC = Path(__file__).resolve().parents[1] / "src" / "tunnelscope"


def test_the_meta_mode_refuses_what_cuda_refuses_and_counts_host_reads():
    meta = torch.ones(4, 3, device="meta")
    with MetaAsAccelerator() as mode:
        with pytest.raises(RuntimeError, match="Expected a 'meta' device type for generator but found 'cpu'"):
            meta.normal_(generator=torch.Generator())
        with pytest.raises(RuntimeError, match="same device"):
            torch.mm(meta, torch.ones(3, 2))  # the meta kernel alone runs this
        scaled = meta * torch.tensor(2.0)  # a CPU scalar beside a device tensor is allowed, as on CUDA
        assert float(scaled.sum()) == 1.0 and scaled.cpu().shape == (4, 3)
    assert mode.reads == {"scalar": 1, "copy": 1}


def paper_layers(d=6):
    x, y = blobs(d=d)
    return [(x[:200], x[200:]), (x[:200, :3], x[200:, :3])], y


def test_paper_solver_runs_on_another_device():
    """Its heads and epoch orders are drawn on the CPU and moved; the host reads two values per
    head and epoch and one per epoch (are all losses finite?), then each head's predictions and
    weights once."""
    layers, y = paper_layers()
    params = dict(PAPER, probe_seed=0)
    with MetaAsAccelerator() as mode:
        rows = paper_recipe.fit_paper_probes(layers, y[:200], y[200:], 3, params, device="meta")
    assert [row["device_type"] for row in rows] == ["meta", "meta"] and rows[1]["weights"].shape == (4, 3)
    assert mode.reads == {"scalar": (2 * len(layers) + 1) * params["epochs"], "copy": 2 * len(layers)}


def test_a_paper_epoch_reads_nothing_back_per_batch():
    layers, y = paper_layers()
    gen = torch.Generator().manual_seed(0)
    heads = paper_recipe.init_heads([6, 3], 3, 0.01, gen).to("meta")
    opt = torch.optim.AdamW(heads.parameters(), lr=1e-3)
    xs = [torch.as_tensor(tr, device="meta") for tr, _ in layers]
    with MetaAsAccelerator() as mode:
        paper_recipe.train_epoch(
            heads, opt, xs, torch.as_tensor(y[:200], device="meta"), torch.randperm(200).to("meta"), 32, 0.1
        )
    assert not mode.reads and all(p.device.type == "meta" for p in heads.parameters())


def test_lbfgs_solver_runs_on_another_device():
    x, y = blobs()
    with MetaAsAccelerator() as mode:
        result = fit_lbfgs_probe(x[:200], y[:200], x[200:], y[200:], 3, LBFGS, device="meta")
    assert result["device_type"] == "meta" and result["weights"].shape == (9, 3) and mode.reads["copy"] == 2


@pytest.mark.parametrize(("solver", "device_type"), [("lbfgs", "meta"), ("paper", "meta"), ("sklearn", "cpu")])
def test_every_solver_runs_in_a_job_on_another_device(tmp_path, monkeypatch, solver, device_type):
    """The job's device reaches the torch solvers; scikit-learn runs on the CPU whatever the job
    holds. Every row says which, with the precision of its products."""
    import tunnelscope.probe.job as job

    write_layers(tmp_path)
    monkeypatch.setattr(job, "job_device", lambda *args, **kwargs: torch.device("meta"))
    with MetaAsAccelerator():
        table, weights, _ = job.probe_layers(str(tmp_path), probe_job_params(solver))
    assert table.device_type.eq(device_type).all() and table.precision.eq("fp32").all() and len(weights) == 2


@pytest.mark.parametrize("solver", ["lbfgs", "sklearn", "paper"])
def test_every_probe_row_names_its_precision_and_device(tmp_path, solver):
    import tunnelscope.probe.job as job

    write_layers(tmp_path)
    table, _, _ = job.probe_layers(str(tmp_path), dict(probe_job_params(solver), precision="auto"))
    expected = matmul_precision("auto", "cpu") if solver == "lbfgs" else "fp32"
    assert table.device_type.eq("cpu").all() and table.precision.eq(expected).all()


def mock_gpu(monkeypatch, capability):
    """torch.cuda as on a GPU of ``capability``: bf16 counts as supported below 8.0 only with
    emulation, as torch answers."""
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return including_emulation or capability >= (8, 0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return asked


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")]
)
def test_auto_precision_is_bf16_only_on_gpus_that_have_it_natively(monkeypatch, capability, expected):
    asked = mock_gpu(monkeypatch, capability)
    assert matmul_precision("auto", "cuda:0") == expected and asked == [False]
    assert matmul_precision("fp32", "cuda:0") == "fp32" and matmul_precision("bf16", "cuda:0") == "bf16"


def test_auto_precision_is_fp32_on_a_device_of_unknown_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert matmul_precision("auto", "cpu") == "bf16" and matmul_precision("auto", "meta") == "fp32"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "avx2": True})
    assert matmul_precision("auto", "cpu") == "fp32"


# --- static check: seeded draws land on the CPU ---------------------------------------------------
# The rule, for every function in src/tunnelscope:
# 1. torch.Generator() is made without device=: every generator is a CPU generator.
# 2. A torch draw that takes generator= (torch.rand/randn/randint/randperm, a tensor's random
#    in-place method, torch.nn.init.*) draws into a tensor that is on the CPU by construction in
#    that function: a torch factory or nn constructor without device=, or a name bound there (by
#    assignment or for loop) only to such values, never moved (.to, .cuda, .to_empty) in it. A
#    function parameter is not CPU by construction. Calls of the project's own functions with a
#    generator are not draws: their draws are checked where they are written.
RANDOM_FACTORIES = {"rand", "randn", "randint", "randperm"}
RANDOM_METHODS = {
    "normal_",
    "uniform_",
    "random_",
    "bernoulli_",
    "exponential_",
    "geometric_",
    "cauchy_",
    "log_normal_",
}
CPU_FACTORIES = {"empty", "zeros", "ones", "full", "arange", "linspace", "eye", *RANDOM_FACTORIES}
MOVES = {"to", "cuda", "to_empty"}


def dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return "?"


def places_on_a_device(call: ast.Call) -> bool:
    return any(
        k.arg == "device" and not (isinstance(k.value, ast.Constant) and k.value.value == "cpu") for k in call.keywords
    )


class Function:
    """One function's bindings: name -> the expressions bound to it; names moved in it."""

    def __init__(self, node):
        self.bound, self.moved = {}, set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign):
                for target in sub.targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            self.bound.setdefault(name.id, []).append(sub.value)
            elif isinstance(sub, (ast.For, ast.comprehension)):
                for name in ast.walk(sub.target):
                    if isinstance(name, ast.Name):
                        self.bound.setdefault(name.id, []).append(sub.iter)
            elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr in MOVES:
                if isinstance(sub.func.value, ast.Name):
                    self.moved.add(sub.func.value.id)

    def on_cpu(self, expr, seen=frozenset()) -> bool:
        """Whether ``expr`` is on the CPU by construction (the rule above)."""
        if isinstance(expr, (ast.Attribute, ast.Subscript)):
            return self.on_cpu(expr.value, seen)
        if isinstance(expr, ast.Name):
            if expr.id in seen or expr.id in self.moved or expr.id not in self.bound:
                return False  # a cycle, a moved name, or a parameter / global
            return all(self.on_cpu(value, seen | {expr.id}) for value in self.bound[expr.id])
        if isinstance(expr, ast.Call):
            name = dotted(expr.func)
            if isinstance(expr.func, ast.Attribute) and expr.func.attr in MOVES or places_on_a_device(expr):
                return False
            if name.startswith(("torch.nn.", "nn.")) and name.rsplit(".", 1)[1][:1].isupper():
                return True  # a module built on the CPU (its arguments are sizes)
            if name.startswith("torch.") and name.removeprefix("torch.") in CPU_FACTORIES:
                return True
            if isinstance(expr.func, ast.Attribute) and not name.startswith("torch."):
                return self.on_cpu(expr.func.value, seen)  # a method keeps its tensor's device
        return False


def draw_target(call: ast.Call):
    """What a torch draw with generator= writes into: the call itself for a factory, else the
    tensor it fills; None where the call is no torch draw."""
    name = dotted(call.func)
    if name.startswith("torch.") and name.removeprefix("torch.") in RANDOM_FACTORIES:
        return call
    if name.startswith(("torch.nn.init.", "nn.init.", "init.")):
        return call.args[0]
    if isinstance(call.func, ast.Attribute) and call.func.attr in RANDOM_METHODS:
        return call.func.value
    return None


def generator_draws(source: str, filename: str = "<source>") -> tuple[int, list[str]]:
    """(the torch draws with generator= in ``source``, the rule's complaints)."""
    draws, problems = 0, []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        function = Function(node)
        for call in ast.walk(node):
            if not isinstance(call, ast.Call):
                continue
            where = f"{filename}:{call.lineno} ({node.name})"
            if dotted(call.func) == "torch.Generator" and (call.args or places_on_a_device(call)):
                problems.append(f"{where}: a device generator; the check assumes CPU generators")
            target = draw_target(call) if any(k.arg == "generator" for k in call.keywords) else None
            draws += target is not None
            if target is not None and not function.on_cpu(target):
                problems.append(f"{where}: draws with a CPU generator into a tensor not on the CPU by construction")
    return draws, problems


OLD_RECIPE = """
def fit(dims, n_classes, device, gen):
    heads = torch.nn.ModuleList(torch.nn.Linear(d, n_classes) for d in dims).to(device)
    for head in heads:
        torch.nn.init.normal_(head.weight, 0.0, 0.01, generator=gen)
"""


@pytest.mark.parametrize(
    "source",
    [
        OLD_RECIPE,  # paper_recipe.py before this check
        "def f(gen, device):\n    return torch.randperm(9, generator=gen, device=device)",
        "def f(x, gen):\n    return x.uniform_(generator=gen)",  # x: a parameter, of any device
        "def f(n, gen, device):\n    x = torch.empty(n)\n    x.to(device)\n    return x.normal_(generator=gen)",
        "def f(device):\n    return torch.Generator(device=device)",
    ],
)
def test_the_static_check_flags_draws_off_the_cpu(source):
    assert generator_draws(source)[1]


def test_the_static_check_passes_draws_on_the_cpu():
    source = """
def f(dims, n_classes, n, gen, device):
    heads = torch.nn.ModuleList(torch.nn.Linear(d, n_classes) for d in dims)
    for head in heads:
        torch.nn.init.normal_(head.weight, 0.0, 0.01, generator=gen)
    order = torch.randperm(n, generator=gen).to(device)
    return heads, order, torch.empty(n, 3, dtype=torch.float64).uniform_(0, 1, generator=gen)
"""
    assert generator_draws(source) == (3, [])


def test_every_seeded_draw_in_the_code_lands_on_the_cpu():
    checked = [generator_draws(path.read_text(), str(path.relative_to(SRC))) for path in sorted(SRC.rglob("*.py"))]
    # epoch_order, rrc_boxes (4), crop_plan, the noise corruption, the paper heads' init at least
    assert sum(draws for draws, _ in checked) >= 8
    assert [problem for _, problems in checked for problem in problems] == []
