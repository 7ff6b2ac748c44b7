"""``nanoseek fetch NAME``: convert a short-name model once into the local cache and print its folder.

    nanoseek fetch smollm2-135m      # -> ~/.cache/nanoseek/models/smollm2-135m ($NANOSEEK_CACHE)

After that the name works wherever a model path does (``nanoseek zero --model smollm2-135m``).
See ``nanoseek.model.hub``.
"""

from __future__ import annotations

import argparse

from nanoseek.errors import NanoseekError
from nanoseek.model import hub


def add_arguments(p: argparse.ArgumentParser) -> None:
    names = ", ".join(f"{k} ({v.description})" for k, v in sorted(hub.MODELS.items()))
    p.add_argument("name", nargs="?", help=f"short model name: {names}")
    p.add_argument("--force", action="store_true", help="convert again even if the cached folder exists")
    p.add_argument("--list", action="store_true", help="list the short names and where each is cached")


def run(args) -> int:
    if args.list:
        for name in hub.known_models():
            d = hub.model_dir(name)
            state = "cached" if (d / "config.json").is_file() else "not fetched"
            print(f"{name}\t{state}\t{d}\t{hub.MODELS[name].description}")
        return 0
    if not args.name:
        raise NanoseekError(f"give a short model name; known short names: {', '.join(hub.known_models())}")
    path = hub.ensure_model(args.name, force=args.force)
    print(path)
    return 0
