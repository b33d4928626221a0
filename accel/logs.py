"""Logging setup shared by the CLI and the workers: the libraries' chatter kept to warnings."""

from __future__ import annotations

import logging
import os

NOISY = {
    "cache_dit": logging.WARNING,  # logs every hook it installs at INFO
    "diffusers": logging.ERROR,  # e.g. torchao tensor types missing on CPU builds
    "torchao": logging.ERROR,  # optional CUDA kernels missing on CPU machines
    "torch.utils._pytree": logging.ERROR,
}


def quiet_libraries(verbose: bool = False) -> None:
    """Call before cache_dit is imported: it reads its level from the environment once."""
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "info" if verbose else "error")
    if not verbose:
        for name, level in NOISY.items():
            logging.getLogger(name).setLevel(level)


def setup_logging(verbose: bool = False) -> None:
    """For the pack's own processes (CLI, workers, benchmarks); ComfyUI configures its own."""
    quiet_libraries(verbose)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
