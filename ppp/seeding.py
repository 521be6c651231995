"""Seeds derived from the config and the job's identity, never from global state."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import torch


def derive_seed(base: int, *parts: object) -> int:
    """A stable 63-bit seed from a base seed and any identifying parts (unlike hash(), stable across runs)."""
    text = "/".join([str(int(base))] + [str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


@contextlib.contextmanager
def seeded(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state afterwards.

    Used where torch draws from its global generator internally (PRECODE's sampling, module init)."""
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield
