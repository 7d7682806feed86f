"""Atomic writes and verified read-back: a file is complete, or it is refused or redone.

Two guarantees for every file that xai_jax writes and later reads back (shard tables,
galleries, saved explanations, progress JSON, training checkpoints and their history,
ported weights):

* Atomic writes (`atomic_open`, `write_text`): the data goes to a temporary file beside the
  target, is flushed and fsynced, then `os.replace`d over it, so an interrupted run (even
  `kill -9`) never leaves a partial file.
* Verified reads (`write_verified` / `read_verified`, `write_directory_record` /
  `verify_directory`): after the file is written, a *record* is written beside it (the hidden
  file `.NAME.sha256`, JSON with the SHA-256 of the bytes, their size and, for tables, the
  row count). A read recomputes the checksum, so a file that was truncated, emptied, garbled
  or deleted after it was written raises `DamagedFileError` naming the file and the reason,
  instead of being read as fewer rows. A table that legitimately has no rows is recorded with
  `rows = 0`, and so differs from an emptied one.

The record is written after the data and removed before the data is rewritten, so a file
whose writer was interrupted between the two has no record. Files written before records
existed (older xai_jax versions) have none either. Both are *unrecorded*: `read_verified`
treats them as damaged unless asked to accept them (`unrecorded="warn"` or `"accept"`). The
callers decide what a damaged file means: what is cheap and deterministic to recompute
(shard tables, galleries, derived JSON) is recomputed with a `DamagedFileWarning`; what is
not (ported weights, a training run without an intact checkpoint) is refused with an error
that says how to fix it.

Workdirs written by an xai_jax version before records (backward compatibility): shard tables,
galleries, saved explanations, the sanity checks' accuracy JSON and `history.json` are
unverifiable, so they are recomputed once, each with a warning, to the same bytes; training
checkpoint steps and ported weights cannot be recomputed cheaply, so they are used with a
warning ("unverified") if they load, and checkpoint steps are recorded from then on.

Depends on nothing else in xai_jax.
"""

import contextlib
import hashlib
import io
import json
import os
import pathlib
import shutil
import tempfile
import warnings
import zipfile
from typing import IO, Any, Iterator, Mapping

import numpy as np
import pandas as pd

RECORD_SUFFIX = ".sha256"
UNRECORDED = ("no checksum record (written by an xai_jax version before records, or "
              "interrupted before its record was written)")


class DamagedFileError(Exception):
  """A file that should be read back is missing, truncated, garbled or unverifiable.

  Attributes:
    path: the damaged file or folder.
    reason: what is wrong with it, e.g. "checksum mismatch".
    fix: what the user can do, or None.
  """

  def __init__(self, path, reason: str, fix: str | None = None):
    self.path, self.reason, self.fix = pathlib.Path(path), reason, fix
    super().__init__(f"{self.path} is damaged: {reason}" + (f"; {fix}" if fix else ""))


class UnrecordedFileError(DamagedFileError):
  """A file without a checksum record (older xai_jax, or an interrupted write)."""

  def __init__(self, path, fix: str | None = None):
    super().__init__(path, UNRECORDED, fix)


class DamagedFileWarning(UserWarning):
  """A damaged or unrecorded file was found and is being recomputed."""


def warn_damaged(error: DamagedFileError, action: str) -> None:
  """Warns (`DamagedFileWarning`) that `error.path` is damaged and what is done about it."""
  warnings.warn(f"{error.path} is damaged: {error.reason}; {action}", DamagedFileWarning,
                stacklevel=3)


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
  """Writes `text` (UTF-8) to `path` atomically (no record: for files never read back)."""
  with atomic_open(path, "w") as stream:
    stream.write(text)


def record_path(path) -> pathlib.Path:
  """The record of a file or folder `DIR/NAME`: the hidden file `DIR/.NAME.sha256`."""
  path = pathlib.Path(path)
  return path.parent / f".{path.name}{RECORD_SUFFIX}"


def _describe(data: bytes) -> dict[str, Any]:
  return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _write_record(path: pathlib.Path, record: dict[str, Any]) -> None:
  write_text(record_path(path), json.dumps(record, sort_keys=True) + "\n")


def write_verified(path, data: bytes | str, *, rows: int | None = None) -> None:
  """Writes `data` to `path` atomically, then its record (checksum, size, rows).

  A file that already holds exactly `data` with a matching record is left untouched.

  Args:
    path: the file; its folder is created if needed.
    data: the content (`str` is encoded as UTF-8).
    rows: for tables, the number of data rows (read back by `recorded_rows`).
  """
  path = pathlib.Path(path)
  data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
  record = _describe(data)
  if rows is not None:
    record["rows"] = int(rows)
  try:
    if read_record(path) == record and path.read_bytes() == data:
      return  # already written and intact: leave both untouched
  except (OSError, DamagedFileError):
    pass
  record_path(path).unlink(missing_ok=True)  # no stale record describes the new bytes
  with atomic_open(path, "wb") as stream:
    stream.write(data)
  _write_record(path, record)


