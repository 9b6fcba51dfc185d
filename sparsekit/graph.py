"""Channel dependency graphs from ``torch.fx``: which layers must shrink together.

Removing output channel ``c`` of a Conv/Linear layer (a *source*) changes every tensor
that carries channel ``c`` downstream: the BatchNorm that normalises it, the
element-wise activations and pools it flows through, the next Conv/Linear that reads
it (a *consumer*, which loses input column ``c``, or ``inner`` columns after a
``Flatten``), and, through a residual addition ``a + b``, every other source whose
channels are added to it. Sources tied by additions form one *group*: their channels
are pruned together or not at all.

The idea is DepGraph's (Fang et al. 2023): find these dependencies from the model's
computational graph instead of per-model tables. This module is a small version of it
for the cases the book needs (Conv/Linear/BatchNorm/activations/pools/flatten/add).
Anything else that touches a channel (concatenation, reshapes, LayerNorm, the model
output, ...) *blocks* the group, with the reason recorded so callers can say which
module and which operation stopped them.

Models are traced with a tracer that also runs the ops on an example input, so
Python control flow on shapes (``if x.dim() == 2``) resolves to the branch that
input takes.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

SOURCE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
BN_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
# Per-channel operations: a channel's value out depends only on the same channel in.
_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.ELU,
    nn.Hardswish, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
)
_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
_ELEMENTWISE_FUNCTIONS: set[Any] = {
    F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardswish, F.dropout,
    torch.relu, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh,
}
_POOL_FUNCTIONS: set[Any] = {
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "detach"}
_ADD_OPS: set[Any] = {operator.add, operator.iadd, torch.add, operator.sub, torch.sub}
_SCALAR_OPS: set[Any] = {operator.mul, operator.truediv, operator.add, operator.sub}


# ---------------------------------------------------------------------------------
# Tracing with concrete values
# ---------------------------------------------------------------------------------

def _unpatched() -> contextlib.AbstractContextManager[None]:
    """Temporarily undo fx's tracing patches (private torch API; a no-op where absent)."""
    revert = getattr(fx._symbolic_trace, "_maybe_revert_all_patches", None)
    return revert() if revert is not None else contextlib.nullcontext()


class _ValueTracer(fx.Tracer):
    """An fx tracer that also computes every node's value on an example input.

    ``node.meta["value"]`` holds the concrete result, and ``bool(proxy)`` (Python
    control flow) answers with it, so ``if x.dim() == 2`` follows the example's branch.
    """

    def __init__(self, root: nn.Module, inputs: tuple[Any, ...]) -> None:
        super().__init__()
        self._root, self._inputs, self._next_input = root, inputs, 0

    def _value(self, a: Any) -> Any:
        return fx.node.map_aggregate(a, lambda x: x.node.meta["value"] if isinstance(x, fx.Proxy) else x)

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str | None = None, type_expr: Any | None = None, *extra: Any, **extra_kw: Any) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *extra, **extra_kw)
        with _unpatched():  # run the real op, not the tracer's patched Module.__call__/__getattr__
            proxy.node.meta["value"] = self._compute(kind, target, args, kwargs)
        return proxy

    def _compute(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a, kw = self._value(args), self._value(kwargs)
        if kind == "placeholder":
            if self._next_input >= len(self._inputs):
                raise ValueError(f"example_input gives {len(self._inputs)} input(s) but forward needs more")
            value = self._inputs[self._next_input]
            self._next_input += 1
        elif kind == "get_attr":
            value = operator.attrgetter(target)(self._root)
        elif kind == "call_module":
            value = self._root.get_submodule(target)(*a, **kw)
        elif kind == "call_function":
            value = target(*a, **kw)
        elif kind == "call_method":
            value = getattr(a[0], target)(*a[1:], **kw)
        else:  # output
            value = a[0] if a else None
        return value

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(obj.node.meta["value"])

    def iter(self, obj: fx.Proxy):  # noqa: A003 - fx.Tracer's name
        return iter(obj.node.meta["value"])


def trace(model: nn.Module, example_input: Tensor | tuple[Tensor, ...]) -> fx.Graph:
    """The fx graph of ``model(example_input)``; every node has ``meta["value"]``.

    Runs the model once, in eval mode and without gradients (the mode is restored, so
    BatchNorm statistics do not move). Extra ``forward`` arguments with defaults (e.g.
    ``head_masks=None``) are fixed at their defaults.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not all(isinstance(x, Tensor) for x in inputs):
        raise TypeError(f"example_input must be a Tensor or tuple of Tensors, got {type(example_input).__name__}")
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {p.name: p.default for p in params[len(inputs):] if p.default is not inspect.Parameter.empty}
    tracer = _ValueTracer(model, inputs + tuple(concrete.values()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            graph = tracer.trace(model, concrete_args=concrete or None)
    except fx.proxy.TraceError as err:
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx: {err}") from err
    finally:
        model.train(was_training)
    return graph


# ---------------------------------------------------------------------------------
# Channel groups
# ---------------------------------------------------------------------------------

@dataclass
class Consumer:
    """A Conv/Linear reading a group's channels: input column ``c`` spans ``inner`` columns."""

    module: str
    inner: int = 1
    node: str = ""          # the fx node whose value the consumer reads (for constants)


@dataclass
class ChannelGroup:
    """Output channels of ``sources`` that are tied together (residual additions).

    ``norms``: BatchNorm modules over these channels; ``bn_of``: source -> the
    BatchNorm applied directly to its output; ``consumers``: layers reading them;
    ``blocked``: why the group cannot be pruned (None if it can).
    """

    channels: int
    sources: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    bn_of: dict[str, str] = field(default_factory=dict)
    consumers: list[Consumer] = field(default_factory=list)
    blocked: str | None = None
    nodes: list[fx.Node] = field(default_factory=list)  # every node carrying the channels, in order

    @property
    def prunable(self) -> bool:
        return self.blocked is None


@dataclass
class _Carry:
    """What a tensor node carries: which group, on which dim, with what flatten stride."""

    group: int
    dim: int
    inner: int = 1
    flat: bool = False


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> int:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)
        return min(a, b)


