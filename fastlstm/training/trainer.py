"""Training a Model: compile state, the BPTT step, fit / evaluate loops.

One step (Trainer.train_step):
    forward   every graph node runs `layer.forward(inputs, mask, training=True)` -> (outputs, ctx)
    loss      per output: Keras loss values, reduced (mask-weighted); a crossentropy on a sigmoid/softmax
              Dense, Conv1D or Activation output is computed from that layer's logits, as Keras 3 does
              (LOGIT_LAYERS: the layers whose last op is their activation)
    backward  nodes in reverse order: `layer.backward(ctx, d_outputs)` -> d_inputs, weight gradients added to
              the (leaf) layers' `grads`
    update    optimizer.apply(grads, weights), the previous weights kept in a backup so that a NaN loss
              in the next step can restore them
Weights that a training forward changes outside the optimizer (BatchNormalization's moving statistics) are
copied at the start of every step: a step with a non-finite loss puts them back at once (it changes no weight),
and `restore_backup` rolls them back together with the optimizer's weights (to the state before the last update).
"""
import math
import sys
import time
import warnings

import numpy as np

from ..layers.base import SymbolicTensor
from ..layers.conv import Conv1D
from ..layers.core import LOGIT_ACTIVATIONS, Activation, Dense
from . import callbacks as callbacks_mod
from . import losses as losses_mod
from . import metrics as metrics_mod
from . import optimizers as optimizers_mod


# Layers whose output is activation(z) as their last op, with z (the logits) in ctx["z"] in the output's layout and
# a backward that accepts ctx["d_is_logits"]. Keras 3 (TF backend) computes a crossentropy on such an output from
# z when the activation is sigmoid/softmax (the output's `_keras_logits`, or a Sigmoid/Softmax graph op).
# Not here: recurrent layers (their output comes out of the step loop) and wrappers such as TimeDistributed.
LOGIT_LAYERS = (Dense, Activation, Conv1D)


def leaf_layers(layer):
    """The layers that own weight arrays under `layer` (wrappers: their inner layers), in Keras weight order."""
    fw, bw = getattr(layer, "forward_layer", None), getattr(layer, "backward_layer", None)
    if fw is not None and bw is not None:
        return leaf_layers(fw) + leaf_layers(bw)
    inner = getattr(layer, "layer", None)
    if inner is not None and hasattr(inner, "_weights") and type(layer).__name__ == "TimeDistributed":
        return leaf_layers(inner)
    return [layer] if layer.weights else []


def weight_trainable(leaf):
    """Per weight of a leaf layer: whether the optimizer updates it (not BatchNormalization's moving statistics,
    which its forward updates; Keras lists them in get_weights but not in trainable_weights)."""
    flags = getattr(leaf, "trainable_mask", None)
    return [True] * len(leaf._weights) if flags is None else list(flags)


