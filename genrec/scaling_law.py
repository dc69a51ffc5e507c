"""The paper's scaling law for generative recommendation: fit, held-out check and plot.

The law (Liu et al. 2025, arXiv 2509.25522) models

    Recall@k = R0 - A / N_SI**a - B / N_CF**b

with ``N_SI`` the parameters that serve semantic information and ``N_CF`` those that serve
collaborative filtering:

* SID-based GR (``paradigm="sid"``): ``N_SI = N_RS + g1*N_LLM + g2*N_QT`` and ``N_CF = N_RS``
  (recommender, frozen modality encoder, quantizer);
* LLM-as-RS (``paradigm="llm"``): ``N_SI = N_LoRA + g*N_LLM`` and ``N_CF = N_LoRA + beta*N_LLM``.

Parameterisation (for a well-conditioned L-BFGS-B problem):

* every parameter count is taken in **millions** (``N / 1e6``), so ``A`` and ``B`` are the
  recall deficits of a 1M-parameter model and stay O(1e-3..1e-1);
* the fit works on ``theta = [R0, log A, a, log B, b, *gammas]`` (natural logs), so the
  amplitudes are positive and span decades; each term is computed as
  ``exp(log A - a * log N_SI)``;
* bounds: ``R0`` in [0, 1]; ``log A``, ``log B`` in [-30, 30]; exponents ``a``, ``b`` in
  [1e-3, 3]; the mixing weights ``g1, g2`` (sid) or ``g, beta`` (llm) in [0, ``gamma_max``];
* the base count (``N_RS`` for sid, ``N_LoRA`` for llm) must be > 0, so ``N_SI`` and ``N_CF``
  are positive for every admissible ``theta``.

The objective is the mean Huber loss of the residuals ``pred - recall`` with threshold
``huber_delta``, divided by a constant (``min(delta, std(recall))**2``) so that gradients are
O(1) at the noise level; the constant does not move the minimiser. It is minimised with
``scipy.optimize.minimize(method="L-BFGS-B")`` and an analytic gradient from several seeded
starts; the best end point wins.

Identifiability: the LLM-as-RS law is exactly symmetric under swapping ``(A, a, g)`` with
``(B, b, beta)`` (both counts share the base ``N_LoRA``). The fit reports the solution with
``gamma >= beta`` (the semantic term draws more on the pretrained LLM). In the SID law the two
terms are told apart only through ``g1*N_LLM + g2*N_QT``; when both weights fit to ~0 (as the
paper reports on Beauty) ``(A, a)`` and ``(B, b)`` are interchangeable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.optimize import minimize

from genrec.artifacts import atomic_path

Paradigm = Literal["sid", "llm"]

_MILLION = 1e6
_N_CORE = 5  # R0, log A, a, log B, b
_GAMMA_NAMES: dict[str, tuple[str, ...]] = {"sid": ("gamma1", "gamma2"), "llm": ("gamma", "beta")}


@dataclass(frozen=True)
class ScalingPoint:
    """One trained model: its parameter counts (raw, not millions) and its Recall@k.

    Counts a paradigm does not use are 0 (e.g. ``n_lora`` for SID-based GR).
    """

    recall: float
    n_rs: float = 0.0
    n_llm: float = 0.0
    n_qt: float = 0.0
    n_lora: float = 0.0
    label: str | None = None
    seed: int | None = None

    @property
    def total_params(self) -> float:
        """All parameters of the system, frozen ones included."""
        return self.n_rs + self.n_llm + self.n_qt + self.n_lora


def _check_paradigm(paradigm: str) -> None:
    if paradigm not in _GAMMA_NAMES:
        raise ValueError(f"unknown paradigm {paradigm!r}; expected 'sid' or 'llm'")


def _design(points: Sequence[ScalingPoint], paradigm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts in millions laid out for the law.

    Returns:
        ``base`` ``[P]`` (N_RS or N_LoRA), ``extra`` ``[P, 2]`` (sid: N_LLM, N_QT; llm: N_LLM,
        N_LLM) and ``recall`` ``[P]``.
    """
    _check_paradigm(paradigm)
    if len(points) == 0:
        raise ValueError("no scaling points given")
    counts = np.array([[p.n_rs, p.n_llm, p.n_qt, p.n_lora] for p in points], dtype=np.float64) / _MILLION
    recall = np.array([p.recall for p in points], dtype=np.float64)
    if not (np.all(np.isfinite(counts)) and np.all(np.isfinite(recall))):
        raise ValueError("parameter counts and recalls must be finite")
    if np.any(counts < 0):
        raise ValueError("parameter counts must be >= 0")
    if paradigm == "sid":
        base, extra = counts[:, 0], counts[:, [1, 2]]
        base_name = "n_rs"
    else:
        base, extra = counts[:, 3], counts[:, [1, 1]]
        base_name = "n_lora"
    if np.any(base <= 0):
        raise ValueError(f"{base_name} must be > 0 for every point of paradigm {paradigm!r}")
    return base, extra, recall


