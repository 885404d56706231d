"""DeepGaussianMixture as scikit-learn sees it: clone, parameters, GridSearchCV, check_estimator, and the
numbers it returns against the model it wraps."""

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import check_estimator

from dcgmm import DeepGaussianMixture

SMALL = "F(4,4,2,2) G(4) F(3,3,1,1) G(5)"


@pytest.fixture(scope="module")
def fitted(digits):
    images = digits[0][:600, :, :, 0]  # (N, 8, 8) grey images
    return DeepGaussianMixture(arch=SMALL, n_epochs=2, batch_size=50).fit(images), images


def test_parameters_and_clone():
    est = DeepGaussianMixture(arch=SMALL, n_epochs=3)
    params = est.get_params()
    assert params["arch"] == SMALL and params["n_epochs"] == 3 and set(params) == {
        "arch", "image_shape", "n_epochs", "batch_size", "learning_rate", "variance_floor", "top_variance_floor", "random_state", "device", "verbose"}
    copy = clone(est.set_params(n_epochs=4))
    assert copy.get_params() == est.get_params() and copy is not est and not hasattr(copy, "model_")


def test_scores_predictions_and_samples_agree_with_the_model(fitted):
    est, images = fitted
    scores = est.score_samples(images[:40])
    assert scores.shape == (40,) and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, est.model_.log_likelihoods(images[:40, :, :, None])[-1].per_image)
    assert est.score(images[:40]) == pytest.approx(scores.mean())
    proba = est.predict_proba(images[:40])
    assert proba.shape == (40, est.n_components_) and np.allclose(proba.sum(1), 1, atol=1e-5) and (proba >= 0).all()
    np.testing.assert_array_equal(est.predict(images[:40]), proba.argmax(1))
    X, components = est.sample(30)
    assert X.shape == (30, 8, 8, 1) and components.shape == (30,) and set(components) <= set(range(est.n_components_))


def test_flat_input_with_an_image_shape(digits):
    flat = digits[0][:300].reshape(300, 64)
    est = DeepGaussianMixture(arch=SMALL, image_shape=(8, 8), n_epochs=1, batch_size=50).fit(flat)
    assert est.image_shape_ == (8, 8, 1) and est.n_features_in_ == 64
    X, _ = est.sample(5)
    assert X.shape == (5, 64)  # samples come back in the layout fit was given
    with pytest.raises(ValueError, match="64 features"):
        est.score_samples(flat[:, :60])


def test_grid_search_and_pipeline(digits):
    images = digits[0][:400, :, :, 0]
    search = GridSearchCV(DeepGaussianMixture(arch=SMALL, batch_size=50), {"n_epochs": [1, 3]}, cv=2)
    search.fit(images)
    assert search.best_params_["n_epochs"] in (1, 3) and np.isfinite(search.cv_results_["mean_test_score"]).all()
    by_arch = GridSearchCV(DeepGaussianMixture(n_epochs=1, batch_size=50), {"arch": [SMALL, "F(8,8,1,1) G(4)"]}, cv=2).fit(images)
    assert len(by_arch.cv_results_["params"]) == 2
    pipe = make_pipeline(FunctionTransformer(lambda x: x.reshape(len(x), 8, 8)), DeepGaussianMixture(arch=SMALL, n_epochs=1, batch_size=50))
    assert pipe.fit(images.reshape(400, 64)).score_samples(images[:5].reshape(5, 64)).shape == (5,)


EXPECTED_FAILED_CHECKS = {
    "check_methods_subset_invariance": (
        "the model computes in float32: predict_proba of a batch and of its subsets take the matrix products in "
        "other shapes and differ by about 1e-7, at the check's rtol of 1e-7"
    ),
}


def test_check_estimator():
    """scikit-learn's own checks, on flat data (one position with D channels: arch G(3) is a plain GMM)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(DeepGaussianMixture(arch="G(3)", n_epochs=2, batch_size=20), expected_failed_checks=EXPECTED_FAILED_CHECKS)
