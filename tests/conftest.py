"""Session-wide test hygiene.

Several parity modules cache their torchvision models and ported variables per
architecture with `functools.lru_cache` (VGG11 alone holds about 3 GB in float32
and float64 for both frameworks). Kept for the whole session, these caches made
the suite's RSS climb past 13 GB and the notebook kernels started later were
killed for memory on a 24 GiB machine. Each test module's caches are cleared
when the module finishes.

The modules that take a minute or more run first (`LONG_MODULES`): pytest-xdist's
`--dist loadfile` hands whole modules to the workers in collection order, so a long module
collected last would leave the other worker idle at the end of the run.
"""

import functools
import gc

import pytest

# The longest modules of the non-parity pass (about 60-120 s each on a 2-core CPU), longest
# first; every other module keeps its collection order after them.
LONG_MODULES = ("test_notebooks.py", "test_explain_contract_methods.py",
                "test_inception_explainers.py", "test_sanity_cells.py", "test_models.py",
                "test_runner_evaluate.py", "test_damaged_files.py", "test_mnist.py")


def pytest_collection_modifyitems(config, items):
  """Moves the tests of `LONG_MODULES` to the front, in that order (a stable sort)."""
  del config
  rank = {name: i for i, name in enumerate(LONG_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="module", autouse=True)
def release_module_caches(request):
  """Clears every `functools.lru_cache` defined at the top level of the test module."""
  yield
  for value in vars(request.module).values():
    if isinstance(value, functools._lru_cache_wrapper):  # pylint: disable=protected-access
      value.cache_clear()
  gc.collect()