def _terms(theta: np.ndarray, base: np.ndarray, extra: np.ndarray, paradigm: str):
    """The two deficit terms and the counts they use, all ``[P]``."""
    _, log_a, alpha, log_b, beta_exp = theta[:_N_CORE]
    g = theta[_N_CORE:]
    if paradigm == "sid":
        n_si = base + extra @ g
        n_cf = base
    else:
        n_si = base + g[0] * extra[:, 0]
        n_cf = base + g[1] * extra[:, 1]
    t1 = np.exp(log_a - alpha * np.log(n_si))
    t2 = np.exp(log_b - beta_exp * np.log(n_cf))
    return t1, t2, n_si, n_cf


def _predict(theta: np.ndarray, base: np.ndarray, extra: np.ndarray, paradigm: str) -> np.ndarray:
    t1, t2, _, _ = _terms(theta, base, extra, paradigm)
    return theta[0] - t1 - t2


def _objective(theta, base, extra, recall, paradigm, delta, scale):
    """Scaled mean Huber loss and its gradient ``[7]``; vectorised over points."""
    t1, t2, n_si, n_cf = _terms(theta, base, extra, paradigm)
    r = theta[0] - t1 - t2 - recall
    ar = np.abs(r)
    quad = ar <= delta
    loss = np.where(quad, 0.5 * r * r, delta * (ar - 0.5 * delta))
    psi = np.clip(r, -delta, delta)  # d huber / d r
    alpha, beta_exp = theta[2], theta[4]
    # d pred / d theta, [P, 7]
    cols = [np.ones_like(r), -t1, t1 * np.log(n_si), -t2, t2 * np.log(n_cf)]
    if paradigm == "sid":
        cols += [alpha * t1 * extra[:, 0] / n_si, alpha * t1 * extra[:, 1] / n_si]
    else:
        cols += [alpha * t1 * extra[:, 0] / n_si, beta_exp * t2 * extra[:, 1] / n_cf]
    jac = np.stack(cols, axis=1)
    n = r.shape[0]
    return loss.sum() / (n * scale**2), (psi @ jac) / (n * scale**2)


