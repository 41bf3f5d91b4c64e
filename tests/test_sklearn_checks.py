"""scikit-learn's estimator checks for MLPClassifier and MLPRegressor.

``parametrize_with_checks`` runs scikit-learn's whole API conformance suite
(about 55 checks per estimator) with no expected failures. The instances use
few iterations to keep the suite fast; the ConvergenceWarnings that this
causes are expected and silenced.
"""
import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from cbackprop import MLPClassifier, MLPRegressor

ESTIMATORS = [
    MLPClassifier(hidden_layer_sizes=(20,), max_iter=60, learning_rate_init=0.01,
                  random_state=0),
    MLPRegressor(hidden_layer_sizes=(20,), max_iter=60, learning_rate_init=0.01,
                 random_state=0),
    MLPClassifier(hidden_layer_sizes=(10, 5), solver="lbfgs", max_iter=60,
                  random_state=0),
    MLPRegressor(hidden_layer_sizes=(10,), solver="sgd", activation="tanh",
                 learning_rate_init=0.01, max_iter=100, random_state=0),
]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible_estimator(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
