"""JAX's persistent compilation cache: compiled programs kept on disk.

Compiling the fit's programs takes about 8–13 s on 2 CPU cores, as long as the fit
itself on a 250-atom particle. With the cache on, a later run of the same sizes (same
atom capacity, images and settings) loads them instead.
"""

from __future__ import annotations

import os
import pathlib

import jax


def enable(directory: str | os.PathLike) -> pathlib.Path:
    """Keep every compiled program that took over 0.2 s to compile in ``directory``
    (made if missing) and reuse it in later processes. Returns the directory."""
    path = pathlib.Path(directory).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return path
