"""A progress bar for training and evaluation loops: a thin wrapper over tqdm.

Shows steps done, rate, ETA and a few chosen metrics (``reward``, ``acc``, ...). On a terminal
it refreshes at most once a second; when stderr is not a terminal (CI logs, ``nohup``) at most
every 30 seconds, so logs stay readable. ``NANOSEEK_QUIET=1`` turns it off entirely.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

__all__ = ["Progress", "quiet"]


def quiet() -> bool:
    """True when ``NANOSEEK_QUIET`` is set to a true value (1, true, yes, on)."""
    return os.environ.get("NANOSEEK_QUIET", "").strip().lower() in {"1", "true", "yes", "on"}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1000 or (0 < abs(value) < 0.001) else f"{value:.3f}"
    return str(value)


class Progress:
    """A progress bar over ``total`` units (steps, prompts, ...).

    ``update(n=1, **postfix)`` advances it and shows the keyword values after the bar, e.g.
    ``bar.update(reward=0.41, acc=0.38)``; ``None`` values are left out. ``initial`` starts a
    resumed loop part-way. ``disable=None`` means: disabled when ``NANOSEEK_QUIET=1``. Use as a
    context manager or call ``close()``. ``write(msg)`` prints a line without breaking the bar.
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        *,
        unit: str = "step",
        initial: int = 0,
        disable: bool | None = None,
        file: TextIO | None = None,
    ):
        from tqdm.auto import tqdm  # lazy: keeps `import nanoseek...` cheap

        file = file if file is not None else sys.stderr
        is_tty = bool(getattr(file, "isatty", lambda: False)())
        self.disabled = quiet() if disable is None else disable
        self._file = file
        self._n = initial  # tracked here: a disabled tqdm does not count
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            initial=initial,
            file=file,
            disable=self.disabled,
            mininterval=1.0 if is_tty else 30.0,
            dynamic_ncols=is_tty,
            ncols=None if is_tty else 100,
            ascii=None if is_tty else True,
            leave=True,
        )

    @property
    def n(self) -> int:
        """Units done so far (including ``initial``)."""
        return self._n

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` and show ``postfix`` metrics (floats to 3 decimals)."""
        shown = {k: _format(v) for k, v in postfix.items() if v is not None}
        if shown:
            self._bar.set_postfix(shown, refresh=False)
        self._n += n
        self._bar.update(n)

    def write(self, message: str) -> None:
        """Print a line above the bar (or plainly when disabled and not quiet)."""
        if self.disabled:
            if not quiet():
                print(message, file=self._file)
            return
        self._bar.write(message, file=self._file)

    def close(self) -> None:
        """Finish the bar (idempotent)."""
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
