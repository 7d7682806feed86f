"""Session-wide test hygiene.

Several parity modules cache their torchvision models and ported variables per
architecture with `functools.lru_cache` (VGG11 alone holds about 3 GB in float32
and float64 for both frameworks). Kept for the whole session, these caches made
the suite's RSS climb past 13 GB and the notebook kernels started later were
killed for memory on a 24 GiB machine. Each test module's caches are cleared
when the module finishes.
"""

import functools
import gc

import pytest


@pytest.fixture(scope="module", autouse=True)
def release_module_caches(request):
  """Clears every `functools.lru_cache` defined at the top level of the test module."""
  yield
  for value in vars(request.module).values():
    if isinstance(value, functools._lru_cache_wrapper):  # pylint: disable=protected-access
      value.cache_clear()
  gc.collect()
