"""Atomic writes and safe reads: no half-written artifact survives a crash, no pickle is loaded."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class ArtifactError(ValueError):
    """A file that exists but cannot be used; the message names the file."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None


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
        raise ArtifactError(f"{path}: not a readable safetensors file ({err})") from None
    missing = [k for k in required if k not in tensors]
    if missing:
        raise ArtifactError(f"{path}: missing tensors {missing}; has {sorted(tensors)[:10]}")
    return tensors


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an .npz with allow_pickle=False, so an object array is refused instead of unpickled."""
    try:
        with np.load(str(path), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
    except ValueError as err:
        raise ArtifactError(f"{path}: not a plain .npz of numeric arrays ({err})") from None
    except OSError as err:
        raise ArtifactError(f"{path}: not a readable .npz file ({err})") from None


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