class Trainer:
    """What `model.compile` sets up: optimizer, losses, metrics; runs training and evaluation steps."""

    def __init__(self, model, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None, weighted_metrics=None):
        if loss is None:
            raise ValueError("compile() needs a `loss` (e.g. 'binary_crossentropy', 'mse' or a fastlstm.losses.Loss)")
        self.model = model
        self.optimizer = optimizers_mod.get(optimizer)
        self.loss_spec, self.metric_spec, self.loss_weights_spec = loss, metrics, loss_weights
        self.weighted_metric_spec = weighted_metrics
        self._ready = False

    # ---- setup after the model is built ------------------------------------------------------------------
    def _per_output(self, spec, what):
        m = self.model
        n = len(m.outputs)
        if isinstance(spec, dict):
            unknown = [k for k in spec if k not in m.output_names]
            if unknown:
                raise ValueError(f"{what} keys {unknown} are not output names {m.output_names}")
            return [spec.get(name) for name in m.output_names]
        if isinstance(spec, (list, tuple)) and what != "metrics":
            if len(spec) != n:
                raise ValueError(f"{what}: got {len(spec)} entries for {n} outputs {m.output_names}")
            return list(spec)
        if what == "metrics" and isinstance(spec, (list, tuple)) and n > 1 and spec and \
                all(isinstance(s, (list, tuple)) or s is None for s in spec):
            return list(spec)
        return [spec] * n

    def setup(self):
        if self._ready:
            return
        m = self.model
        if not m.built:
            raise ValueError(f"model {m.name!r} is not built")
        self.losses = [losses_mod.get(s) if s is not None else None for s in self._per_output(self.loss_spec, "loss")]
        if all(lo is None for lo in self.losses):
            raise ValueError("compile(): every output has loss None")
        lw = self.loss_weights_spec
        self.loss_weights = [1.0] * len(m.outputs) if lw is None else \
            [1.0 if w is None else float(w) for w in self._per_output(lw, "loss_weights")]
        self.metric_names, self.weighted_metric_names = (
            [list(s) if isinstance(s, (list, tuple)) else ([] if s is None else [s])
             for s in self._per_output(spec or [], "metrics")]
            for spec in (self.metric_spec, self.weighted_metric_spec))
        self.metric_objs = None                      # made on the first batch (accuracy needs label shapes)
        self.leaves = []
        seen = set()
        for lyr in m.layers:
            for leaf in leaf_layers(lyr):
                if id(leaf) not in seen:
                    seen.add(id(leaf))
                    self.leaves.append((leaf, bool(lyr.trainable and leaf.trainable
                                                   and any(weight_trainable(leaf)))))
        # outputs scored from logits: the node index producing them
        self.logit_node = []
        node_index = {id(n): k for k, n in enumerate(m._nodes)}
        for t, lo in zip(m.outputs, self.losses):
            k = None
            if lo is not None and lo.uses_logits and t.history is not None:
                node = t.history[0]
                if isinstance(node.layer, LOGIT_LAYERS) and node.layer.activation in LOGIT_ACTIVATIONS:
                    k = node_index[id(node)]
            self.logit_node.append(k)
        self._needs_grad = self._tensors_needing_grad()
        # a layer on the gradient path needs a backward pass (others, such as a mask op, only run forward)
        for node in m._nodes:
            on_path = any(t.id in self._needs_grad for t in node.outputs)
            if on_path and not hasattr(node.layer, "backward"):
                raise NotImplementedError(f"layer {node.layer.name!r} ({type(node.layer).__name__}) has no backward "
                                          f"pass: fastlstm cannot train this model")
        self._backup = None
        self._state_now, self._state_prev = [], []      # forward-updated weights: this step's start, the last one's
        self._ready = True

    def _tensors_needing_grad(self):
        """Ids of tensors whose gradient reaches a trainable weight (others need no backward). Boolean tensors
        (masks, such as Keras 3's ZerosLike/LogicalOr ops of a masked merge reading a float tensor) carry none."""
        trainable = {id(leaf) for leaf, tr in self.leaves if tr}
        need = set()
        for node in self.model._nodes:
            has_w = any(id(leaf) in trainable for leaf in leaf_layers(node.layer))
            if has_w or any(t.id in need for t in node.tensor_args()):
                need.update(t.id for t in node.outputs if t.dtype.kind == "f")
        return need

    def _ensure_grads(self):
        for leaf, _ in self.leaves:
            ws = leaf._weights
            if not all(w.flags.c_contiguous for w in ws):
                # the kernels accumulate into C-contiguous gradients; keep the weights C-contiguous as well
                leaf._weights = [np.ascontiguousarray(w) for w in ws]
                leaf._weights_changed()
                ws = leaf._weights
            if len(leaf.grads) != len(ws) or any(g.shape != w.shape or g.dtype != w.dtype
                                                 for g, w in zip(leaf.grads, ws)):
                leaf.grads = [np.zeros(w.shape, w.dtype) for w in ws]
                leaf._touched_rows = None

    def _zero_grads(self):
        for leaf, _ in self.leaves:
            if hasattr(leaf, "zero_grads"):
                leaf.zero_grads()
            else:
                for g in leaf.grads:
                    g.fill(0)

    def _make_metrics(self, ys, y_preds):
        """Keras 3 CompileMetrics: `metrics` (weighted by the output's mask only), then `weighted_metrics` (also by
        sample_weight / class_weight); names prefixed with the output name when there are several outputs; a
        repeated name gets "_1", "_2", ...; a weighted metric whose name is taken becomes "weighted_<name>"."""
        self.metric_objs = []
        multi = len(self.model.outputs) > 1
        taken = {}
        for weighted, per_output in ((False, self.metric_names), (True, self.weighted_metric_names)):
            for k, names in enumerate(per_output):
                prefix = f"{self.model.output_names[k]}_" if multi else ""
                for nm in names:
                    o = metrics_mod.get(nm, np.shape(ys[k]), y_preds[k].shape)
                    name = prefix + o.name
                    if weighted and name in taken:
                        name = prefix + "weighted_" + o.name
                    if name in taken:
                        taken[name] += 1
                        name = f"{name}_{taken[name] - 1}"
                    else:
                        taken[name] = 1
                    o.name, o.output_index, o.weighted = name, k, weighted
                    self.metric_objs.append(o)

    def metric_list(self):
        return list(self.metric_objs or [])

    # ---- graph passes ------------------------------------------------------------------------------------
    def forward(self, xs, training, rng=None):
        """Run the graph; returns (values {tensor id: (array, mask)}, ctxs per node (None where not kept))."""
        ctxs = []
        logit_nodes = set(k for k in self.logit_node if k is not None)
        rows = self.model._token_row_nodes()          # Embeddings that hand TokenRows to a recurrent layer

        def run_node(k, node, arg, mask, kwargs):
            if k in rows:
                if training:
                    out, ctx = node.layer.forward(arg, lazy=True)
                else:
                    out, ctx = node.layer.rows(arg), None
            elif (training or k in logit_nodes) and hasattr(node.layer, "forward"):
                out, ctx = node.layer.forward(arg, mask=mask, training=training, rng=rng, ws_key=k, **kwargs)
            else:
                out, ctx = node.layer.call(arg, mask=mask, **kwargs), None
            ctxs.append(ctx)
            return out

        return self.model._walk(xs, run_node), ctxs

    def backward(self, ctxs, d_outputs):
        """d_outputs {tensor id: gradient}; runs every node's backward in reverse order."""
        m = self.model
        grads = dict(d_outputs)
        need = self._needs_grad
        for k in range(len(m._nodes) - 1, -1, -1):
            node = m._nodes[k]
            if not any(t.id in need for t in node.outputs):
                continue
            d_outs = [grads.pop(t.id, None) for t in node.outputs]
            if all(d is None for d in d_outs):
                continue
            ctx = ctxs[k]
            multi_out = len(node.outputs) > 1
            dx = node.layer.backward(ctx, d_outs if multi_out else d_outs[0])
            multi_in = getattr(node, "multi_input", len(node.inputs) > 1)
            dxs = dx if multi_in else [dx]
            for t, d in zip(node.inputs, dxs or []):
                if d is not None and t.history is not None and t.id in need:
                    grads[t.id] = d if t.id not in grads else grads[t.id] + d
            init = node.kwargs.get("initial_state")
            d_init = ctx.get("d_initial_state") if isinstance(ctx, dict) else None
            if init is not None and d_init is not None:
                init = init if isinstance(init, (list, tuple)) else [init]
                for t, d in zip(init, d_init):
                    if isinstance(t, SymbolicTensor) and t.history is not None and t.id in need:
                        grads[t.id] = d if t.id not in grads else grads[t.id] + d

    def _losses(self, values, ctxs, ys, sample_weight=None, need_grad=True):
        """Total loss, per-output losses, gradients {output tensor id: d}."""
        m = self.model
        total, per_out, d_out = 0.0, [], {}
        for i, (t, lo) in enumerate(zip(m.outputs, self.losses)):
            if lo is None:
                per_out.append(0.0)
                continue
            y_pred, mask = values[t.id]
            k = self.logit_node[i]
            logits = ctxs[k]["z"] if k is not None else None
            lo.check_labels(ys[i], y_pred.shape)
            vals, dv = lo.values_and_grad(ys[i], y_pred, logits, need_grad=need_grad)
            if mask is not None and np.shape(mask) != vals.shape:
                mask = None
            loss, w = lo.reduce(vals, mask, sample_weight)
            lw = self.loss_weights[i]
            total += lw * loss
            per_out.append(loss)
            if need_grad:
                w = w * w.dtype.type(lw)
                d = dv * (w[..., None] if dv.ndim == w.ndim + 1 else w)
                if k is not None:
                    ctxs[k]["d_is_logits"] = True
                d_out[t.id] = d.astype(y_pred.dtype, copy=False).reshape(y_pred.shape)
        return total, per_out, d_out

    def _update_metrics(self, values, ys, sample_weight=None):
        m = self.model
        y_preds = [values[t.id][0] for t in m.outputs]
        if self.metric_objs is None:
            self._make_metrics(ys, y_preds)
        for o in self.metric_objs:
            k = o.output_index
            # weights of the metric values: the output's mask, times the sample weights for weighted_metrics
            # (Keras 3 evaluates `metrics` without sample weighting)
            w = values[m.outputs[k].id][1]
            if o.weighted and sample_weight is not None:
                sw = np.asarray(sample_weight, dtype=np.float64)
                if w is not None:
                    sw = np.asarray(w, np.float64) * sw.reshape(sw.shape + (1,) * (np.ndim(w) - sw.ndim))
                w = sw
            o.update_state(ys[k], y_preds[k], w)

    # ---- steps ---------------------------------------------------------------------------------------------
    def _variables(self):
        ws, gs = [], []
        for leaf, trainable in self.leaves:
            if trainable:
                flags = weight_trainable(leaf)
                ws.extend(w for w, t in zip(leaf._weights, flags) if t)
                gs.extend(g for g, t in zip(leaf.grads, flags) if t)
        return ws, gs

    def _state_weights(self):
        """The weights the optimizer does not update of the leaves that declare non-trainable weights
        (`trainable_mask`: BatchNormalization's moving statistics, which its training forward updates). Frozen
        layers without such weights are left out: nothing changes them (no per-step copy of a frozen Embedding)."""
        out = []
        for leaf, trainable in self.leaves:
            if getattr(leaf, "trainable_mask", None) is not None:
                flags = weight_trainable(leaf) if trainable else [False] * len(leaf._weights)
                out.extend(w for w, t in zip(leaf._weights, flags) if not t)
        return out

    def _copy_state(self, dst=None, src=None):
        """Copy the state weights into the buffers `dst` (reallocated on a shape change; returned), or the
        buffers `src` back into the state weights."""
        ws = self._state_weights()
        if src is not None:
            for w, b in zip(ws, src):
                np.copyto(w, b)
            return src
        if [b.shape for b in dst] != [w.shape for w in ws] or [b.dtype for b in dst] != [w.dtype for w in ws]:
            dst = [np.empty_like(w) for w in ws]
        for b, w in zip(dst, ws):
            np.copyto(b, w)
        return dst

    def train_step(self, xs, ys, rng, sample_weight=None):
        """One optimizer step on one batch. Returns (loss, finite). A non-finite loss changes no weight."""
        self._ensure_grads()
        self._state_now = self._copy_state(dst=self._state_now)
        values, ctxs = self.forward(xs, training=True, rng=rng)
        total, per_out, d_out = self._losses(values, ctxs, ys, sample_weight)
        if not math.isfinite(total):
            if self._state_now:                   # undo the forward's updates (moving statistics)
                self._copy_state(src=self._state_now)
                for leaf, _ in self.leaves:
                    leaf._weights_changed()
            return total, per_out, False
        self._update_metrics(values, ys, sample_weight)
        self._zero_grads()
        self.backward(ctxs, d_out)
        ws, gs = self._variables()
        if self._backup is None or [b.shape for b in self._backup] != [w.shape for w in ws]:
            self._backup = [np.empty_like(w) for w in ws]
        self.optimizer.apply(gs, ws, backup=self._backup)
        self._state_prev, self._state_now = self._state_now, self._state_prev    # this step's start is the backup
        self._backup_valid = True
        for leaf, _ in self.leaves:
            leaf._weights_changed()
        return total, per_out, True

    def restore_backup(self):
        """Put back every weight as it was before the last optimizer step: the optimizer's weights and those
        its training forward changed (moving statistics)."""
        if self._backup is None or not getattr(self, "_backup_valid", False):
            return False
        ws, _ = self._variables()
        for w, b in zip(ws, self._backup):
            np.copyto(w, b)
        self._copy_state(src=self._state_prev)
        for leaf, _ in self.leaves:
            leaf._weights_changed()
        self._backup_valid = False
        return True

    def test_step(self, xs, ys, sample_weight=None):
        values, ctxs = self.forward(xs, training=False)
        total, per_out, _ = self._losses(values, ctxs, ys, sample_weight, need_grad=False)
        self._update_metrics(values, ys, sample_weight)
        return total, per_out


