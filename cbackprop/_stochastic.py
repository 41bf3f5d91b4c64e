"""Optimizer state of the stochastic solvers, between epochs.

scikit-learn's SGDOptimizer and AdamOptimizer, reduced to what Python does
once per epoch: hold the flat state vectors (SGD's velocity, Adam's moments)
that :func:`cbackprop._train.run_epoch` updates in place, pass the current
hyperparameters to it, and apply the between-epoch rules
(``iteration_ends``: the invscaling schedule; ``trigger_stopping``: stop, or
divide the adaptive learning rate by 5).
"""
import math

import numpy as np


class SGDState:
    """SGD with momentum: scikit-learn's SGDOptimizer on the flat theta."""

    solver = "sgd"

    def __init__(self, n_params, dtype, learning_rate_init, lr_schedule, momentum,
                 nesterov, power_t):
        self.learning_rate_init = learning_rate_init
        self.learning_rate = float(learning_rate_init)
        self.lr_schedule = lr_schedule
        self.momentum = momentum
        self.nesterov = nesterov
        self.power_t = power_t
        self.velocity = np.zeros(n_params, dtype)

    def states(self):
        return self.velocity, self.velocity  # the second is unused by the kernel

    def options(self):
        return {"solver": "sgd", "learning_rate": self.learning_rate,
                "momentum": float(self.momentum), "nesterov": bool(self.nesterov)}

    def epoch_done(self, t):
        pass

    def iteration_ends(self, time_step):
        if self.lr_schedule == "invscaling":
            self.learning_rate = (float(self.learning_rate_init)
                                  / (time_step + 1) ** self.power_t)

    def trigger_stopping(self, msg, verbose):
        if self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False


class AdamState:
    """Adam: scikit-learn's AdamOptimizer on the flat theta."""

    solver = "adam"

    def __init__(self, n_params, dtype, learning_rate_init, beta_1, beta_2, epsilon):
        self.learning_rate_init = learning_rate_init
        self.learning_rate = float(learning_rate_init)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.t = 0
        self.m = np.zeros(n_params, dtype)
        self.v = np.zeros(n_params, dtype)

    def states(self):
        return self.m, self.v

    def options(self):
        return {"solver": "adam", "learning_rate": float(self.learning_rate_init),
                "beta_1": float(self.beta_1), "beta_2": float(self.beta_2),
                "epsilon": float(self.epsilon), "t": self.t}

    def epoch_done(self, t):
        self.t = t
        if t > 0:  # scikit-learn's `learning_rate` attribute after its last step
            self.learning_rate = (self.learning_rate_init * math.sqrt(1 - self.beta_2 ** t)
                                  / (1 - self.beta_1 ** t))

    def iteration_ends(self, time_step):
        pass

    def trigger_stopping(self, msg, verbose):
        if verbose:
            print(msg + " Stopping.")
        return True
