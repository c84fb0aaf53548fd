"""Anomaly detection on metric histories with scikit-learn (FUM E.7): IsolationForest and a Gaussian mixture.

Both are fitted on the recent history (robustly standardized per metric: median and MAD) and score the newest
window. Each flags it when its score is below the lowest score of the fitted windows by a margin:
IsolationForest's score_samples by `iforest_margin`, the GMM's log-likelihood by `gmm_margin` nats. FUM's
fixed thresholds (IsolationForest `anomaly_score < -0.5`, `GMM.score < -2`) do not transfer: on 100 windows of
6 healthy metrics sklearn's IsolationForest scores a quarter of new healthy windows below -0.5, and a
log-likelihood's level depends on the number of metrics and their scale. With `require="any"` (default) a
window is anomalous when either flags it; "both" asks both to agree. The GMM is the sharper detector for
metrics pushed far outside their range (an isolation tree's path length saturates there).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Detectors", "fit_detectors", "score_window"]


@dataclasses.dataclass(frozen=True)
class Detectors:
    """Fitted models and the standardization they were fitted with. center, scale: (F,)."""

    keys: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    iforest: object
    gmm: object
    iforest_floor: float  # lowest IsolationForest score among the fitted windows
    gmm_floor: float  # lowest log-likelihood among the fitted windows


def _standardize(x: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (x - center) / scale


def fit_detectors(
    history: np.ndarray, keys: tuple[str, ...], *, n_components: int = 1, seed: int = 0, n_trees: int = 50
) -> Detectors:
    """Fit both detectors on history (H, F) of F metrics (rows with NaN dropped; needs >= 10 rows).

    The mixture has up to n_components diagonal Gaussians, at most one per 50 windows (one by default:
    with 100 windows of healthy metrics two components fit noise and raise false alarms)."""
    from sklearn.ensemble import IsolationForest
    from sklearn.mixture import GaussianMixture

    x = np.asarray(history, np.float64)
    if x.ndim != 2 or x.shape[1] != len(keys):
        raise ValueError(f"history has shape {x.shape}, expected (H, {len(keys)})")
    x = x[np.all(np.isfinite(x), axis=1)]
    if x.shape[0] < 10:
        raise ValueError(f"{x.shape[0]} complete windows in the history: need >= 10 to fit the detectors")
    center = np.median(x, axis=0)
    mad = np.median(np.abs(x - center), axis=0) * 1.4826
    std = x.std(axis=0)
    # MAD is 0 for series that are mostly constant; fall back to the std, then to a small absolute scale
    scale = np.where(mad > 0, mad, np.where(std > 0, std, 1e-6 * np.maximum(np.abs(center), 1.0)))
    z = _standardize(x, center, scale)
    iforest = IsolationForest(n_estimators=n_trees, random_state=seed).fit(z)
    gmm = GaussianMixture(
        n_components=max(1, min(n_components, z.shape[0] // 50)),
        covariance_type="diag",
        reg_covar=1e-3,
        random_state=seed,
    ).fit(z)
    if_floor, gmm_floor = float(iforest.score_samples(z).min()), float(gmm.score_samples(z).min())
    return Detectors(tuple(keys), center, scale, iforest, gmm, if_floor, gmm_floor)


def score_window(
    det: Detectors,
    values: np.ndarray,
    *,
    iforest_margin: float = 0.05,
    gmm_margin: float = 5.0,
    require: str = "any",
) -> dict[str, float | bool]:
    """Score one window's metrics (F,): iforest_score, gmm_loglik, the two flags and `anomaly`."""
    if require not in ("both", "any"):
        raise ValueError(f"require = {require!r}: must be 'both' or 'any'")
    v = np.asarray(values, np.float64)
    if v.shape != (len(det.keys),):
        raise ValueError(f"values has shape {v.shape}, expected ({len(det.keys)},)")
    if not np.all(np.isfinite(v)):
        bad = [k for k, x in zip(det.keys, v, strict=True) if not np.isfinite(x)]
        return {
            "iforest_score": float("nan"),
            "gmm_loglik": float("nan"),
            "iforest_flag": True,
            "gmm_flag": True,
            "anomaly": True,
            "nonfinite": ",".join(bad),
        }
    z = _standardize(v, det.center, det.scale)[None, :]
    s_if = float(det.iforest.score_samples(z)[0])
    s_gmm = float(det.gmm.score_samples(z)[0])
    f_if, f_gmm = s_if < det.iforest_floor - iforest_margin, s_gmm < det.gmm_floor - gmm_margin
    anomaly = (f_if and f_gmm) if require == "both" else (f_if or f_gmm)
    return {
        "iforest_score": s_if,
        "gmm_loglik": s_gmm,
        "iforest_flag": bool(f_if),
        "gmm_flag": bool(f_gmm),
        "anomaly": bool(anomaly),
    }