# ---- data ---------------------------------------------------------------------------------------------------
def _normalize_targets(model, y, n):
    names = model.output_names
    if isinstance(y, dict):
        missing = [k for k in names if k not in y]
        if missing:
            raise ValueError(f"y is missing output(s) {missing}; expected keys {names}")
        ys = [y[k] for k in names]
    elif isinstance(y, (list, tuple)) and len(model.outputs) > 1:
        ys = list(y)
    else:
        ys = [y]
    if len(ys) != len(model.outputs):
        raise ValueError(f"model {model.name!r} has {len(model.outputs)} outputs {names}, got {len(ys)} targets")
    out = []
    for name, a in zip(names, ys):
        if a is None:
            raise ValueError(f"no target given for output {name!r}")
        a = np.asarray(a)
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(f"targets for output {name!r} have {a.shape[0] if a.ndim else 0} rows, the inputs {n}")
        if a.dtype.kind not in "fiub":
            raise TypeError(f"targets for output {name!r} must be numeric, got dtype {a.dtype}")
        out.append(a)
    return out


def _class_weights(class_weight, y):
    y = np.asarray(y)
    if y.ndim >= 2 and y.shape[-1] > 1:
        ids = np.argmax(y, axis=-1)
    else:
        ids = np.round(y.reshape(y.shape[0], -1)[:, 0]).astype(np.int64)
    ids = ids.reshape(ids.shape[0], -1)[:, 0]
    return np.array([class_weight.get(int(c), 1.0) for c in ids], np.float64)


def _batches(n, batch_size, order):
    for s in range(0, n, batch_size):
        yield order[s:s + batch_size]


def _take(arrays, idx, contiguous):
    if contiguous:
        return [a[idx.start:idx.stop] for a in arrays]
    return [a[idx] for a in arrays]


def _fmt_logs(logs):
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


def fit(model, x, y, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
        validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
        steps_per_epoch=None, validation_batch_size=None, validation_freq=1, seed=None):
    trainer = model._trainer
    if trainer is None:
        raise RuntimeError("You must call `compile()` before using the model (fit/evaluate)")
    if y is None:
        raise ValueError("fit() needs targets `y`")
    rng = np.random.default_rng(seed)
    if not model.built and seed is not None:
        from .. import initializers
        saved = initializers._global_rng
        initializers._global_rng = np.random.default_rng(seed)
        try:
            xs = model._normalize_inputs(x)
        finally:
            initializers._global_rng = saved
    else:
        xs = model._normalize_inputs(x)
    n = xs[0].shape[0]
    ys = _normalize_targets(model, y, n)
    sw = None if sample_weight is None else np.asarray(sample_weight, np.float64)
    if validation_data is None and validation_split and 0 < validation_split < 1:
        # Keras: the last rows, with their sample weights (class weights apply to the training rows only)
        split = int(n * (1 - validation_split))
        xv, yv = [a[split:] for a in xs], [a[split:] for a in ys]
        validation_data = (xv if len(xv) > 1 else xv[0], yv if len(yv) > 1 else yv[0],
                           None if sw is None else sw[split:])
        xs, ys = [a[:split] for a in xs], [a[:split] for a in ys]
        sw = None if sw is None else sw[:split]
        n = split
    if class_weight is not None:
        # Keras 3 (array_data_adapter): class_weight is for one output and never together with sample_weight
        if sw is not None:
            raise ValueError("fit(): give class_weight or sample_weight, not both (as in Keras)")
        if len(ys) > 1:
            raise ValueError(f"fit(): class_weight is only supported for models with a single output; this one "
                             f"has {len(ys)} {model.output_names}")
        sw = _class_weights(class_weight, ys[0])
    if n == 0:
        raise ValueError("fit() got no training samples")
    trainer.setup()
    batch_size = int(batch_size or 32)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    steps = math.ceil(n / batch_size)
    if steps_per_epoch is not None:
        steps = min(steps, int(steps_per_epoch))
    verbose = 1 if verbose == "auto" else int(verbose)

    history = callbacks_mod.History()
    cbs = list(callbacks or []) + [history]
    params = {"verbose": verbose, "epochs": epochs, "steps": steps}
    for cb in cbs:
        cb.set_model(model)
        cb.set_params(params)
    model.stop_training = False
    model.history = history
    for cb in cbs:
        cb.on_train_begin()
    nan_stop = False
    for epoch in range(initial_epoch, epochs):
        for o in trainer.metric_list():
            o.reset_state()
        for cb in cbs:
            cb.on_epoch_begin(epoch)
        order = rng.permutation(n) if shuffle else None
        bar = _progress(verbose, steps, epoch, epochs)
        loss_sum, seen = 0.0, 0
        out_sums = None
        t0 = time.perf_counter()
        for b in range(steps):
            idx = slice(b * batch_size, min(n, (b + 1) * batch_size)) if order is None else \
                order[b * batch_size:(b + 1) * batch_size]
            xb = _take(xs, idx, order is None)
            yb = _take(ys, idx, order is None)
            swb = None if sw is None else sw[idx]
            for cb in cbs:
                cb.on_train_batch_begin(b)
            loss, per_out, finite = trainer.train_step(xb, yb, rng, swb)
            if not finite:
                restored = trainer.restore_backup()
                kept = ("those before the last update (the last ones with a finite loss)" if restored
                        else "unchanged by this step")
                msg = (f"Epoch {epoch + 1}, batch {b}: the loss is {loss} (not finite); training stopped. The weights "
                       f"are {kept}.")
                if bar is not None:
                    bar.close()
                    bar = None
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
                model.stop_training = True
                nan_stop = True
                break
            nb = xb[0].shape[0]
            loss_sum += loss * nb
            seen += nb
            out_sums = [p * nb for p in per_out] if out_sums is None else \
                [s + p * nb for s, p in zip(out_sums, per_out)]
            logs = _epoch_logs(trainer, loss_sum / seen, [s / seen for s in out_sums])
            for cb in cbs:
                cb.on_train_batch_end(b, logs)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(_fmt_logs(logs), refresh=False)
            if model.stop_training:
                break
        if nan_stop:
            break
        logs = _epoch_logs(trainer, loss_sum / max(seen, 1), [s / max(seen, 1) for s in out_sums or []])
        if validation_data is not None and (epoch + 1 - initial_epoch) % validation_freq == 0:
            xv, yv = validation_data[0], validation_data[1]
            swv = validation_data[2] if len(validation_data) > 2 else None
            vlogs = evaluate(model, xv, yv, batch_size=validation_batch_size or batch_size, verbose=0,
                             sample_weight=swv, return_dict=True, _keep_metric_state=True)
            logs.update({"val_" + k: v for k, v in vlogs.items()})
        if bar is not None:
            bar.set_postfix_str(_fmt_logs(logs), refresh=True)
            bar.close()
        elif verbose == 2:
            print(f"Epoch {epoch + 1}/{epochs} - {time.perf_counter() - t0:.0f}s - {_fmt_logs(logs)}")
        for cb in cbs:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for cb in cbs:
        cb.on_train_end()
    return history


def _epoch_logs(trainer, loss, per_out):
    logs = {"loss": loss}
    if len(per_out) > 1:
        for name, v in zip(trainer.model.output_names, per_out):
            logs[f"{name}_loss"] = v
    for o in trainer.metric_list():
        logs[o.name] = o.result()
    return logs


def _progress(verbose, steps, epoch, epochs):
    if verbose != 1:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=steps, desc=f"Epoch {epoch + 1}/{epochs}", unit="step", leave=True, file=sys.stdout,
                dynamic_ncols=True)


def evaluate(model, x, y, batch_size=None, verbose="auto", sample_weight=None, return_dict=False,
             _keep_metric_state=False):
    trainer = model._trainer
    if trainer is None:
        raise RuntimeError("You must call `compile()` before using the model (fit/evaluate)")
    xs = model._normalize_inputs(x)
    n = xs[0].shape[0]
    ys = _normalize_targets(model, y, n)
    trainer.setup()
    saved = [(o.total, o.count) for o in trainer.metric_list()] if _keep_metric_state else None
    for o in trainer.metric_list():
        o.reset_state()
    batch_size = int(batch_size or 32)
    sw = None if sample_weight is None else np.asarray(sample_weight, np.float64)
    loss_sum, out_sums = 0.0, None
    verbose = 1 if verbose == "auto" else int(verbose)
    steps = math.ceil(n / batch_size)
    bar = None
    if verbose == 1:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, desc="Evaluate", unit="step", leave=True, file=sys.stdout)
        except ImportError:
            bar = None
    for s in range(0, n, batch_size):
        idx = slice(s, min(n, s + batch_size))
        loss, per_out = trainer.test_step([a[idx] for a in xs], [a[idx] for a in ys],
                                          None if sw is None else sw[idx])
        nb = idx.stop - idx.start
        loss_sum += loss * nb
        out_sums = [p * nb for p in per_out] if out_sums is None else [a + p * nb for a, p in zip(out_sums, per_out)]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    logs = _epoch_logs(trainer, loss_sum / n, [s / n for s in out_sums])
    if saved is not None:
        for o, (tot, cnt) in zip(trainer.metric_list(), saved):
            o.total, o.count = tot, cnt
    if return_dict:
        return logs
    vals = list(logs.values())
    return vals[0] if len(vals) == 1 else vals