def _describe(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target!r} (node {node.name!r})"


def _value_shape(node: Any) -> tuple[int, ...] | None:
    if isinstance(node, fx.Node) and isinstance(node.meta.get("value"), Tensor):
        return tuple(node.meta["value"].shape)
    return None


def channel_groups(model: nn.Module, example_input: Tensor | tuple[Tensor, ...],
                   graph: fx.Graph | None = None) -> list[ChannelGroup]:
    """The channel groups of ``model`` (one per set of tied Conv/Linear outputs), in source order.

    Each Conv/Linear output starts a group; a residual addition of two tensors carrying
    different groups merges them. A group is *blocked* (with the reason) when its channels
    reach the model output or an operation this analysis does not model.
    """
    graph = graph if graph is not None else trace(model, example_input)
    modules = dict(model.named_modules())
    uf = _UnionFind()
    raw: list[dict[str, Any]] = []
    carry: dict[fx.Node, _Carry] = {}
    seen_sources: set[str] = set()

    def new_group(channels: int) -> int:
        raw.append({"channels": channels, "sources": [], "norms": [], "bn_of": {}, "consumers": [],
                    "blocked": None, "nodes": []})
        return uf.add()

    def block(group: int, reason: str) -> None:
        g = raw[uf.find(group)]
        if g["blocked"] is None:
            g["blocked"] = reason

    def tensor_inputs(node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if a in carry]

    for node in graph.nodes:
        inputs = tensor_inputs(node)
        module = modules.get(node.target) if node.op == "call_module" else None
        out_shape = _value_shape(node)

        # A Conv/Linear: consumes its input's group, starts a new one.
        if isinstance(module, SOURCE_TYPES):
            name = str(node.target)
            if name in seen_sources:
                raise ValueError(f"module {name!r} is called more than once; shared layers cannot be pruned")
            seen_sources.add(name)
            groups_ok = not (isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1)
            for a in inputs:
                c = carry[a]
                conv = isinstance(module, (nn.Conv1d, nn.Conv2d))
                ok_dim = (c.dim == 1) if conv else (c.dim == len(_value_shape(a) or ()) - 1)
                if not groups_ok:
                    block(c.group, f"it feeds grouped convolution {name!r} (groups={module.groups})")
                elif not ok_dim:
                    block(c.group, f"it feeds {name!r} along a dimension that is not its input channels")
                else:
                    raw[uf.find(c.group)]["consumers"].append(Consumer(name, c.inner, a.name))
            g = new_group(module.weight.shape[0])
            raw[g]["sources"].append(name)
            raw[g]["nodes"].append(node)
            if not groups_ok:
                raw[g]["blocked"] = f"{name!r} is a grouped convolution (groups={module.groups})"
            carry[node] = _Carry(g, 1 if not isinstance(module, nn.Linear) else len(out_shape or (0, 0)) - 1)
            continue
        if not inputs:
            continue
        if node.op != "output" and not isinstance(node.meta.get("value"), Tensor):
            continue  # shapes, sizes, dims: reading them does not depend on channel values
        if node.op == "output":
            for a in inputs:
                block(carry[a].group, "its channels reach the model output")
            continue
        first = carry[inputs[0]]
        in_shape = _value_shape(inputs[0])

        if isinstance(module, BN_TYPES) and len(inputs) == 1 and first.dim == 1 and not first.flat:
            g = raw[uf.find(first.group)]
            g["norms"].append(str(node.target))
            producer = inputs[0]
            if producer.op == "call_module" and isinstance(modules.get(producer.target), SOURCE_TYPES):
                g["bn_of"][str(producer.target)] = str(node.target)
            carry[node] = first
        elif len(inputs) == 1 and _is_per_channel(node, module, inputs[0], first, in_shape, out_shape):
            carry[node] = first
        elif (len(inputs) == 1 and first.dim == 1 and not first.flat and in_shape is not None
              and out_shape == (in_shape[0], _prod(in_shape[1:])) and len(in_shape) > 2
              and _is_flatten(node, module)):
            carry[node] = _Carry(first.group, 1, _prod(in_shape[2:]), flat=True)
        elif (node.op in ("call_function", "call_method") and node.target in _ADD_OPS | {"add", "sub", "add_"}
              and len(inputs) == 2 and in_shape == _value_shape(inputs[1]) == out_shape
              and carry[inputs[1]].dim == first.dim and not first.flat and not carry[inputs[1]].flat):
            a, b = raw[uf.find(first.group)], raw[uf.find(carry[inputs[1]].group)]
            if a["channels"] != b["channels"]:
                block(first.group, f"{_describe(node)} adds {a['channels']} to {b['channels']} channels")
            root = uf.union(first.group, carry[inputs[1]].group)
            carry[node] = _Carry(root, first.dim)
        else:
            why = f"its channels reach {_describe(node)}, which sparsekit.structured cannot shrink"
            for a in inputs:
                block(carry[a].group, why)
            continue
        raw[uf.find(carry[node].group)]["nodes"].append(node)

    for n, c in carry.items():
        n.meta["channel_dim"] = c.dim
    # Merge the union-find classes into groups, in order of their first source.
    merged: dict[int, ChannelGroup] = {}
    for i, g in enumerate(raw):
        root = uf.find(i)
        target = merged.setdefault(root, ChannelGroup(channels=raw[root]["channels"]))
        target.sources += g["sources"]
        target.norms += g["norms"]
        target.bn_of.update(g["bn_of"])
        target.consumers += g["consumers"]
        target.nodes += g["nodes"]
        if g["blocked"] is not None and target.blocked is None:
            target.blocked = g["blocked"]
    order = {n: i for i, n in enumerate(graph.nodes)}
    for grp in merged.values():
        grp.nodes.sort(key=order.__getitem__)
    return list(merged.values())


