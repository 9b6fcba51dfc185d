"""Channel dependency graphs from ``torch.fx`` for the *finalize* step (shrink): which layers shrink together.

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

Models are traced with public ``torch.fx`` (symbolic tracing, then an
``fx.Interpreter`` run for the values on an example input). Python control flow on
shapes (``if x.dim() == 2``) resolves to the branch that input takes; control flow on
tensor values (``if x.sum() > 0``) is refused with a ``ValueError`` naming the module,
since the graph would hold one branch only.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .train import eval_mode

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
# Tracing, then values
# ---------------------------------------------------------------------------------

# Nodes that read a tensor's shape, not its values: a branch on them is the same for
# every input of that shape.
_SHAPE_METHODS = {"size", "dim", "numel", "ndimension", "nelement"}
_SHAPE_ATTRS = {"shape", "ndim"}


def _reads_shape_only(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    return (node.op == "call_function" and node.target is getattr
            and len(node.args) == 2 and node.args[1] in _SHAPE_ATTRS)


def _depends_on_values(node: fx.Node) -> bool:
    """True when ``node`` depends on the values of an input, parameter or buffer, not only on shapes."""
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n in seen or _reads_shape_only(n):
            continue
        seen.add(n)
        if n.op in ("placeholder", "get_attr"):
            return True
        todo.extend(n.all_input_nodes)
    return False


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


class _Tracer(fx.Tracer):
    """``torch.fx`` symbolic tracing that answers control flow on *shapes* and refuses it on *values*.

    ``bool(proxy)`` (an ``if`` in ``forward``) is asked of :meth:`to_bool`, fx's public hook
    for it. When the condition depends only on shapes (``if x.dim() == 2``), the part of
    the graph it needs is run on the example input (``fx.Interpreter``) and the branch that
    input takes is followed: the same for every input of that shape. A condition on tensor
    values (``if x.sum() > 0``) is refused, naming the module: the graph would hold the
    example's branch only, and a model shrunk along it fails on the other branch.
    While that part runs, fx's public hooks :meth:`call_module` and :meth:`getattr` hand
    back real modules and tensors instead of recording them.
    """

    def __init__(self, root: nn.Module, inputs: tuple[Any, ...]) -> None:
        super().__init__()
        self._model, self._inputs = root, inputs
        self._where: list[str] = []
        self._evaluating = False  # running real ops for a shape condition: no tracing
        self.failed_in: str | None = None
        self.shape_branches: list[str] = []  # where a branch on shapes was followed

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._evaluating:
            return forward(*args, **kwargs)
        self._where.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self._where[-1]
            raise
        finally:
            self._where.pop()

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:  # noqa: A003
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def module_label(self) -> str:
        """The module whose ``forward`` is being traced, for messages."""
        if self._where:
            name = self._where[-1]
            return f"module {name!r} ({type(self._model.get_submodule(name)).__name__})"
        return f"{type(self._model).__name__}.forward"

    def to_bool(self, obj: fx.Proxy) -> bool:
        node = obj.node
        if _depends_on_values(node):
            raise ValueError(
                f"{self.module_label()} branches on tensor values (Python control flow on {_describe(node)}): "
                "torch.fx records only the branch the example input takes, and a model shrunk along it "
                "would fail on the other branch; sparsekit.graph supports control flow on shapes only")
        keep = _ancestors(node)
        sub = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for n in self.graph.nodes:  # every placeholder, so the example inputs line up
            if n in keep or n.op == "placeholder":
                env[n] = sub.node_copy(n, env.__getitem__)
        sub.output(env[node])
        self.shape_branches.append(f"{self.module_label()} (on {_describe(node)})")
        self._evaluating = True  # fx's hooks (call_module, getattr) now run the real module
        try:
            return bool(fx.Interpreter(fx.GraphModule(self._model, sub)).run(*self._inputs))
        finally:
            self._evaluating = False


class _ValueInterpreter(fx.Interpreter):
    """Runs the traced graph on the example input and keeps every node's value in ``meta["value"]``."""

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        n.meta["value"] = value
        return value


def trace(model: nn.Module, example_input: Tensor | tuple[Tensor, ...]) -> fx.Graph:
    """The fx graph of ``model(example_input)``; every node has ``meta["value"]``.

    Public ``torch.fx`` only: symbolic tracing (``fx.Tracer``), then one run of the graph on
    the example (``fx.Interpreter``) for the values, in eval mode and without gradients
    (:func:`sparsekit.train.eval_mode`: every module's own mode comes back and BatchNorm
    statistics do not move). Extra ``forward`` arguments with defaults (e.g.
    ``head_masks=None``) are fixed at their defaults.

    Control flow on shapes follows the example's branch (refused when a Conv/Linear/BatchNorm
    is then left off the graph); a forward that branches on tensor values, or that fx cannot
    trace at all, raises ``ValueError`` naming the module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not all(isinstance(x, Tensor) for x in inputs):
        raise TypeError(f"example_input must be a Tensor or tuple of Tensors, got {type(example_input).__name__}")
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {p.name: p.default for p in params[len(inputs):] if p.default is not inspect.Parameter.empty}
    tracer = _Tracer(model, inputs)
    with eval_mode(model), torch.no_grad():
        try:
            graph = tracer.trace(model, concrete_args=concrete or None)
        except ValueError:
            raise
        except Exception as err:  # fx.proxy.TraceError, or a Proxy where Python needs an int, ...
            where = (f"module {tracer.failed_in!r} of {type(model).__name__}" if tracer.failed_in
                     else f"{type(model).__name__}.forward")
            raise ValueError(f"cannot trace {where} with torch.fx ({type(err).__name__}: {err}); "
                             "sparsekit.graph needs a forward that torch.fx.symbolic_trace can trace") from err
        placeholders = sum(n.op == "placeholder" for n in graph.nodes)
        if len(inputs) > placeholders:
            raise ValueError(f"example_input gives {len(inputs)} inputs but {type(model).__name__}.forward "
                             f"takes {placeholders}")
        if tracer.shape_branches:  # a layer on the branch not taken would keep its old width
            used = {str(n.target) for n in graph.nodes if n.op == "call_module"}
            off_path = [n for n, m in model.named_modules() if isinstance(m, SOURCE_TYPES + BN_TYPES) and n not in used]
            if off_path:
                raise ValueError(f"{tracer.shape_branches[0]} branches on a shape, and the branch the example "
                                 f"input takes does not use {off_path}: a model shrunk along it could fail "
                                 "on inputs taking the other branch")
        _ValueInterpreter(fx.GraphModule(model, graph)).run(*inputs)
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
