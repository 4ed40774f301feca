"""scikit-learn's grid search on SCOOP workers, through joblib's backend "scoop".

Run with: python -m scoop -n 2 examples/joblib_gridsearch.py
(or ``python examples/joblib_gridsearch.py``: the backend then starts a
local pool of one worker per core, and stops it when the program ends).

The search over the digits data set shipped with scikit-learn runs once
serially and once with ``n_jobs=-1`` on the workers; both must find the
same best parameters and score.
"""

import joblib
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import scoop_core.joblib_backend  # noqa: F401  (registers joblib's backend "scoop")

GRID = {"C": [1, 10], "gamma": [0.0005, 0.001, 0.005]}

if __name__ == "__main__":
    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]  # a few seconds of work
    serial = GridSearchCV(SVC(), GRID, cv=3).fit(X, y)
    with joblib.parallel_config(backend="scoop"):
        spread = GridSearchCV(SVC(), GRID, cv=3, n_jobs=-1).fit(X, y)
    assert spread.best_params_ == serial.best_params_
    assert spread.best_score_ == serial.best_score_
    print(f"best parameters: {spread.best_params_}, score {spread.best_score_:.4f}")
    print("the same as the serial search")
