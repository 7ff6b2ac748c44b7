"""Per-token KL estimators between the policy and the reference (Schulman 2020, "Approximating KL").

With ``d = log pi_ref - log pi_theta`` evaluated on tokens sampled from the policy:

* k1 = ``-d``                  unbiased, high variance, can be negative;
* k2 = ``d**2 / 2``             biased, low variance;
* k3 = ``exp(d) - d - 1``       unbiased and always >= 0: the one GRPO uses
  (DeepSeekMath §4.1.1 eq. 4, R1-paper v1 eq. 2; verl ``low_var_kl``; TRL).
"""

from __future__ import annotations

import torch
from torch import Tensor


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 estimator ``exp(ref - logp) - (ref - logp) - 1``, elementwise (any matching shape, e.g. ``[B, T]``).

    Source: DeepSeekMath eq. 4; Schulman 2020. Computed as ``expm1(d) - d`` which is the same
    value without the cancellation of ``exp(d) - 1`` when ``d`` is small. The result is >= 0.
    Gradients flow through ``logp`` (the policy); ``ref_logp`` is normally detached already.
    Mask before calling if masked positions may hold NaN/inf (``grpo_loss`` does).
    """
    d = ref_logp - logp
    return torch.expm1(d) - d


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 estimator ``logp - ref_logp`` (Schulman 2020), elementwise."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 estimator ``(logp - ref_logp)**2 / 2`` (Schulman 2020), elementwise."""
    return 0.5 * (logp - ref_logp).square()
