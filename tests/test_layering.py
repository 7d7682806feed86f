"""Data flows one way: files, xla, keys -> data -> models -> train/explain -> metrics -> reports ->
runner -> pipelines (`docs/architecture.md`).

Checked on the source, with `ast`, for every module of the package:

* upward imports: a module imports only from layers to its left (STYLE.md, habit 1). Metrics
  receive explainers as arguments; the one exception is the channel reduction in
  `xai_jax.explain.postprocess`, which is array plumbing rather than an explainer. Reports receive
  class names as arguments and never import the data generators. Nothing in the package imports
  the repository's `experiments`, `configs` or `benchmarks` (they are not installed).
* function-level imports: none, except optional dependencies (torch and its kin), imported where
  they are needed so that the library runs without them.
* cycles: the graph of module-level imports between the package's modules has none, within a
  layer or across layers.

And for every package (`__init__.py`): its `__all__` lists names it binds, each once, none private.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "xai_jax"
LAYERS = {"files": 0, "xla": 0, "keys": 0, "data": 1, "models": 2, "train": 3, "explain": 3,
          "metrics": 4, "reports": 5, "runner": 6, "pipelines": 7}
# Metrics receive explainers as arguments and never import them: only postprocess.
METRICS_MAY_USE_FROM_EXPLAIN = ("xai_jax.explain.postprocess",)
# Top-level packages of the repository that are run from its root, never imported by the library.
REPOSITORY_ONLY = ("experiments", "configs", "benchmarks")
# Optional dependencies (`pip install -e ".[torch]"`): the only imports allowed inside functions.
OPTIONAL_DEPENDENCIES = ("torch", "torchvision", "captum", "lime", "shap", "quantus")


def _modules() -> dict[str, pathlib.Path]:
  """Every module of the package by dotted name (`xai_jax.explain` for its `__init__.py`)."""
  names = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return names


MODULES = _modules()


def _layer_of(module_path: pathlib.Path) -> str | None:
  relative = module_path.relative_to(PACKAGE).parts
  name = relative[0].removesuffix(".py")
  return name if name in LAYERS else None


def _parse(path: pathlib.Path) -> ast.Module:
  return ast.parse(path.read_text(), filename=str(path))


def _imported_modules(tree: ast.AST) -> list[str]:
  """Every absolute import in `tree`, at any depth: `from a import b` gives `a` and `a.b`."""
  names = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.extend(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.append(node.module)
      names.extend(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def _violations(source_layer: str, imported: list[str]) -> list[str]:
  bad = []
  for name in imported:
    top = name.split(".")[0]
    if top in REPOSITORY_ONLY:
      bad.append(name)
      continue
    if top != "xai_jax" or "." not in name:
      continue
    target = name.split(".")[1]
    if target not in LAYERS or target == source_layer:
      continue
    if LAYERS[target] >= LAYERS[source_layer]:
      bad.append(name)
    elif (source_layer == "metrics" and target == "explain" and name != "xai_jax.explain"
          and not name.startswith(METRICS_MAY_USE_FROM_EXPLAIN)):
      bad.append(name)
    elif source_layer == "reports" and target == "data":
      bad.append(name)
  return bad


def _function_level_imports(tree: ast.Module) -> list[str]:
  """Imports inside a function or class body (not optional dependencies), as 'line: module'."""
  found = []
  for node in ast.walk(tree):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      continue
    for inner in ast.walk(node):
      if isinstance(inner, (ast.Import, ast.ImportFrom)):
        names = ([a.name for a in inner.names] if isinstance(inner, ast.Import)
                 else [inner.module or "."])
        found.extend(f"{inner.lineno}: {n}" for n in names
                     if n.split(".")[0] not in OPTIONAL_DEPENDENCIES)
  return sorted(set(found))


def _module_level_edges(name: str, tree: ast.Module) -> set[str]:
  """The package modules `name` imports at module level (not inside functions or `if
  TYPE_CHECKING`), resolving `from pkg import sub` to the submodule when it is one."""
  edges = set()
  for node in tree.body:
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES
                 else node.module for a in node.names]
    else:
      continue
    edges.update(t for t in targets if t in MODULES and t != name)
  return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle per strongly connected component with more than one module (Tarjan)."""
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph.get(node, ())):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return cycles


def _import_graph() -> dict[str, set[str]]:
  graph = {name: _module_level_edges(name, _parse(path)) for name, path in MODULES.items()}
  # A package's `__init__` importing its own submodules is how packages re-export their API;
  # the submodules importing their siblings go through the package, which is not a cycle.
  for name in graph:
    graph[name] = {t for t in graph[name]
                   if not (t in MODULES and name.startswith(t + "."))}
  return graph


@pytest.mark.parametrize(
    "module_path", sorted(p for p in PACKAGE.rglob("*.py") if _layer_of(p)),
    ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_layers_to_its_left(module_path):
  layer = _layer_of(module_path)
  assert _violations(layer, _imported_modules(_parse(module_path))) == []


@pytest.mark.parametrize("module_path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_level_imports(module_path):
  assert _function_level_imports(_parse(module_path)) == []


def test_no_import_cycles():
  assert _cycles(_import_graph()) == []


def test_every_package_module_has_a_layer():
  assert sorted(n for n, p in MODULES.items() if n != "xai_jax" and not _layer_of(p)) == []


def _bound_names(tree: ast.Module) -> set[str]:
  """The names a module binds at its top level: imports, definitions, assignments."""
  bound = set()
  for node in tree.body:
    if isinstance(node, ast.Import):
      bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      bound.update(a.asname or a.name for a in node.names)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      bound.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      bound.update(t.id for t in targets if isinstance(t, ast.Name))
  return bound


def _all_names(tree: ast.Module) -> list[str] | None:
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "__all__"):
      return list(ast.literal_eval(node.value))
  return None


@pytest.mark.parametrize("package", sorted(p for p in PACKAGE.rglob("__init__.py")),
                         ids=lambda p: str(p.parent.relative_to(PACKAGE.parent)))
def test_every_package_lists_its_public_api(package):
  tree = _parse(package)
  names = _all_names(tree)
  assert names is not None, "no __all__"
  assert len(names) == len(set(names))
  assert [n for n in names if n.startswith("_")] == []
  assert sorted(set(names) - _bound_names(tree)) == []


def test_the_checker_catches_a_backward_import():
  assert _violations("data", ["xai_jax.models.taps"]) == ["xai_jax.models.taps"]
  assert _violations("metrics", ["xai_jax.explain.gradients"]) == ["xai_jax.explain.gradients"]
  assert _violations("metrics", ["xai_jax.explain.postprocess"]) == []
  assert _violations("explain", ["xai_jax.train"]) == ["xai_jax.train"]
  assert _violations("data", ["xai_jax.xla"]) == []
  assert _violations("xla", ["xai_jax.data.cells"]) == ["xai_jax.data.cells"]
  assert _violations("reports", ["xai_jax.metrics.stats"]) == []
  assert _violations("reports", ["xai_jax.data.cells"]) == ["xai_jax.data.cells"]
  assert _violations("runner", ["xai_jax.pipelines.cells"]) == ["xai_jax.pipelines.cells"]
  assert _violations("pipelines", ["experiments.launch"]) == ["experiments.launch"]
  assert _violations("pipelines", ["xai_jax.runner", "numpy"]) == []


def test_the_checker_catches_function_level_imports():
  tree = ast.parse("import numpy\n"
                   "def f():\n  import json\n  from xai_jax import train\n  import torch\n"
                   "class C:\n  def g(self):\n    from xai_jax.data import cells\n")
  assert _function_level_imports(tree) == ["3: json", "4: xai_jax", "8: xai_jax.data"]


def test_the_checker_catches_cycles():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
  assert _cycles(graph) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []
