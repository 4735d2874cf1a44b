"""Ridge regression with standardised features and a regularisation strength chosen on validation data.

The model of one attribute: ``y ≈ b + Σ_j w_j · (x_j − μ_j) / σ_j`` where ``μ``, ``σ`` are the training
split's feature means and standard deviations, ``b`` the training targets' mean (not penalised) and ``w``
minimises ``‖y − b − X̃w‖² + α‖w‖²``. One eigendecomposition of the ``P × P`` Gram matrix ``X̃ᵀX̃ = V Λ Vᵀ``
gives the solution for every ``α`` of the grid at once: ``w(α) = V · diag(1 / (λ + α)) · Vᵀ X̃ᵀ (y − b)``.
At MSP-Podcast's size (84,000 training clips × the ``NUM_FEATURES`` statistics of
``sertool.models.utterance_stats``) that is about 6× faster than an SVD of
``X̃`` itself; forming ``X̃ᵀX̃`` squares the matrix's condition, but every ``α`` of the grid is at least 0.01
on standardised features, which keeps ``λ + α`` far from the rounding of the product. With fewer training rows
than features (openSMILE's 6,373 ComParE functionals on a few hundred clips) the same solutions come from the
``N × N`` kernel ``X̃X̃ᵀ = U S Uᵀ`` instead, ``w(α) = X̃ᵀ U · diag(1 / (s + α)) · Uᵀ (y − b)`` (the identity
``(X̃ᵀX̃ + αI)⁻¹X̃ᵀ = X̃ᵀ(X̃X̃ᵀ + αI)⁻¹``): an eigendecomposition of ``N × N`` instead of ``P × P``, seconds instead
of minutes for ComParE on a small corpus.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sertool.data.records import ATTRIBUTES
from sertool.models.ccc import ccc_scores

# A training standard deviation below this is a constant feature's rounding, not variation (scikit-learn's
# StandardScaler draws the same line): openSMILE's ComParE functionals hold features that are 0 on all but one
# training clip, where they are 3e-16; dividing by such a spread put a held-out clip's 8.8 at 2e17 standard
# deviations, and its prediction at 1e13. Such a feature keeps scale 1, as an exactly constant one does.
CONSTANT_SCALE = 10 * float(np.finfo(np.float64).eps)
# Regularisation strengths tried (on standardised features): 1e-2 … 1e6, four per decade.
ALPHAS: tuple[float, ...] = tuple(float(value) for value in np.logspace(-2, 6, 33))


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and scale of the training split; a constant feature (a spread below ``CONSTANT_SCALE``)
    keeps scale 1 (it becomes 0, or its rounding)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> "Standardizer":
        scale = features.std(axis=0)
        return cls(features.mean(axis=0), np.where(scale > CONSTANT_SCALE, scale, 1.0))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.scale


@dataclass(frozen=True)
class RidgeModel:
    """A fitted ridge per attribute: ``predict(x) = intercept + standardize(x) @ weights``.

    Attributes:
        standardizer: the training split's feature statistics.
        weights: ``[P, 3]``, one column per attribute (A, V, D).
        intercept: ``[3]``, the training targets' means.
        alphas: ``[3]``, the regularisation strength of each attribute.
    """

    standardizer: Standardizer
    weights: np.ndarray
    intercept: np.ndarray
    alphas: np.ndarray

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``[N, 3]`` predictions on the targets' scale."""
        return self.intercept + self.standardizer(features) @ self.weights


def ridge_path(features: np.ndarray, targets: np.ndarray,
               alphas: tuple[float, ...]) -> tuple[Standardizer, np.ndarray, np.ndarray]:
    """Ridge solutions for every ``alpha``.

    Args:
        features: ``[N, P]`` training features (raw; standardised here).
        targets: ``[N, K]`` training targets.
        alphas: positive regularisation strengths.

    Returns:
        The standardizer, the weights ``[len(alphas), P, K]`` and the intercept ``[K]``.

    Raises:
        ValueError: an alpha is not positive, or fewer than two training rows.
    """
    if min(alphas) <= 0:
        raise ValueError("ridge_path: every alpha must be positive")
    if len(features) < 2:
        raise ValueError("ridge_path: need at least two training rows")
    standardizer = Standardizer.fit(features)
    intercept = targets.mean(axis=0)
    standardised = standardizer(features)
    centred = targets - intercept
    rows, features_count = standardised.shape
    if rows < features_count:  # the kernel's eigendecomposition: N × N
        eigenvalues, vectors = _eigh(standardised @ standardised.T)
        shrink = 1.0 / (eigenvalues[None, :] + np.asarray(alphas)[:, None])  # [A, N]
        coefficients = np.einsum("nr,ar,rk->ank", vectors, shrink, vectors.T @ centred)  # [A, N, K]
        return standardizer, np.einsum("np,ank->apk", standardised, coefficients), intercept
    eigenvalues, vectors = _eigh(standardised.T @ standardised)
    projected = vectors.T @ (standardised.T @ centred)  # [P, K]
    shrink = 1.0 / (eigenvalues[None, :] + np.asarray(alphas)[:, None])  # [A, P]
    weights = np.einsum("pr,ar,rk->apk", vectors, shrink, projected)
    return standardizer, weights, intercept


def _eigh(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (none below 0) and eigenvectors of a symmetric positive semi-definite matrix."""
    # Rounding may leave an eigenvalue of a singular matrix (more features than rows) slightly negative.
    eigenvalues, vectors = np.linalg.eigh(gram)
    return np.clip(eigenvalues, 0.0, None), vectors


def fit_ridge(train_features: np.ndarray, train_targets: np.ndarray, valid_features: np.ndarray,
              valid_targets: np.ndarray, *, alphas: tuple[float, ...] = ALPHAS) -> tuple[RidgeModel, np.ndarray]:
    """Fit on the training split; for each attribute keep the ``alpha`` with the best validation CCC.

    Ties go to the larger ``alpha`` (the simpler model). Nothing is refitted on the validation data: it
    only chooses ``alpha``, as it only chooses the checkpoint of a trained system.

    Args:
        train_features, train_targets: ``[N, P]`` and ``[N, 3]``.
        valid_features, valid_targets: ``[M, P]`` and ``[M, 3]``.
        alphas: the grid.

    Returns:
        The model and the validation CCC of every alpha and attribute, ``[len(alphas), 3]``.
    """
    standardizer, weights, intercept = ridge_path(train_features, train_targets, alphas)
    valid_x = standardizer(valid_features)
    curve = np.array([[ccc_scores(intercept + valid_x @ w, valid_targets)[name] for name in ATTRIBUTES]
                      for w in weights])
    # Largest alpha among the best: scan the grid from the top.
    best = len(alphas) - 1 - np.argmax(curve[::-1], axis=0)
    chosen = np.stack([weights[best[k], :, k] for k in range(len(ATTRIBUTES))], axis=1)
    return RidgeModel(standardizer, chosen, intercept, np.asarray(alphas)[best]), curve