def read_record(path) -> dict[str, Any] | None:
  """The record of `path` (None if there is none).

  Raises:
    DamagedFileError: the record itself is unreadable.
  """
  record_file = record_path(path)
  try:
    text = record_file.read_text(encoding="utf-8")
  except FileNotFoundError:
    return None
  try:
    record = json.loads(text)
  except ValueError:
    record = None
  if not isinstance(record, dict):
    raise DamagedFileError(path, f"its record {record_file.name} is unreadable")
  return record


def read_verified(path, *, unrecorded: str = "error", fix: str | None = None) -> bytes:
  """The bytes of `path`, checked against its record.

  Args:
    path: a file written by `write_verified`.
    unrecorded: what to do with a file that has no record: "error" (raise
      `UnrecordedFileError`), "warn" (`DamagedFileWarning`, then return the bytes) or
      "accept" (return the bytes: for inputs that may come from elsewhere).
    fix: appended to the error message (what the user should do).

  Returns:
    The file's bytes.

  Raises:
    FileNotFoundError: neither the file nor a record exists (it was never written).
    DamagedFileError: the file was deleted after its record was written, or its size or
      checksum differs from the record (truncated, emptied, garbled), or the record is
      unreadable; `UnrecordedFileError` for a file without a record (with "error").
  """
  if unrecorded not in ("error", "warn", "accept"):
    raise ValueError(f"unrecorded must be 'error', 'warn' or 'accept'; got {unrecorded!r}")
  path = pathlib.Path(path)
  record = read_record(path)
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    if record is None:
      raise
    raise DamagedFileError(path, "deleted after it was written (its record remains)",
                           fix) from None
  if record is None:
    if unrecorded == "error":
      raise UnrecordedFileError(path, fix)
    if unrecorded == "warn":
      warnings.warn(f"{path} is unverified: {UNRECORDED}; using it as it is",
                    DamagedFileWarning, stacklevel=2)
    return data
  _compare(path, _describe(data), record, fix)
  return data


def _compare(path, found: dict[str, Any], record: dict[str, Any], fix: str | None) -> None:
  if found["size"] != record.get("size"):
    what = "emptied" if found["size"] == 0 else (
        "truncated" if found["size"] < record.get("size", 0) else "grown")
    raise DamagedFileError(path, f"{what}: {found['size']} bytes, {record.get('size')} "
                           "were written", fix)
  if found["sha256"] != record.get("sha256"):
    raise DamagedFileError(path, "garbled: its SHA-256 differs from the one recorded when it "
                           "was written", fix)


def recorded_rows(path) -> int | None:
  """The row count recorded for a table written with `write_verified(..., rows=...)`."""
  record = read_record(path)
  return None if record is None or "rows" not in record else int(record["rows"])


def is_intact(path) -> bool:
  """Whether `path` and its record exist and agree (never raises)."""
  try:
    read_verified(path)
  except (FileNotFoundError, DamagedFileError):
    return False
  return True


def remove_verified(path) -> None:
  """Removes a file (or folder) and its record, if they exist."""
  path = pathlib.Path(path)
  record_path(path).unlink(missing_ok=True)
  if path.is_dir():
    shutil.rmtree(path)
  else:
    path.unlink(missing_ok=True)


def read_or_discard(path, *, action: str) -> bytes | None:
  """The verified bytes of `path`; None if it is missing, or damaged or unrecorded.

  A damaged or unrecorded file is reported with a `DamagedFileWarning` naming it, the reason
  and `action` (what the caller does instead, e.g. "recomputing it"), then removed with its
  record, so the caller recomputes it.
  """
  try:
    return read_verified(path)
  except FileNotFoundError:
    return None
  except DamagedFileError as error:
    warn_damaged(error, action)
    remove_verified(path)
    return None


# --------------------------------------------------------------------------------------------
# Tables (CSV), JSON and arrays (.npz) with fixed bytes: the same values give the same file.


def write_table(frame: pd.DataFrame, path, *, verified: bool = False) -> None:
  """Writes a CSV atomically with a fixed float format (bytes depend only on the values).

  Args:
    frame: the table.
    path: the CSV file.
    verified: also write its record (checksum and row count) for `read_table`; for tables
      that are read back, such as shards.
  """
  text = frame.to_csv(index=False, float_format="%.8g")
  if verified:
    write_verified(path, text, rows=len(frame))
  else:
    write_text(path, text)


