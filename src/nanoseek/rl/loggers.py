"""Optional TensorBoard / Weights & Biases logging, besides ``metrics.jsonl`` (always written).

``grpo.report_to = ["tensorboard", "wandb"]``. Each backend is imported lazily when the first
metrics arrive; a missing package prints one line and that backend is skipped (the run goes on).
TensorBoard writes to ``RUN_DIR/tensorboard/``; W&B uses the project ``$WANDB_PROJECT`` (default
``nanoseek``) and the run directory's name. Only numbers are sent.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path


class ExternalLoggers:
    """Fan out numeric metrics to the backends named in ``report_to``."""

    def __init__(self, report_to: list[str], run_dir, config: dict | None = None):
        self.backends: list = []
        run_dir = Path(run_dir)
        for name in report_to:
            try:
                if name == "tensorboard":
                    from torch.utils.tensorboard import SummaryWriter

                    w = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
                    self.backends.append(lambda m, s, w=w: ([w.add_scalar(k, v, s) for k, v in m.items()], w.flush()))
                elif name == "wandb":
                    import wandb

                    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "nanoseek"), name=run_dir.name,
                                     dir=str(run_dir), config=config or {}, resume="allow")
                    self.backends.append(lambda m, s, run=run: run.log(m, step=s))
            except Exception as e:  # ImportError, or a backend that cannot start (no login, ...)
                print(f"[nanoseek] report_to {name!r} skipped: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    def log(self, metrics: dict) -> None:
        """Send the finite numbers of ``metrics`` to every backend at ``metrics["step"]``."""
        step = int(metrics.get("step", 0))
        nums = {k: float(v) for k, v in metrics.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        for b in self.backends:
            b(nums, step)
