"""Atomic file writes: a file either holds everything written to it or does not change.

Used wherever results are written (`runner` tables and galleries, `reports` pages), so an
interrupted run never leaves a partial file behind. Depends on nothing else in xai_jax.
"""

import contextlib
import os
import pathlib
import tempfile
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(path, mode: str = "w") -> Iterator[IO]:
  """Opens a temporary file beside `path`; on success flushes, fsyncs and renames it to `path`.

  Args:
    path: the final file; its folder is created if needed.
    mode: "w" (text, UTF-8) or "wb" (bytes).

  Yields:
    The open temporary file. If the body raises, the temporary file is removed and `path`
    is left as it was.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"mode must be 'w' or 'wb'; got {mode!r}")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(handle, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as stream:
      yield stream
      stream.flush()
      os.fsync(stream.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise


def write_text(path, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  with atomic_open(path, "w") as stream:
    stream.write(text)
