"""Atomic writes and safe reads: no half-written artifact survives a crash, no pickle is loaded."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class ArtifactError(ValueError):
    """A file that exists but cannot be used; the message names the file."""


class ArtifactWriteError(OSError):
    """A write that failed (a full disk or quota, a file size limit, a read-only place); the message
    names the file and the cause, and nothing half-written is left at that path."""


def _write_cause(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror} (errno {err.errno})"
    text = " ".join(str(err).split())
    # safetensors' Rust writer: "Error while serializing: I/O error: No space left on device (os error 28)"
    found = re.search(r"I/O error: (.*) \(os error (\d+)\)", text)
    return f"{found.group(1)} (errno {found.group(2)})" if found else text or type(err).__name__


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A write that fails (ENOSPC, EDQUOT, EFBIG...) removes the temporary file, leaves whatever was at
    `path` untouched, and raises ArtifactWriteError naming `path` and the cause."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.close(fd)
    except OSError as err:
        raise ArtifactWriteError(f"{target}: could not be written: {_write_cause(err)}") from err
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, (OSError, SafetensorError)) and not isinstance(err, ArtifactWriteError):
            raise ArtifactWriteError(f"{target}: could not be written: {_write_cause(err)}; nothing was left "
                                     "there (free space and run again: finished outputs are kept)") from err
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    try:
        text = Path(path).read_bytes().decode("utf-8")
        if not text.strip():
            raise ArtifactError(f"{path}: empty file (a JSON file was expected)")
        return json.loads(text)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: truncated or not a JSON file ({err})") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path}: is a directory, not a JSON file") from None
    except OSError as err:
        raise ArtifactError(f"{path}: could not be read ({_write_cause(err)})") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically; tensors are made contiguous CPU copies."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=dict(metadata) if metadata else None)


def load_tensors(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle); name the file and the missing keys on failure."""
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as err:
        empty = _is_empty(path)
        raise ArtifactError(f"{path}: {'empty file' if empty else 'truncated or not a safetensors file'} "
                            f"({' '.join(str(err).split())})") from None
    missing = [k for k in required if k not in tensors]
    if missing:
        raise ArtifactError(f"{path}: missing tensors {missing}; has {sorted(tensors)[:10]}")
    return tensors


def tensor_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata a safetensors file was saved with (empty where it has none or is unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return {}


def _is_empty(path: str | os.PathLike) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # an .npz is a zip archive (the second: one with no arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an .npz with allow_pickle=False, so an object array is refused instead of unpickled.

    A file cut short (an interrupted copy, a full disk), empty, or of another format is refused with
    one message naming it, never a zipfile or pickle traceback."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if not magic:
            raise ArtifactError(f"{path}: empty file (an .npz was expected)")
        if magic not in ZIP_MAGIC:
            raise ArtifactError(f"{path}: not an .npz file (it does not start as a zip archive)")
        with np.load(str(path), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise ArtifactError(f"{path}: truncated or damaged .npz file ({err or type(err).__name__})") from None
    except ArtifactError:
        raise
    except ValueError as err:
        raise ArtifactError(f"{path}: not a plain .npz of numeric arrays ({' '.join(str(err).split())})") from None
    except OSError as err:
        raise ArtifactError(f"{path}: not a readable .npz file ({err})") from None


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
