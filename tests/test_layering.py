"""Data flows one way: files, xla, keys -> data -> models -> train/explain -> metrics -> reports ->
runner.

Each module may import only from layers to its left (STYLE.md, habit 1). Metrics receive
explainers as arguments; the one exception is the channel reduction in
`xai_jax.explain.postprocess`, which is array plumbing rather than an explainer.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "xai_jax"
LAYERS = {"files": 0, "xla": 0, "keys": 0, "data": 1, "models": 2, "train": 3, "explain": 3,
          "metrics": 4, "reports": 5, "runner": 6}
# Metrics receive explainers as arguments and never import them: only postprocess.
METRICS_MAY_USE_FROM_EXPLAIN = ("xai_jax.explain.postprocess",)


def _layer_of(module_path: pathlib.Path) -> str | None:
  relative = module_path.relative_to(PACKAGE).parts
  name = relative[0].removesuffix(".py")
  return name if name in LAYERS else None


def _imported_modules(tree: ast.AST) -> list[str]:
  names = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.extend(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.append(node.module)
      names.extend(f"{node.module}.{alias.name}" for alias in node.names)
  return [n for n in names if n.startswith("xai_jax.")]


def _violations(source_layer: str, imported: list[str]) -> list[str]:
  bad = []
  for name in imported:
    target = name.split(".")[1]
    if target not in LAYERS or target == source_layer:
      continue
    if LAYERS[target] >= LAYERS[source_layer]:
      bad.append(name)
    elif (source_layer == "metrics" and target == "explain" and name != "xai_jax.explain"
          and not name.startswith(METRICS_MAY_USE_FROM_EXPLAIN)):
      bad.append(name)
  return bad


@pytest.mark.parametrize(
    "module_path", sorted(p for p in PACKAGE.rglob("*.py") if _layer_of(p)),
    ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_layers_to_its_left(module_path):
  layer = _layer_of(module_path)
  tree = ast.parse(module_path.read_text(), filename=str(module_path))
  assert _violations(layer, _imported_modules(tree)) == []


def test_the_checker_catches_a_backward_import():
  assert _violations("data", ["xai_jax.models.taps"]) == ["xai_jax.models.taps"]
  assert _violations("metrics", ["xai_jax.explain.gradients"]) == ["xai_jax.explain.gradients"]
  assert _violations("metrics", ["xai_jax.explain.postprocess"]) == []
  assert _violations("explain", ["xai_jax.train"]) == ["xai_jax.train"]
  assert _violations("data", ["xai_jax.xla"]) == []
  assert _violations("xla", ["xai_jax.data.cells"]) == ["xai_jax.data.cells"]
  assert _violations("reports", ["xai_jax.metrics.stats", "xai_jax.data.cells"]) == []
