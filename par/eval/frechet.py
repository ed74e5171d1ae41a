"""The Fréchet distance of two feature sets (FID), shared by the Inception metrics and the classifier's."""

from __future__ import annotations

import numpy as np


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of two Gaussians via torch-fidelity's routine (both sides cast to float64)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    # float64 on both sides: torch-fidelity asserts equal dtypes, and ADM stats npz files are float64.
    s1 = {"mu": np.asarray(mu1, np.float64), "sigma": np.asarray(sigma1, np.float64)}
    s2 = {"mu": np.asarray(mu2, np.float64), "sigma": np.asarray(sigma2, np.float64)}
    return fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID]


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of features as in torch-fidelity and ADM: mean and np.cov(rowvar=False)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    stats = fid_features_to_statistics(features)
    return stats["mu"], stats["sigma"]
