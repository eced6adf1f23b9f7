"""The layer order of docs/architecture.md holds, and its "adding a kernel" example runs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "numpyro_smile"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

#: The documented layers, bottom to top (docs/architecture.md, "Layers").
LAYERS = {
    0: {
        "_version",
        "dynamics",
        "tuning",
        "batching",
        "sharding",
        "runtime",
        "compilation_cache",
        "memory",
        "reductions",
        "diagnostics",
        "convergence",
        "schedules",
    },
    1: {"config", "adaptation", "pretrain"},
    2: {"sampler", "loops", "sgmcmc"},
    3: {"model_views", "replay", "targets", "models", "datasets"},
    4: {"kernel", "sg_kernels"},
    5: {"inference_data", "evaluation", "checkpoint", "draw_groups", "draws_file"},
    6: {"pipeline", "ensemble", "demo", "step_size_selection"},
}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}


def package_imports(path: Path) -> set[str]:
    """The ``numpyro_smile`` modules a file imports (``from numpyro_smile import x`` counts
    ``x`` when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "numpyro_smile":
                found |= {alias.name for alias in node.names if alias.name in LAYER_OF}
            elif node.module.startswith("numpyro_smile."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("numpyro_smile."):
                    found.add(alias.name.split(".")[1])
    return found


def test_every_module_has_a_layer():
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYER_OF), modules ^ set(LAYER_OF)
    diagram = ARCHITECTURE.read_text().split("## Layers", 1)[1].split("##", 1)[0]
    for module in modules - {"_version"}:
        assert f"{module}.py" in diagram, f"{module}.py missing from the layer diagram"


@pytest.mark.parametrize("module", sorted(LAYER_OF))
def test_no_module_imports_a_layer_above_it(module):
    layer = LAYER_OF[module]
    above = {m for m in package_imports(PACKAGE / f"{module}.py") if LAYER_OF[m] > layer}
    assert not above, f"{module} (layer {layer}) imports {sorted(above)} from above"


def test_adding_a_kernel_example_runs_and_is_right(capsys):
    code = re.findall(r"```python\n(.*?)```", ARCHITECTURE.read_text(), re.S)[-1]
    namespace: dict = {}
    exec(compile(code, str(ARCHITECTURE), "exec"), namespace)
    X, y, draws = (np.asarray(namespace[k], np.float64) for k in ("X", "y", "draws"))
    # linear_regression's defaults: N(0, 1) prior, unit noise -> precision X'X + I
    precision = X.T @ X + np.eye(X.shape[1])
    mean = np.linalg.solve(precision, X.T @ y)
    sd = np.sqrt(np.diag(np.linalg.inv(precision)))
    # 4000 SGLD draws with autocorrelation time ~ 1 / (eps N) = 50 steps: ESS ~ 80, so the
    # Monte Carlo error of the mean is ~ sd / 9; SGLD's step-size bias at eps = 1e-5 is
    # smaller still. Allow 0.5 sd.
    assert np.all(np.abs(draws.mean(0) - mean) < 0.5 * sd), (draws.mean(0), mean, sd)
    assert "[" in capsys.readouterr().out


def test_importing_the_package_leaves_arviz_for_later():
    """ArviZ (seconds to import) loads only when InferenceData is built or read."""
    code = "import numpyro_smile, sys; print('arviz' in sys.modules, 'xarray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == ["False", "False"], out