def read_table(path, *, fix: str | None = None) -> pd.DataFrame:
  """Reads a table written by `write_table(..., verified=True)`, checking bytes and row count.

  A table recorded with 0 rows (and possibly no columns) reads as an empty DataFrame.

  Raises:
    FileNotFoundError: neither the file nor its record exists.
    DamagedFileError: the file is damaged or has no record (see `read_verified`),
      or its row count differs from the recorded one.
  """
  data = read_verified(path, fix=fix)
  rows = recorded_rows(path)
  try:
    frame = pd.read_csv(io.BytesIO(data))
  except pd.errors.EmptyDataError:  # no columns: a table recorded with 0 rows
    frame = pd.DataFrame()
  except (pd.errors.ParserError, UnicodeDecodeError) as error:
    raise DamagedFileError(path, f"not a readable CSV ({error})", fix) from None
  if rows is None or len(frame) != rows:
    raise DamagedFileError(path, f"holds {len(frame)} rows; its record says {rows}", fix)
  return frame


def write_json(data: Mapping[str, Any], path, *, verified: bool = False) -> None:
  """Writes JSON atomically, keys sorted; with `verified`, also its record (for files read
  back with `read_verified`)."""
  text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
  if verified:
    write_verified(path, text)
  else:
    write_text(path, text)


def save_npz(arrays: Mapping[str, np.ndarray], path) -> None:
  """Writes arrays as a compressed `.npz` with its record (`write_verified`).

  The bytes depend only on the arrays, so a recomputed file is byte-identical.
  """
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  write_verified(path, buffer.getvalue())


def load_npz(path, *, unrecorded: str = "error", fix: str | None = None
             ) -> dict[str, np.ndarray]:
  """Reads an `.npz` written by `save_npz`, checked against its record.

  Args:
    path: the file.
    unrecorded: for a file without a record, as in `read_verified`.
    fix: appended to the error message.

  Raises:
    FileNotFoundError: neither the file nor its record exists.
    DamagedFileError: the file is damaged (or unrecorded, see `unrecorded`) or is not
      a readable `.npz`.
  """
  data = read_verified(path, unrecorded=unrecorded, fix=fix)
  try:
    with np.load(io.BytesIO(data)) as arrays:
      return {k: arrays[k] for k in arrays.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
    raise DamagedFileError(path, f"not a readable .npz ({error})", fix) from None


# --------------------------------------------------------------------------------------------
# Folders written by other libraries (orbax checkpoints): one record for all their files.


def _describe_file(path: pathlib.Path) -> dict[str, Any]:
  """As `_describe(path.read_bytes())`, in chunks (checkpoint files can be gigabytes)."""
  digest, size = hashlib.sha256(), 0
  with open(path, "rb") as stream:
    while chunk := stream.read(1 << 24):
      digest.update(chunk)
      size += len(chunk)
  return {"sha256": digest.hexdigest(), "size": size}


def _folder_files(directory: pathlib.Path) -> dict[str, dict[str, Any]]:
  return {path.relative_to(directory).as_posix(): _describe_file(path)
          for path in sorted(directory.rglob("*")) if path.is_file()}


def write_directory_record(directory) -> None:
  """Records the checksum and size of every file under `directory` (after it is complete)."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"{directory} is not a folder")
  _write_record(directory, {"files": _folder_files(directory)})


def verify_directory(directory, *, unrecorded: str = "error", fix: str | None = None) -> None:
  """Checks every file under `directory` against its record (see `read_verified`).

  Raises:
    FileNotFoundError: neither the folder nor a record exists.
    DamagedFileError: a file is missing, truncated, garbled or added, the folder was deleted,
      or (with `unrecorded="error"`) there is no record (`UnrecordedFileError`).
  """
  directory = pathlib.Path(directory)
  record = read_record(directory)
  if not directory.is_dir():
    if record is None:
      raise FileNotFoundError(f"{directory} does not exist")
    raise DamagedFileError(directory, "deleted after it was written (its record remains)", fix)
  if record is None:
    if unrecorded == "error":
      raise UnrecordedFileError(directory, fix)
    if unrecorded == "warn":
      warnings.warn(f"{directory} is unverified: {UNRECORDED}; using it as it is",
                    DamagedFileWarning, stacklevel=2)
    return
  expected = record.get("files")
  if not isinstance(expected, dict):
    raise DamagedFileError(directory, f"its record {record_path(directory).name} is "
                           "unreadable", fix)
  for name, described in expected.items():
    path = directory / name
    if not path.is_file():
      raise DamagedFileError(path, "deleted after it was written (its record remains)", fix)
    _compare(path, _describe_file(path), described, fix)
  present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
  extra = sorted(present - set(expected))
  if extra:
    raise DamagedFileError(directory, f"holds files that were not written with it: "
                           f"{', '.join(extra[:5])}", fix)
