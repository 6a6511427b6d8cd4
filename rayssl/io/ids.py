"""Stable hashing of video ids: the same value in every process, run and machine.

Manifests choose validation videos by it and the clip sampler seeds every draw with it, so it
lives on the ground floor both use.
"""

from __future__ import annotations

import hashlib


def stable_hash(text: str) -> int:
    """A 63-bit hash of a string that is the same in every process and run."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1
