"""The README's test command is what CI runs (brief: `.ci/run` calls exactly that command)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
  readme = (ROOT / "README.md").read_text()
  blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
  return [line.strip() for block in blocks[:1] for line in block.splitlines()
          if line.strip() and not line.strip().startswith("#")]


def test_readme_opens_with_exactly_two_commands():
  commands = _readme_commands()
  assert len(commands) == 2, commands
  assert "experiments.cells_gallery" in commands[0] or "experiments.cells" in commands[0]
  assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
  test_command = _readme_commands()[1]
  ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
  assert test_command in ci_lines


@pytest.mark.slow
def test_the_readme_api_example_runs_and_gives_documented_shapes():
  readme = (ROOT / "README.md").read_text()
  example = re.findall(r"## The API in a few lines\n\n```python\n(.*?)```", readme, flags=re.S)
  assert len(example) == 1
  namespace: dict = {}
  exec(compile(example[0], "README.md", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["ig"].shape == (8, 64, 64, 3)
  assert namespace["cam"].shape == (8, 64, 64)
  assert namespace["five_band"].recall.shape == (8, 56)
  assert namespace["removal"]["aopc"].shape == (8,)


def test_no_file_points_outside_the_repository():
  """Docstrings cite papers or the repository's own `docs/`, never a folder a clone lacks."""
  outside = re.compile(r"(\.\./|\b)shared/(specs|papers|STYLE)|notes/EXP_" "CONTRACT")
  suffixes = {".py", ".md", ".ipynb", ".toml", ".txt", ".cfg"}
  files = [p for p in ROOT.rglob("*") if p.suffix in suffixes and p.is_file()
           and not any(part.startswith(".") or part.endswith(".egg-info") or part == "workdir"
                       for part in p.relative_to(ROOT).parts)]
  hits = [f"{path.relative_to(ROOT)}:{number}" for path in files
          for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
          if outside.search(line)]
  assert hits == []
