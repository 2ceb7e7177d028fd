"""Keras model configs -> fastlstm graphs, and the `model.layers` tree the weight files are keyed by.

Functional configs are replayed like Keras' `functional_from_config`: every layer is created first, then the
nodes are processed in config order, a node waiting until the tensors it reads exist (layers shared at
different depths). A node's inputs are `keras_history = [layer, node_index, tensor_index]` references
(Keras 3: `{"args", "kwargs"}` dicts; Keras 2: `[[name, node, tensor, kwargs], ...]` lists, where a recurrent
layer's extra inputs are its initial states). Nested models are inlined: their layers are called on the outer
tensors, so masks propagate into them as in Keras; they keep their own node in the weights tree.
"""
import re

from ..errors import ModelLoadError
from ..layers import core, recurrent
from ..layers.base import Layer
from ..layers.ops import OPS, OpLayer
from .keras_layers import MODEL_CLASSES, check_safe, is_op_node, make_layer, supported_names


class Ref:
    """A serialized keras tensor: output `tensor` of node `node` of layer `layer`."""
    __slots__ = ("layer", "node", "tensor")

    def __init__(self, layer, node, tensor):
        self.layer, self.node, self.tensor = layer, int(node), int(tensor)

    def __repr__(self):
        return f"{self.layer}[{self.node}][{self.tensor}]"


class _NotReady(Exception):
    pass


class Record:
    """One entry of a `model.layers` container: a layer, or a nested model with its own records."""

    def __init__(self, class_name, name, layer=None, children=None):
        self.class_name, self.name, self.layer, self.children = class_name, name, layer, children

    def flat_layers(self):
        if self.children is None:
            return [self.layer]
        return [lyr for r in self.children for lyr in r.flat_layers()]


class _MaskSetter(Layer):
    """Identity that replaces the mask (an explicit `mask=` passed to a nested model call)."""

    def call(self, inputs, mask=None, training=False):
        return inputs

    def compute_mask(self, inputs, mask=None):
        return mask


def snake_case(name):
    """keras.src.utils.naming.to_snake_case (the weight-file group names)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# ---------------------------------------------------------------------------------------------- node parsing
def _parse_v3(obj):
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return Ref(*obj["config"]["keras_history"])
        if obj.get("class_name") is not None:
            raise ModelLoadError(f"unsupported serialized object {obj.get('class_name')!r} in a node's arguments")
        return {k: _parse_v3(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_parse_v3(v) for v in obj]
    return obj


def _is_ref2(v):
    return (isinstance(v, list) and len(v) in (3, 4) and isinstance(v[0], str)
            and isinstance(v[1], int) and isinstance(v[2], int))


def _parse_v2_kwargs(obj):
    if _is_ref2(obj):
        return Ref(obj[0], obj[1], obj[2])
    if isinstance(obj, list):
        return [_parse_v2_kwargs(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _parse_v2_kwargs(v) for k, v in obj.items()}
    return obj


def parse_node(node):
    """A serialized inbound node -> (args list, kwargs dict) with Ref placeholders."""
    if isinstance(node, dict):
        return _parse_v3(node.get("args", [])), _parse_v3(node.get("kwargs", {}))
    if isinstance(node, list):
        refs, kwargs = [], {}
        for entry in node:
            if not _is_ref2(entry):
                raise ModelLoadError(f"cannot parse inbound node entry {entry!r}")
            refs.append(Ref(entry[0], entry[1], entry[2]))
            if len(entry) == 4 and isinstance(entry[3], dict) and entry[3]:
                kwargs.update(_parse_v2_kwargs(entry[3]))
        return [refs[0] if len(refs) == 1 else refs], kwargs
    raise ModelLoadError(f"cannot parse inbound node {node!r}")


def _map_refs(obj, fn):
    if isinstance(obj, Ref):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_refs(v, fn) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_map_refs(v, fn) for v in obj)
    if isinstance(obj, dict):
        return {k: _map_refs(v, fn) for k, v in obj.items()}
    return obj


def _io_refs(spec):
    """input_layers / output_layers -> (list of Refs, single?)."""
    if _is_ref2(spec):
        return [Ref(*spec[:3])], True
    if isinstance(spec, dict):
        spec = list(spec.values())
    if not isinstance(spec, list):
        raise ModelLoadError(f"cannot parse model inputs/outputs {spec!r}")
    out = []
    for s in spec:
        if not _is_ref2(s):
            raise ModelLoadError(f"cannot parse model inputs/outputs {spec!r}")
        out.append(Ref(*s[:3]))
    return out, False


# ---------------------------------------------------------------------------------------------- containers
class Container:
    """A parsed Sequential / Functional config with its layer objects (created once, shared by every call)."""

    def __init__(self, builder, entry, top=False):
        self.b = builder
        self.class_name = entry.get("class_name")
        cfg = entry.get("config")
        if isinstance(cfg, list):           # Keras <= 2.1 Sequential: the config IS the layer list
            cfg = {"layers": cfg}
        if not isinstance(cfg, dict) or "layers" not in cfg:
            raise ModelLoadError(f"{builder.where}: model config of class {self.class_name!r} has no layer list")
        self.cfg = cfg
        self.name = cfg.get("name") or entry.get("name") or self.class_name.lower()
        self.top = top
        self.functional = "input_layers" in cfg or self.class_name in ("Functional", "Model") and \
            any("inbound_nodes" in layer for layer in cfg["layers"])
        self.entries = []       # [dict(name, class_name, obj, nodes, offset)]
        self.records = []
        self.input_layer = None  # Sequential: the InputLayer
        if self.functional:
            self._parse_functional()
        else:
            self._parse_sequential(entry)

    def node_offset(self, io_ref):
        """Pre-existing nodes a nested model has before its first call, as keras_history counts them.
        tf_keras/Keras 2: a built nested model's node 0 links its own inputs to outputs, and every reference
        skips it. Keras 3 re-indexes node arguments over the outer model's nodes (no offset), but the
        input_layers/output_layers references of a nested Functional still skip its node 0."""
        if self.b.flavour.keras2:
            return 1 if (self.functional or self.input_layer is not None) else 0
        return 1 if (io_ref and self.class_name == "Functional") else 0

    def _make(self, layer_entry):
        cls = layer_entry.get("class_name")
        name = (layer_entry.get("config") or {}).get("name") or layer_entry.get("name")
        where = f"{self.b.where}: layer {name!r} ({cls})"
        check_safe(layer_entry, where)
        if cls in MODEL_CLASSES:
            return Container(self.b, layer_entry)
        if is_op_node(layer_entry):
            if cls not in OPS:
                raise ModelLoadError(f"{where}: Keras op {cls!r} is not supported; supported layers and ops: "
                                     f"{', '.join(supported_names())}")
            return _OpSpec(cls, name, layer_entry.get("config") or {})
        return make_layer(layer_entry, self.b.flavour, where)

    def _record(self, cls, name, obj):
        if isinstance(obj, Container):
            self.records.append(Record(cls, name, children=obj.records))
        elif isinstance(obj, Layer) and not isinstance(obj, (core.InputLayer, OpLayer)):
            self.records.append(Record(cls, name, layer=obj))

    def _parse_functional(self):
        names = set()
        for le in self.cfg["layers"]:
            name = le.get("name") or (le.get("config") or {}).get("name")
            if name in names:
                raise ModelLoadError(f"{self.b.where}: two layers named {name!r} in model {self.name!r}")
            names.add(name)
            obj = self._make(le)
            nodes = le.get("inbound_nodes") or []
            self.entries.append(dict(name=name, class_name=le.get("class_name"), obj=obj, nodes=nodes))
            self._record(le.get("class_name"), name, obj)
        self.inputs, self.single_input = _io_refs(self.cfg.get("input_layers"))
        self.outputs, self.single_output = _io_refs(self.cfg.get("output_layers"))

    def _parse_sequential(self, entry):
        layers = self.cfg["layers"]
        first_cfg = None
        for le in layers:
            cls = le.get("class_name")
            obj = self._make(le)
            if isinstance(obj, core.InputLayer):
                self.input_layer = obj
                continue
            if isinstance(obj, _OpSpec):
                raise ModelLoadError(f"{self.b.where}: op node {cls!r} inside a Sequential model")
            if first_cfg is None:
                first_cfg = le.get("config") or {}
            self.entries.append(dict(name=(le.get("config") or {}).get("name"), class_name=cls, obj=obj))
            self._record(cls, self.entries[-1]["name"], obj)
        if self.input_layer is None and first_cfg is not None:
            shape = first_cfg.get("batch_input_shape") or first_cfg.get("batch_shape")
            dtype = first_cfg.get("dtype") if isinstance(first_cfg.get("dtype"), str) else "float32"
            name = f"{first_cfg.get('name')}_input"
            if shape is None:
                shape = self.cfg.get("build_input_shape") or (entry.get("build_config") or {}).get("input_shape")
                name = None
            if shape is not None:
                if isinstance(self.entries[0]["obj"], core.Embedding):
                    dtype = "int32"
                self.input_layer = core.InputLayer(batch_shape=tuple(shape), dtype=dtype, name=name)

    # ------------------------------------------------------------------------------------------ replay
    def has_nested(self):
        return any(isinstance(e["obj"], Container) for e in self.entries)

    def call(self, inputs, mask=None):
        """Inline this (nested) model on outer symbolic tensors; returns its output tensors (list)."""
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if mask is not None:
            masks = mask if isinstance(mask, (list, tuple)) else [mask]
            inputs = [t if m is None else _MaskSetter(name=f"{self.name}_mask_{k}")(t, mask=m)
                      for k, (t, m) in enumerate(zip(inputs, masks))]
        if not self.functional:
            if len(inputs) != 1:
                raise ModelLoadError(f"{self.b.where}: Sequential model {self.name!r} called on {len(inputs)} "
                                     f"inputs")
            x = inputs[0]
            for e in self.entries:
                out = self.b.call_object(e, [x], {}, self)
                if len(out) != 1:
                    raise ModelLoadError(f"{self.b.where}: layer {e['name']!r} in Sequential {self.name!r} returns "
                                         f"{len(out)} tensors")
                x = out[0]
            outs = [x]
        else:
            if len(inputs) != len(self.inputs):
                raise ModelLoadError(f"{self.b.where}: model {self.name!r} expects {len(self.inputs)} inputs, "
                                     f"called with {len(inputs)}")
            outs = self.replay(dict(zip((r.layer for r in self.inputs), inputs)))
        return outs

    def replay(self, given_inputs=None):
        """Process every node; returns the output tensors. given_inputs: InputLayer name -> tensor (nested)."""
        produced = {}
        by_name = {e["name"]: e for e in self.entries}
        for e in self.entries:
            if isinstance(e["obj"], core.InputLayer):
                t = e["obj"].output if given_inputs is None else given_inputs.get(e["name"])
                produced[e["name"]] = [[t]] if t is not None else []

        def get(ref, io_ref=False):
            e = by_name.get(ref.layer)
            if e is None:
                raise ModelLoadError(f"{self.b.where}: model {self.name!r} references unknown layer {ref.layer!r}")
            offset = e["obj"].node_offset(io_ref) if isinstance(e["obj"], Container) else 0
            nodes = produced.get(ref.layer, [])
            k = ref.node - offset
            if k < 0 or k >= len(nodes):
                raise _NotReady(ref)
            outs = nodes[k]
            if ref.tensor >= len(outs):
                raise ModelLoadError(f"{self.b.where}: {ref!r}: layer {ref.layer!r} has only {len(outs)} outputs")
            return outs[ref.tensor]

        pending = {e["name"]: [parse_node(n) for n in e.get("nodes") or []]
                   for e in self.entries if not isinstance(e["obj"], core.InputLayer)}
        pending = {k: v for k, v in pending.items() if v}
        while pending:
            progressed = False
            for e in self.entries:
                todo = pending.get(e["name"])
                if not todo:
                    continue
                while todo:
                    args, kwargs = todo[0]
                    try:
                        args_t = _map_refs(args, get)
                        kwargs_t = _map_refs(kwargs, get)
                    except _NotReady:
                        break
                    outs = self.b.call_object(e, args_t, kwargs_t, self)
                    produced.setdefault(e["name"], []).append(outs)
                    todo.pop(0)
                    progressed = True
                if not todo:
                    del pending[e["name"]]
            if not progressed:
                raise ModelLoadError(f"{self.b.where}: model {self.name!r}: the graph has loops or references "
                                     f"layers that never produce the tensors it needs ({sorted(pending)})")
        try:
            return [get(r, io_ref=True) for r in self.outputs]
        except _NotReady as e:
            raise ModelLoadError(f"{self.b.where}: model {self.name!r}: output {e.args[0]!r} is never "
                                 f"computed") from None


class _OpSpec:
    """A Keras op node; each of its calls becomes an OpLayer (constants and params come from the file)."""

    def __init__(self, op, name, config):
        self.op, self.name, self.config, self.calls = op, name, config, 0

    def call(self, args, kwargs, where):
        name = self.name if self.calls == 0 else f"{self.name}_{self.calls}"
        self.calls += 1
        params = dict(self.config)
        params.update(kwargs)
        try:
            layer, tensors = OpLayer.from_call(self.op, args, params, name=name)
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"{where}: {e}") from None
        if not tensors:
            raise ModelLoadError(f"{where}: op {self.op} has no tensor argument")
        try:
            return layer(tensors[0] if len(tensors) == 1 else tensors)
        except (TypeError, ValueError, IndexError) as e:
            raise ModelLoadError(f"{where}: op {self.op} with arguments {args!r}: {e}") from None


# ---------------------------------------------------------------------------------------------- builder
class GraphBuilder:
    """Builds a fastlstm Model from a Keras model config."""

    def __init__(self, flavour, where):
        self.flavour, self.where = flavour, where

    def call_object(self, entry, args, kwargs, container):
        obj, name, cls = entry["obj"], entry["name"], entry["class_name"]
        where = f"{self.where}: layer {name!r} ({cls})"
        # null call arguments mean "not given" (tf_keras writes {"initial_state": null, "constants": null} into
        # every inbound entry of a Bidirectional called with initial states)
        kwargs = {k: v for k, v in kwargs.items()
                  if k != "training" and not (k in ("mask", "initial_state", "constants") and v is None)}
        if isinstance(obj, _OpSpec):
            return [obj.call(args, kwargs, where)]
        if len(args) != 1:
            raise ModelLoadError(f"{where}: a call with {len(args)} positional arguments is not supported")
        x = args[0]
        if isinstance(obj, Container):
            unknown = set(kwargs) - {"mask"}
            if unknown:
                raise ModelLoadError(f"{where}: nested model called with unsupported arguments {sorted(unknown)}")
            outs = obj.call(x, mask=kwargs.get("mask"))
            for k, t in enumerate(outs):    # Keras names a nested model's outputs after the model
                t.name = name if k == 0 else f"{name}[{k}]"
            return outs
        is_rnn = isinstance(obj, (recurrent.RNN, recurrent.Bidirectional))
        if is_rnn and isinstance(x, list):          # Keras 2: [inputs, *initial_states]
            if len(x) > 1:
                if "initial_state" in kwargs:
                    raise ModelLoadError(f"{where}: initial states given twice")
                kwargs["initial_state"] = x[1:]
            x = x[0]
        if is_rnn and "initial_state" in kwargs and "mask" not in kwargs and not self.flavour.keras2:
            # Keras 3 fills `mask` from the input only when the call has ONE tensor argument: an RNN
            # called with initial_state runs unmasked unless the mask is passed explicitly.
            kwargs["mask"] = None
        allowed = {"mask", "initial_state"} if is_rnn else {"mask"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise ModelLoadError(f"{where}: call arguments {sorted(unknown)} are not supported")
        if "initial_state" in kwargs and not isinstance(kwargs["initial_state"], list):
            kwargs["initial_state"] = [kwargs["initial_state"]]
        try:
            out = obj(x, **kwargs)
        except ModelLoadError:
            raise
        except (ValueError, TypeError) as e:
            raise ModelLoadError(f"{where}: {e}") from None
        return out if isinstance(out, list) else [out]

    def build(self, root):
        """root config {"class_name", "config"} -> (Model, records)."""
        from ..model import Model, Sequential
        check_safe({k: v for k, v in root.items() if k not in ("config",)}, self.where)
        cls = root.get("class_name")
        if cls not in MODEL_CLASSES:
            raise ModelLoadError(f"{self.where}: top-level class {cls!r} is not a Keras Sequential/Functional model "
                                 f"(subclassed models cannot be loaded without their Python code)")
        top = Container(self, root, top=True)
        if top.functional:
            outs = top.replay()
            ins = []
            for r in top.inputs:
                e = next((e for e in top.entries if e["name"] == r.layer), None)
                if e is None or not isinstance(e["obj"], core.InputLayer):
                    raise ModelLoadError(f"{self.where}: model input {r!r} is not an InputLayer")
                ins.append(e["obj"].output)
            model = Model(ins[0] if top.single_input else ins, outs[0] if top.single_output else outs,
                          name=top.name)
        elif top.has_nested():
            if top.input_layer is None:
                raise ModelLoadError(f"{self.where}: a Sequential model holding nested models needs an input shape")
            x = top.input_layer.output
            outs = top.call(x)
            model = Model(x, outs[0], name=top.name)
        else:
            model = Sequential([e["obj"] for e in top.entries], name=top.name)
            if top.input_layer is not None:
                model.add(top.input_layer)
                try:
                    model.build()
                except (ValueError, TypeError) as e:
                    raise ModelLoadError(f"{self.where}: {e}") from None
        return model, top.records