@dataclass
class ScalingFit:
    """A fitted scaling law.

    Attributes:
        paradigm: ``"sid"`` or ``"llm"``.
        r0, a, alpha, b, beta_exp: ``R0``, ``A``, ``a``, ``B``, ``b`` of the law (``A``, ``B``
            for counts in millions).
        gamma1, gamma2: SI weights of N_LLM and N_QT (sid; ``None`` for llm).
        gamma, beta: SI and CF weights of N_LLM (llm; ``None`` for sid).
        loss: final mean Huber loss of the residuals (unscaled).
        r2: coefficient of determination on the fitted points.
        n_converged: how many starts L-BFGS-B reported as converged.
        n_starts: how many starts were run.
        n_points: how many points were fitted.
        huber_delta: the Huber threshold used.
        theta: the raw parameter vector ``[7]`` (``R0, log A, a, log B, b, *weights``).
    """

    paradigm: Paradigm
    r0: float
    a: float
    alpha: float
    b: float
    beta_exp: float
    loss: float
    r2: float
    n_converged: int
    n_starts: int
    n_points: int
    huber_delta: float
    gamma1: float | None = None
    gamma2: float | None = None
    gamma: float | None = None
    beta: float | None = None
    theta: np.ndarray = field(default_factory=lambda: np.zeros(7), repr=False)

    def predict(self, points: Sequence[ScalingPoint]) -> np.ndarray:
        """Recall@k the law predicts for each point.

        Returns:
            ``[P]`` float64.
        """
        base, extra, _ = _design(points, self.paradigm)
        return _predict(self.theta, base, extra, self.paradigm)

    def to_dict(self) -> dict[str, float | int | str | None]:
        """The constants and fit statistics as a JSON-able dict (no ``theta``)."""
        names = ("paradigm", "r0", "a", "alpha", "b", "beta_exp", *_GAMMA_NAMES[self.paradigm],
                 "loss", "r2", "n_converged", "n_starts", "n_points", "huber_delta")
        return {k: getattr(self, k) for k in names}


def _bounds(gamma_max: float) -> list[tuple[float, float]]:
    return [(0.0, 1.0), (-30.0, 30.0), (1e-3, 3.0), (-30.0, 30.0), (1e-3, 3.0),
            (0.0, gamma_max), (0.0, gamma_max)]


def _initial_points(base: np.ndarray, recall: np.ndarray, starts: int, seed: int,
                    gamma_max: float) -> np.ndarray:
    """``[starts, 7]`` starting vectors: one heuristic, the rest seeded random."""
    rng = np.random.default_rng(seed)
    spread = max(float(np.ptp(recall)), 1e-4)
    top = float(np.max(recall))
    log_mid = float(np.median(np.log(base)))
    x0 = np.empty((starts, 7))
    x0[0] = [min(top + 0.2 * spread, 1.0), np.log(spread / 2) + 0.5 * log_mid, 0.5,
             np.log(spread / 2) + 0.5 * log_mid, 0.5, 0.1, 0.1]
    k = starts - 1
    if k > 0:
        alpha = rng.uniform(0.05, 1.5, k)
        beta_exp = rng.uniform(0.05, 1.5, k)
        x0[1:, 0] = np.minimum(top + rng.uniform(0.0, 1.0, k) * spread, 1.0)
        x0[1:, 2], x0[1:, 4] = alpha, beta_exp
        x0[1:, 1] = np.log(spread * rng.uniform(0.05, 1.0, k)) + alpha * log_mid
        x0[1:, 3] = np.log(spread * rng.uniform(0.05, 1.0, k)) + beta_exp * log_mid
        g = 10.0 ** rng.uniform(-4, 0, (k, 2))
        g[rng.random((k, 2)) < 0.2] = 0.0
        x0[1:, 5:] = np.minimum(g, gamma_max)
    lo, hi = np.array(_bounds(gamma_max)).T
    return np.clip(x0, lo, hi)


