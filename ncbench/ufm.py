"""Unconstrained features model (UFM; review §3.1.3): a reference task and a test oracle for the metrics.

The features ``H: [N, m]`` of N = K·n samples are free parameters, trained jointly with a linear
classifier ``A: [K, m]`` and bias ``b: [K]`` by full-batch gradient descent (heavy-ball momentum) in
float64 on

    L = (1/N) Σ_i ℓ(A h_i + b, y_i) + (λ/2) (‖A‖²_F + ‖H‖²_F / N + ‖b‖²)

with ℓ the cross-entropy or the squared error to one-hot targets (ℓ = ½‖z − e_y‖²). Its global minimisers
are exactly neurally collapsed (NC1 = 0, simplex-ETF means, self-dual classifier), so NC1, NC2 and NC3
measured along the way must fall by orders of magnitude. Because H enters the penalty divided by N, its
gradient is scaled by N in the update (each h_i then moves like one row of A).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ncbench.metrics import collapse_report

logger = logging.getLogger(__name__)

LOSSES = ("ce", "mse")


@dataclass
class UFMResult:
    """A trained UFM and its metric history.

    features: [N, m] float64 (N = K·n, n samples per class, sample i has label i // n); labels: [N] int64;
    weight: [K, m] float64; bias: [K] float64; history: one dict per record with ``step``, ``loss`` and
    the :func:`ncbench.metrics.collapse_report` keys (``nc1``, ``nc2``, ``nc3``, ``nc4``, ``cdnv_train``...).
    """

    features: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    loss: str
    weight_decay: float
    history: list[dict[str, float]] = field(default_factory=list)

    def final(self) -> dict[str, float]:
        """The last record of :attr:`history`."""
        return self.history[-1]


def _objective(h, a, b, targets, labels, loss: str, weight_decay: float) -> torch.Tensor:
    logits = h @ a.T + b
    if loss == "ce":
        fit = torch.nn.functional.cross_entropy(logits, labels)
    else:
        fit = 0.5 * (logits - targets).square().sum(1).mean()
    penalty = a.square().sum() + h.square().sum() / h.shape[0] + b.square().sum()
    return fit + 0.5 * weight_decay * penalty


def train_ufm(K: int, n: int, m: int, loss: str = "ce", weight_decay: float = 5e-3, lr: float = 0.5,
              steps: int = 1000, seed: int = 0, record_every: int = 100, momentum: float = 0.9) -> UFMResult:
    """Train the UFM with K classes, n samples per class, m feature dimensions.

    loss: ``"ce"`` or ``"mse"``; weight_decay: λ > 0 on A, H (per sample) and b; lr, momentum: heavy-ball
    gradient descent; steps: number of full-batch updates; seed: initialisation (features and weights
    N(0, 1/m)); record_every: metrics are recorded at step 0, every ``record_every`` steps and at the end.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    for name, value in (("K", K), ("n", n), ("m", m), ("steps", steps), ("record_every", record_every)):
        if not isinstance(value, int) or value < (2 if name == "K" else 1):
            raise ValueError(f"{name} must be an integer ≥ {2 if name == 'K' else 1}, got {value!r}")
    for name, value in (("weight_decay", weight_decay), ("lr", lr)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")

    gen = torch.Generator().manual_seed(seed)
    N = K * n
    labels = torch.arange(K).repeat_interleave(n)
    targets = torch.nn.functional.one_hot(labels, K).to(torch.float64)
    scale = m ** -0.5
    h = (scale * torch.randn(N, m, generator=gen, dtype=torch.float64)).requires_grad_()
    a = (scale * torch.randn(K, m, generator=gen, dtype=torch.float64)).requires_grad_()
    b = torch.zeros(K, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([{"params": [h], "lr": lr * N}, {"params": [a, b]}], lr=lr, momentum=momentum)

    result = UFMResult(h.detach(), labels, a.detach(), b.detach(), loss, weight_decay)
    progress = tqdm(range(steps + 1), desc=f"UFM {loss} K={K} n={n} m={m}", disable=None, leave=False)
    for step in progress:
        value = _objective(h, a, b, targets, labels, loss, weight_decay)
        if not torch.isfinite(value):
            raise FloatingPointError(f"UFM diverged at step {step} (non-finite loss); lower lr={lr}")
        if step % record_every == 0 or step == steps:
            record = {"step": step, "loss": float(value.detach())}
            record.update(collapse_report(h.detach(), labels, weight=a.detach(), bias=b.detach()))
            result.history.append(record)
            progress.set_postfix(loss=f"{record['loss']:.4g}", nc1=f"{record['nc1']:.3g}")
        if step == steps:
            break
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    logger.info("UFM %s K=%d n=%d m=%d after %d steps: %s", loss, K, n, m, steps,
                {k: result.final()[k] for k in ("loss", "nc1", "nc2", "nc3")})
    return result
