"""Keras 3 optimizers: SGD, Adam, RMSprop (argument names, defaults and update rules of keras/src/optimizers).

One `apply(grads, weights)` call is one Keras optimizer step, in the weights' dtype:
    clipping (only one of: clipnorm per weight g *= c / max(||g||, c);  global_clipnorm over all weights;
              clipvalue g = clip(g, -c, c))
    weight_decay (decoupled): w -= w * weight_decay * lr
    SGD      momentum 0: w -= lr * g
             else:       m = momentum * m - lr * g;  w += m   (nesterov: w += momentum * m - lr * g)
    Adam     t = iterations + 1;  alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)
             m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2);  (amsgrad: v_hat = max(v_hat, v))
             w -= alpha * m / (sqrt(v) + epsilon)          (epsilon outside the sqrt, on the un-corrected v)
    RMSprop  v = rho * v + (1 - rho) g^2;  (centered: a = rho * a + (1 - rho) g;  v' = v - a^2)
             inc = lr * g / sqrt(v' + epsilon);  momentum 0: w -= inc;  else m = momentum * m + inc;  w -= m
The state (iterations and slots) persists across fit calls, as in Keras.
"""
import numpy as np

from ._fused import adam_update


class Optimizer:
    """Base class. `learning_rate` is a float or a callable `lr(iterations)` (a schedule)."""

    def __init__(self, learning_rate=0.001, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unrecognized arguments {sorted(kwargs)}")
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(f"Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. Received: "
                             f"clipnorm={clipnorm}, clipvalue={clipvalue}, global_clipnorm={global_clipnorm}")
        if use_ema or gradient_accumulation_steps or loss_scale_factor:
            raise NotImplementedError("use_ema, gradient_accumulation_steps and loss_scale_factor are not supported")
        self._learning_rate = learning_rate
        self.weight_decay, self.clipnorm, self.clipvalue = weight_decay, clipnorm, clipvalue
        self.global_clipnorm = global_clipnorm
        self.name = name or type(self).__name__.lower()
        self.iterations = 0
        self._slots = None
        self._slot_shapes = None

    @property
    def learning_rate(self):
        lr = self._learning_rate
        return float(lr(self.iterations)) if callable(lr) else float(lr)

    @learning_rate.setter
    def learning_rate(self, value):
        self._learning_rate = value

    # ---- state ------------------------------------------------------------------------------------------
    def build(self, weights):
        """Create the slots for `weights` (kept until the weight shapes change)."""
        self._slots = [self._make_slots(w) for w in weights]
        self._slot_shapes = [(w.shape, w.dtype) for w in weights]

    def _make_slots(self, w):
        return {}

    def variables(self):
        """[iterations, then each weight's slots]: plain arrays (what Keras saves under optimizer/vars)."""
        out = [np.array(self.iterations, np.int64)]
        for s in self._slots or []:
            out.extend(s.values())
        return out

    # ---- one step -----------------------------------------------------------------------------------------
    def _clip(self, grads):
        if self.clipnorm and self.clipnorm > 0:
            out = []
            for g in grads:
                n = np.sqrt(np.sum(np.square(g, dtype=np.float64)))
                out.append(g * g.dtype.type(self.clipnorm / max(n, self.clipnorm)) if n > self.clipnorm else g)
            return out
        if self.global_clipnorm and self.global_clipnorm > 0:
            n = np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads))
            scale = self.global_clipnorm * min(1.0 / n if n else np.inf, 1.0 / self.global_clipnorm)
            if not np.isfinite(n):
                scale = np.nan
            return [g * g.dtype.type(scale) for g in grads] if scale != 1.0 else grads
        if self.clipvalue and self.clipvalue > 0:
            return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def apply(self, grads, weights, backup=None):
        """One optimizer step: update `weights` (arrays, in place) with `grads`.
        backup: optional list of arrays that receive the weights as they were before the step."""
        if self._slot_shapes != [(w.shape, w.dtype) for w in weights]:
            self.build(weights)
        grads = self._clip(grads)
        lr = self.learning_rate
        for k, (g, w) in enumerate(zip(grads, weights)):
            bk = backup[k] if backup is not None else None
            if self.weight_decay:
                if bk is not None:
                    np.copyto(bk, w)
                    bk = None
                w -= w * w.dtype.type(self.weight_decay * lr)
            self._update(g, w, self._slots[k], lr, bk)
        self.iterations += 1

    def apply_gradients(self, grads_and_vars):
        """Keras-style: [(grad, weight array), ...]."""
        grads, weights = zip(*grads_and_vars)
        self.apply(list(grads), list(weights))

    def _update(self, g, w, slots, lr, backup):
        raise NotImplementedError

    def get_config(self):
        lr = self._learning_rate
        return {"name": self.name, "learning_rate": lr if not callable(lr) else None,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm, "global_clipnorm": self.global_clipnorm,
                "clipvalue": self.clipvalue, "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                "loss_scale_factor": None, "gradient_accumulation_steps": None}

    def __repr__(self):
        return f"<{type(self).__name__} learning_rate={self._learning_rate} iterations={self.iterations}>"


def _backup(backup, w):
    if backup is not None:
        np.copyto(backup, w)


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum. Keras 3 defaults: learning_rate=0.01, momentum=0."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name="SGD", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not isinstance(momentum, (int, float)) or momentum < 0 or momentum > 1:
            raise ValueError("`momentum` must be a float between [0, 1].")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def _make_slots(self, w):
        return {"momentum": np.zeros_like(w)} if self.momentum else {}

    def _update(self, g, w, slots, lr, backup):
        _backup(backup, w)
        dt = w.dtype.type
        lr = dt(lr)
        g = g.astype(w.dtype, copy=False)
        if not self.momentum:
            w -= g * lr
            return
        m = slots["momentum"]
        mu = dt(self.momentum)
        m *= mu
        m -= g * lr
        if self.nesterov:
            w += m * mu - g * lr
        else:
            w += m

    def get_config(self):
        cfg = super().get_config()
        cfg.update(momentum=self.momentum, nesterov=self.nesterov)
        return cfg


class Adam(Optimizer):
    """Adam, Keras 3 form: epsilon=1e-7 added to sqrt(v) with the bias correction folded into the step size."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, name="adam",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = float(beta_1), float(beta_2), float(epsilon), amsgrad

    def _make_slots(self, w):
        s = {"momentum": np.zeros_like(w), "velocity": np.zeros_like(w)}
        if self.amsgrad:
            s["velocity_hat"] = np.zeros_like(w)
        return s

    def _update(self, g, w, slots, lr, backup):
        dt = w.dtype.type
        t = dt(self.iterations + 1)
        # computed in the weight's dtype, as Keras does
        alpha = dt(lr) * np.sqrt(dt(1) - dt(self.beta_2) ** t) / (dt(1) - dt(self.beta_1) ** t)
        m, v = slots["momentum"], slots["velocity"]
        if not self.amsgrad:
            adam_update(w, g, m, v, self.beta_1, self.beta_2, alpha, self.epsilon, backup)
            return
        _backup(backup, w)
        g = g.astype(w.dtype, copy=False)
        m += (g - m) * dt(1 - self.beta_1)
        v += (g * g - v) * dt(1 - self.beta_2)
        vh = slots["velocity_hat"]
        np.maximum(vh, v, out=vh)
        w -= (m * alpha) / (np.sqrt(vh) + dt(self.epsilon))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon, amsgrad=self.amsgrad)
        return cfg


class RMSprop(Optimizer):
    """RMSprop, Keras 3 form (epsilon inside the square root)."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, name="rmsprop",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rho, self.momentum, self.epsilon, self.centered = float(rho), float(momentum), float(epsilon), centered

    def _make_slots(self, w):
        s = {"velocity": np.zeros_like(w)}
        if self.momentum > 0:
            s["momentum"] = np.zeros_like(w)
        if self.centered:
            s["average_gradient"] = np.zeros_like(w)
        return s

    def _update(self, g, w, slots, lr, backup):
        _backup(backup, w)
        dt = w.dtype.type
        g = g.astype(w.dtype, copy=False)
        rho = dt(self.rho)
        v = slots["velocity"]
        v *= rho
        v += dt(1 - self.rho) * (g * g)
        if self.centered:
            a = slots["average_gradient"]
            a *= rho
            a += dt(1 - self.rho) * g
            denom = v - a * a + dt(self.epsilon)
        else:
            denom = v + dt(self.epsilon)
        inc = (dt(lr) * g) / np.sqrt(denom)
        if self.momentum > 0:
            m = slots["momentum"]
            m *= dt(self.momentum)
            m += inc
            w -= m
        else:
            w -= inc

    def get_config(self):
        cfg = super().get_config()
        cfg.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon, centered=self.centered)
        return cfg


_BY_NAME = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def get(identifier):
    """An Optimizer from an Optimizer, a name ("sgd", "adam", "rmsprop") or a Keras config dict."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        name = str(identifier.get("class_name", "")).lower()
        if name not in _BY_NAME:
            raise ValueError(f"unknown optimizer {identifier.get('class_name')!r}; supported: SGD, Adam, RMSprop")
        cfg = {k: v for k, v in (identifier.get("config") or {}).items()
               if k not in ("use_ema", "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
                            "gradient_accumulation_steps", "is_legacy_optimizer", "jit_compile")}
        return _BY_NAME[name](**cfg)
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(f"unknown optimizer {identifier!r}; supported: 'sgd', 'adam', 'rmsprop' or a "
                     f"fastlstm.optimizers.Optimizer")
