"""Where nanoseek finds data and models on disk.

The data directory is the root that holds ``gsm8k/``, ``math500/``, ``countdown/``, ...: the
``--data-dir`` option, else the ``NANOSEEK_DATA_DIR`` environment variable, else ``./data``.
The model cache (converted short-name models such as ``smollm2-135m``) is ``NANOSEEK_CACHE`` or
``~/.cache/nanoseek``.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: ``explicit``, else ``$NANOSEEK_DATA_DIR``, else ``./data``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("NANOSEEK_DATA_DIR")
    return Path(env).expanduser() if env else Path("data")


def cache_dir() -> Path:
    """The local cache root for converted models: ``$NANOSEEK_CACHE`` or ``~/.cache/nanoseek``."""
    env = os.environ.get("NANOSEEK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nanoseek"