def fit_scaling_law(points: Sequence[ScalingPoint], paradigm: Paradigm, huber_delta: float = 1e-3,
                    starts: int = 32, seed: int = 0, gamma_max: float = 10.0,
                    max_iter: int = 1000) -> ScalingFit:
    """Fit ``Recall@k = R0 - A / N_SI**a - B / N_CF**b`` by Huber loss and multi-start L-BFGS-B.

    Args:
        points: ``P`` measured models; ``P`` must be at least the 7 free parameters. Repeated
            seeds at one size are separate points.
        paradigm: ``"sid"`` (weights ``gamma1, gamma2``) or ``"llm"`` (``gamma, beta``).
        huber_delta: residuals above this (in recall units) count linearly, so outliers pull
            less; a large value (e.g. 1.0) gives plain least squares.
        starts: number of L-BFGS-B starts (the first heuristic, the rest drawn with ``seed``).
        seed: seed of the random starts.
        gamma_max: upper bound of the mixing weights.
        max_iter: L-BFGS-B iteration limit per start.

    Returns:
        The best fit over the starts.
    """
    _check_paradigm(paradigm)
    base, extra, recall = _design(points, paradigm)
    n_params = 7
    if len(recall) < n_params:
        raise ValueError(f"need at least {n_params} points to fit the {paradigm!r} law "
                         f"({n_params} free parameters), got {len(recall)}")
    if huber_delta <= 0 or starts < 1:
        raise ValueError("huber_delta must be > 0 and starts >= 1")
    std = float(np.std(recall))
    scale = min(huber_delta, std) if std > 0 else huber_delta
    bounds = _bounds(gamma_max)
    best, n_conv = None, 0
    for x0 in _initial_points(base, recall, starts, seed, gamma_max):
        res = minimize(_objective, x0, args=(base, extra, recall, paradigm, huber_delta, scale),
                       jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": max_iter, "ftol": 1e-13, "gtol": 1e-10})
        n_conv += bool(res.success)
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    theta = np.asarray(best.x, dtype=np.float64).copy()
    if paradigm == "llm" and theta[6] > theta[5]:  # canonical order of the symmetric solution
        theta = theta[[0, 3, 4, 1, 2, 6, 5]]
    pred = _predict(theta, base, extra, paradigm)
    resid = pred - recall
    ss_tot = float(np.sum((recall - recall.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")
    ar = np.abs(resid)
    loss = float(np.mean(np.where(ar <= huber_delta, 0.5 * resid**2, huber_delta * (ar - 0.5 * huber_delta))))
    w1, w2 = float(theta[5]), float(theta[6])
    weights = {"gamma1": w1, "gamma2": w2} if paradigm == "sid" else {"gamma": w1, "beta": w2}
    return ScalingFit(paradigm=paradigm, r0=float(theta[0]), a=float(np.exp(theta[1])),
                      alpha=float(theta[2]), b=float(np.exp(theta[3])), beta_exp=float(theta[4]),
                      loss=loss, r2=r2, n_converged=n_conv, n_starts=starts,
                      n_points=len(recall), huber_delta=huber_delta, theta=theta, **weights)


@dataclass(frozen=True)
class HeldOutError:
    """Extrapolation check: the law fitted without the largest size, evaluated on it.

    Attributes:
        size: total parameter count of the held-out size.
        observed: mean Recall@k over the held-out points (all seeds at that size).
        predicted: mean prediction over those points.
        abs_error: ``|predicted - observed|``.
        n_held_out: number of held-out points.
        fit: the fit on the remaining points.
    """

    size: float
    observed: float
    predicted: float
    abs_error: float
    n_held_out: int
    fit: ScalingFit


def held_out_error(points: Sequence[ScalingPoint], paradigm: Paradigm, **fit_kwargs) -> HeldOutError:
    """Fit on all but the largest size (by total parameters) and score the prediction there.

    Every point whose total parameter count equals the largest one (its seeds) is held out.

    Args:
        points: ``P`` measured models; ``P`` minus the held-out ones must be >= 7.
        paradigm: ``"sid"`` or ``"llm"``.
        **fit_kwargs: passed to :func:`fit_scaling_law`.
    """
    _check_paradigm(paradigm)
    if not points:
        raise ValueError("no scaling points given")
    total = np.array([p.total_params for p in points])
    largest = float(total.max())
    held = np.isclose(total, largest, rtol=1e-9, atol=0.0)
    train = [p for p, h in zip(points, held, strict=True) if not h]
    test = [p for p, h in zip(points, held, strict=True) if h]
    fit = fit_scaling_law(train, paradigm, **fit_kwargs)
    predicted = float(np.mean(fit.predict(test)))
    observed = float(np.mean([p.recall for p in test]))
    return HeldOutError(size=largest, observed=observed, predicted=predicted,
                        abs_error=abs(predicted - observed), n_held_out=len(test), fit=fit)


def _grouped(points: Sequence[ScalingPoint]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct configurations sorted by total size.

    Returns:
        ``counts`` ``[G, 4]`` (n_rs, n_llm, n_qt, n_lora), ``total`` ``[G]``, ``mean`` ``[G]``
        and ``std`` ``[G]`` of recall over the seeds of each configuration (ddof 1; 0 for one seed).
    """
    counts = np.array([[p.n_rs, p.n_llm, p.n_qt, p.n_lora] for p in points], dtype=np.float64)
    recall = np.array([p.recall for p in points], dtype=np.float64)
    uniq, inv = np.unique(counts, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    n = np.bincount(inv)
    mean = np.bincount(inv, weights=recall) / n
    sq = np.bincount(inv, weights=(recall - mean[inv]) ** 2)
    std = np.sqrt(np.where(n > 1, sq / np.maximum(n - 1, 1), 0.0))
    total = uniq.sum(axis=1)
    order = np.argsort(total, kind="stable")
    return uniq[order], total[order], mean[order], std[order]


def _path(counts: np.ndarray, steps: int = 16) -> np.ndarray:
    """Densify the ladder of configurations ``[G, 4]`` into ``[(G-1)*steps+1, 4]``.

    Each count is interpolated geometrically between consecutive configurations (linearly where
    one end is 0), so the curve follows the measured ladder smoothly on a log axis.
    """
    if len(counts) < 2:
        return counts
    t = np.linspace(0.0, 1.0, steps, endpoint=False)[None, :, None]  # [1, S, 1]
    c0, c1 = counts[:-1, None, :], counts[1:, None, :]  # [G-1, 1, 4]
    pos = (c0 > 0) & (c1 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        geo = np.exp((1 - t) * np.log(np.where(pos, c0, 1.0)) + t * np.log(np.where(pos, c1, 1.0)))
    lin = (1 - t) * c0 + t * c1
    dense = np.where(pos, geo, lin).reshape(-1, 4)
    return np.concatenate([dense, counts[-1:]], axis=0)


def plot_scaling(fits_and_points: Mapping[str, tuple[ScalingFit | None, Sequence[ScalingPoint]]],
                 path: str | os.PathLike[str], metric_label: str = "Recall@k") -> Path:
    """Plot Recall@k against total parameters with the fitted law, one series per entry.

    Points are the mean ± std over seeds (ddof 1) of each distinct configuration. The line is
    the fitted law along the measured configurations sorted by total size: interpolated
    geometrically between them when they form a ladder (every count non-decreasing), else the
    fitted value at each configuration (``x``) joined by a thin line; a series without a fit
    (too few points) is drawn as points only. Written atomically as PNG.

    Args:
        fits_and_points: legend label -> (fit or ``None``, its points).
        path: destination ``.png``.
        metric_label: y-axis label.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        for i, (name, (fit, points)) in enumerate(fits_and_points.items()):
            color = f"C{i}"
            counts, total, mean, std = _grouped(points)
            ax.errorbar(total, mean, yerr=std, fmt="o", color=color, capsize=3,
                        label=f"{name} (data{'' if fit is not None else ', not fitted'})")
            if fit is None:
                continue
            # A ladder (every count non-decreasing with size) gets a smooth curve; scattered
            # configurations get the fitted value at each, joined in size order.
            ladder = bool(np.all(np.diff(counts, axis=0) >= 0))
            dense = _path(counts) if ladder else counts
            curve = fit.predict([ScalingPoint(recall=0.0, n_rs=c[0], n_llm=c[1], n_qt=c[2], n_lora=c[3])
                                 for c in dense])
            ax.plot(dense.sum(axis=1), curve, "-" if ladder else "x-", color=color, lw=1.5 if ladder else 0.8,
                    label=f"{name} fit (R0={fit.r0:.4f}, R²={fit.r2:.3f})")
        ax.set_xscale("log")
        ax.set_xlabel("total parameters")
        ax.set_ylabel(metric_label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path