def _prod(xs: tuple[int, ...]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _is_flatten(node: fx.Node, module: nn.Module | None) -> bool:
    if isinstance(module, nn.Flatten):
        return True
    if node.op == "call_function" and node.target in (torch.flatten, torch.reshape):
        return True
    return node.op == "call_method" and node.target in ("flatten", "view", "reshape", "squeeze")


def is_pool(node: fx.Node, module: nn.Module | None) -> bool:
    """A spatial pooling op (a constant channel stays the same constant)."""
    return isinstance(module, _POOL_MODULES) or (node.op == "call_function" and node.target in _POOL_FUNCTIONS)


def is_reshape(node: fx.Node, module: nn.Module | None) -> bool:
    """A flatten/view/reshape (per-channel values are unchanged by it)."""
    return _is_flatten(node, module)


def _is_per_channel(node: fx.Node, module: nn.Module | None, inp: fx.Node, carried: _Carry,
                    in_shape: tuple[int, ...] | None, out_shape: tuple[int, ...] | None) -> bool:
    """True for ops that keep each channel separate: activations, pools, scalar arithmetic."""
    if in_shape is None or out_shape is None:
        return False
    if _is_flatten(node, module):
        return out_shape == in_shape  # a no-op reshape
    if isinstance(module, _ELEMENTWISE_MODULES):
        return out_shape == in_shape
    if is_pool(node, module):
        same_rank = len(out_shape) == len(in_shape)
        return carried.dim == 1 and not carried.flat and out_shape[:2] == in_shape[:2] and same_rank
    if node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS:
        return out_shape == in_shape
    if node.op == "call_method" and node.target in _ELEMENTWISE_METHODS:
        return out_shape == in_shape
    if node.op == "call_function" and node.target in _SCALAR_OPS:
        others = [a for a in node.args if a is not inp]
        return out_shape == in_shape and all(isinstance(a, (int, float)) for a in others)
    return False


def run_node(node: fx.Node, modules: dict[str, nn.Module], replace: dict[fx.Node, Any]) -> Any:
    """Re-run ``node``, reading inputs from ``replace`` where given, else their traced values."""

    def sub(a: Any) -> Any:
        return replace[a] if a in replace else a.meta.get("value")

    args = fx.node.map_arg(node.args, sub)
    kwargs = fx.node.map_arg(node.kwargs, sub)
    if node.op == "call_module":
        return modules[str(node.target)](*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    raise ValueError(f"cannot re-run {_describe(node)}")
