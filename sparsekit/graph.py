"""Channel dependency graphs from ``torch.fx`` for the *finalize* step (shrink): which layers shrink together.

Removing output channel ``c`` of a Conv/Linear layer (a *source*) changes every tensor
that carries channel ``c`` downstream: the BatchNorm that normalises it, the
element-wise activations and pools it flows through, the next Conv/Linear that reads
it (a *consumer*, which loses input column ``c``, or ``inner`` columns after a
``Flatten``), and, through a residual addition ``a + b``, every other source whose
channels are added to it. Sources tied by additions form one *group*: their channels
are pruned together or not at all.

The idea is DepGraph's (Fang et al. 2023): find these dependencies from the model's
computational graph instead of per-model tables. Here every output channel of a
Conv/Linear is an *atom*, and every tensor of the graph carries the atom of each of its
channels (:func:`dependencies`). Operations that only move elements (reshape, permute,
concatenation, chunk, a channel shuffle, flatten, indexing) are run on the atom labels
themselves, so any rearrangement is followed exactly; element-wise products and sums
(residual additions, squeeze-and-excitation gates) tie atoms into units pruned together;
a depthwise convolution passes its input's atoms on, and a grouped convolution asks
every group to lose the same number. What cannot stay exact *blocks* the group, with
the reason recorded so callers can say which module and which operation stopped them:
a LayerNorm over the channels, a tensor combined with them but not pruned with them, a
reshape or slice with constant sizes, an unknown module, the model output.

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
from torch.func import functional_call

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
        _record_values(fx.GraphModule(model, graph), inputs)
    return graph


def _work(model: nn.Module, inputs: Any) -> int:
    """Input elements times parameters: a rough measure of what a real forward pass costs."""
    xs = inputs if isinstance(inputs, tuple) else (inputs,)
    return sum(x.numel() for x in xs if isinstance(x, Tensor)) * sum(p.numel() for p in model.parameters())


class _RunGraph(nn.Module):
    """Runs a GraphModule through :class:`_ValueInterpreter` (so ``functional_call`` can swap its tensors)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *inputs: Tensor) -> Any:
        return _ValueInterpreter(self.gm).run(*inputs)


META_ABOVE = 10 ** 13  # input elements x parameters above which shapes come from a meta-device run


def _record_values(gm: fx.GraphModule, inputs: tuple[Tensor, ...]) -> None:
    """Every node's value in ``meta["value"]``. Only shapes are needed: for a large example the run
    is on the ``meta`` device (no arithmetic; ``torch.func.functional_call`` swaps in meta copies of
    the parameters and buffers), falling back to the real run for an op without a meta kernel. When
    the real run is cheap (input elements x parameters below ``META_ABOVE``) it is used: meta
    kernels are Python and slower there."""
    runner = _RunGraph(gm)
    if _work(gm, inputs) <= META_ABOVE:
        runner(*inputs)
        return
    tensors = dict(runner.named_parameters())
    tensors.update(dict(runner.named_buffers()))
    try:
        meta = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
        functional_call(runner, meta, tuple(x.to("meta") for x in inputs), strict=False)
    except Exception:  # noqa: BLE001 - any failure on meta tensors: compute the real values instead
        runner(*inputs)

# ---------------------------------------------------------------------------------
# Channel groups: every channel is an *atom*; operations tie atoms into *units*
# ---------------------------------------------------------------------------------
#
# Each Conv/Linear output channel is an atom (a global integer id). Every tensor in the
# graph carries an id tensor (``_ids``): the same number of dims as the value, each dim
# either of the value's size or 1 (constant along it), holding the atom each element
# belongs to (-1: none). Operations that only move elements (view, permute, cat, chunk,
# a channel shuffle, flatten, indexing) are run on the id tensor itself, so any
# rearrangement of channels is followed exactly. Element-wise operations of two tensors
# (a residual ``a + b``, a squeeze-and-excitation gate ``x * s``) tie the atoms at each
# position into one *unit*: pruned together or not at all. A depthwise convolution passes
# its input's atoms on (its filters are pruned with them); a grouped convolution asks
# that every group of its channels lose the same number. Units whose sources are linked
# form a *group*, the thing one sparsity applies to.


@dataclass
class Consumer:
    """A Conv/Linear reading a group's channels: input column ``c`` spans ``inner`` columns."""

    module: str
    inner: int = 1
    node: str = ""          # the fx node whose value the consumer reads (for constants)


@dataclass
class ChannelGroup:
    """Output channels of ``sources`` that are tied together (additions, gates, depthwise convolutions).

    ``channels``: number of prunable units (one channel of each tied source);
    ``norms``: BatchNorm modules over these channels; ``bn_of``: source -> the BatchNorm
    applied directly to its output; ``consumers``: layers reading them; ``members``:
    per-channel layers pruned with them (depthwise convolutions); ``blocked``: why the
    group cannot be pruned (None if it can). ``atoms``: the group's atom ids and
    ``atom_unit`` the unit of each (``units[u]``: the atoms of unit ``u``);
    ``blocks``: unit indices of equal-size blocks that must each lose the same number
    (the groups of a grouped convolution), or None.
    """

    channels: int
    sources: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    bn_of: dict[str, str] = field(default_factory=dict)
    consumers: list[Consumer] = field(default_factory=list)
    blocked: str | None = None
    nodes: list[fx.Node] = field(default_factory=list)  # every node carrying the channels, in order
    members: list[str] = field(default_factory=list)
    blocks: list[list[int]] | None = None
    atoms: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long), repr=False)
    atom_unit: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long), repr=False)

    @property
    def prunable(self) -> bool:
        return self.blocked is None

    @property
    def units(self) -> list[Tensor]:
        """``units[u]``: the atom ids of unit ``u`` (one channel of each tied layer)."""
        return [self.atoms[self.atom_unit == u] for u in range(self.channels)]


@dataclass
class Role:
    """One dimension of one module indexed by atoms: ``kind`` is ``"out"`` (weight rows; a
    source, or a depthwise convolution), ``"bn"`` (BatchNorm entries), ``"in"`` (weight
    columns of a consumer), ``"gin"`` (input columns of a grouped convolution, per group);
    ``"ln"`` (a LayerNorm's weight and bias, pruned only with ``allow_inexact``), ``"param"``
    (dim ``dim`` of the module's tensor ``attr``: a per-channel scale such as ConvNeXt's
    ``layer_scale``); ``atoms[p]``: the atom at position ``p`` (-1: none); ``node``: the
    consumer's input."""

    module: str
    kind: str
    atoms: Tensor
    node: fx.Node | None = None
    attr: str = ""
    dim: int = 0


@dataclass
class Dependencies:
    """Everything :func:`dependencies` found: groups, per-module roles, and the atoms' owners."""

    groups: list[ChannelGroup]
    roles: list[Role]
    atom_source: list[str]     # atom -> the source layer that produces it
    atom_index: Tensor         # atom -> its channel in that layer
    group_of_atom: Tensor      # atom -> index into groups
    unit_of_atom: Tensor       # atom -> its unit's index within its group
    ids: dict[fx.Node, Any]    # node -> id tensor (or tuple of them)
    graph: fx.Graph
    inexact: list[str] = field(default_factory=list)  # LayerNorms pruned with allow_inexact


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int = 1) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

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


SOURCE_TYPES_ALL = SOURCE_TYPES
_LN_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm)
_ELEMENTWISE_MODULES = _ELEMENTWISE_MODULES + (nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.AlphaDropout)
_ELEMENTWISE_FUNCTIONS |= {F.hardsigmoid, F.mish, F.softplus, F.gelu, F.dropout1d, F.dropout2d, torch.exp,
                           torch.abs, torch.square, F.hardtanh, torch.clamp, torch.neg, operator.neg}
_ELEMENTWISE_METHODS |= {"sigmoid_", "relu_", "clamp", "clamp_min", "clamp_max", "exp", "abs", "neg",
                         "square", "float", "to", "type_as"}
# Ops that only move elements: run on the id tensor itself.
_MOVE_FUNCTIONS: set[Any] = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.cat, torch.concat, torch.stack,
    torch.chunk, torch.split, torch.squeeze, torch.unsqueeze, operator.getitem, torch.narrow, torch.swapaxes,
    torch.movedim, torch.unbind, torch.t, torch.tensor_split,
}
_MOVE_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "chunk", "split", "unbind",
                 "squeeze", "unsqueeze", "expand", "expand_as", "narrow", "select", "t", "unflatten", "movedim",
                 "swapaxes", "view_as", "reshape_as", "repeat", "tensor_split"}
_MOVE_MODULES: tuple[type[nn.Module], ...] = (nn.Flatten, nn.Unflatten)
# Reductions over given dims: per-channel when the channels are not among them.
_REDUCE_FUNCTIONS: set[Any] = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_BINARY_FUNCTIONS: set[Any] = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
                               operator.imul, operator.truediv, operator.itruediv, torch.add, torch.sub,
                               torch.mul, torch.div}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}


def _reduce(ids: Tensor) -> Tensor:
    """Collapse every dim along which ``ids`` is constant to size 1."""
    for d in range(ids.dim()):
        if ids.shape[d] > 1 and bool((ids == ids.narrow(d, 0, 1)).all()):
            ids = ids.narrow(d, 0, 1)
    return ids.contiguous()


def _varying(ids: Tensor) -> list[int]:
    return [d for d in range(ids.dim()) if ids.shape[d] > 1]


def _line(ids: Tensor, dim: int, size: int) -> Tensor:
    """The atoms along ``dim`` (length ``size``) of an id tensor varying along ``dim`` only."""
    index = [0] * ids.dim()
    index[dim] = slice(None)
    return ids.expand(*[size if d == dim else ids.shape[d] for d in range(ids.dim())])[tuple(index)].clone()


def _channel_view(atoms: Tensor, ndim: int, dim: int) -> Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return atoms.view(shape)


def _flat_ids(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _flat_ids(item)]
    return []


def _reduced_dims(node: fx.Node, ndim: int) -> tuple[list[int], bool] | None:
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keep = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
    if dims is None:
        return None
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) for d in dims):
        return None
    return sorted({d % ndim for d in dims}), keep


def dependencies(model: nn.Module, example_input: Tensor | tuple[Tensor, ...],
                 graph: fx.Graph | None = None, *, allow_inexact: bool = False) -> Dependencies:
    """The channel dependencies of ``model``: groups, and which module dims each atom indexes.

    ``allow_inexact``: a LayerNorm over the channels (ConvNeXt, ViT) no longer blocks them;
    its weight and bias are pruned with them, and the pruned model normalizes over the
    kept channels only: a different function (a ``UserWarning`` says so where it is used).

    See the comment above for the model (atoms, units, groups). A group is *blocked*
    (with the reason) when its channels reach the model output or an operation this
    analysis does not model (LayerNorm over the channels, an unknown module, a tensor
    that is combined with them but not pruned along them, ...).
    """
    graph = graph if graph is not None else trace(model, example_input)
    modules = dict(model.named_modules())
    atoms = _UnionFind()
    atom_source: list[str] = []
    atom_index: list[int] = []
    blocked: dict[int, str] = {}          # atom -> first reason
    roles: list[Role] = []
    bn_after: dict[str, tuple[str, Tensor]] = {}
    constraints: list[tuple[str, Tensor, int]] = []  # (grouped conv, atoms of its positions, blocks)
    members: list[tuple[str, Tensor]] = []
    ids: dict[fx.Node, Any] = {}
    seen_sources: set[str] = set()
    inexact: list[str] = []

    def block(x: Any, reason: str) -> None:
        for t in _flat_ids(x):
            hit = torch.zeros(len(atom_source), dtype=torch.bool)
            hit[t[t >= 0]] = True  # a scatter: cheaper than sorting large id tensors
            for a in hit.nonzero().flatten().tolist():
                blocked.setdefault(a, reason)

    def fresh(name: str, n: int) -> Tensor:
        start = atoms.add(n)
        atom_source.extend([name] * n)
        atom_index.extend(range(n))
        return torch.arange(start, start + n)

    def full(node: fx.Node) -> Any:
        """The node's ids at the full shape of its value (-1 where it carries none)."""
        value = node.meta.get("value")
        if not isinstance(value, Tensor) and node not in ids:
            return type(value)(torch.full(v.shape, -1, dtype=torch.long) if isinstance(v, Tensor) else v
                               for v in value)
        if node in ids:
            x = ids[node]
            if isinstance(x, Tensor):
                return x.expand(value.shape).contiguous()
            return type(x)(t.expand(v.shape).contiguous() if isinstance(t, Tensor) else t
                           for t, v in zip(x, value, strict=True))
        return torch.full(value.shape, -1, dtype=torch.long)

    for node in graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        ins = [a for a in node.all_input_nodes if a in ids]
        value = node.meta.get("value")

        if isinstance(module, SOURCE_TYPES):
            name = str(node.target)
            if name in seen_sources:
                raise ValueError(f"module {name!r} is called more than once; shared layers cannot be pruned")
            seen_sources.add(name)
            conv = not isinstance(module, nn.Linear)
            groups = module.groups if conv else 1
            cdim_out = 1 if conv else value.dim() - 1
            x = ins[0] if ins else None
            in_ids = None
            if x is not None:
                xi = ids[x]
                cdim = 1 if conv else xi.dim() - 1
                if not isinstance(xi, Tensor) or any(d != cdim for d in _varying(xi)):
                    block(xi, f"it feeds {name!r} along a dimension that is not its input channels")
                else:
                    in_ids = _line(xi, cdim, module.weight.shape[1] * groups)
            if conv and groups > 1 and module.weight.shape[1] == 1:
                # depthwise (one input channel per group, ``m`` outputs each): outputs carry the input's atoms
                m = module.out_channels // groups
                if in_ids is None:  # its input channels cannot be pruned, so neither can its outputs
                    in_ids = fresh(name, module.in_channels)
                    block(in_ids, f"depthwise convolution {name!r} reads channels that cannot be pruned")
                out = in_ids.repeat_interleave(m)
                roles.append(Role(name, "dw", out))
                members.append((name, out))
                ids[node] = _channel_view(out, value.dim(), 1)
                node.meta["sk_kind"] = "dw"
                continue
            if in_ids is not None:
                roles.append(Role(name, "gin" if groups > 1 else "in", in_ids, x))
                if groups > 1:
                    constraints.append((name, in_ids, groups))
            out = fresh(name, module.weight.shape[0])
            roles.append(Role(name, "out", out))
            if groups > 1:
                constraints.append((name, out, groups))
            ids[node] = _channel_view(out, value.dim(), cdim_out)
            node.meta["sk_kind"] = "source"
            continue
        if not ins:
            continue
        if node.op == "output":
            block([ids[a] for a in ins], "its channels reach the model output")
            continue
        if not (isinstance(value, Tensor) or (isinstance(value, (tuple, list)) and _flat_ids(value))):
            continue  # shapes, sizes, dims: reading them does not depend on channel values
        first = ids[ins[0]]
        single = len(ins) == 1 and isinstance(first, Tensor) and isinstance(value, Tensor)

        if single and isinstance(module, BN_TYPES):
            if any(d != 1 for d in _varying(first)):
                block(first, f"BatchNorm {node.target!r} reads them along a dimension that is not its channels")
                continue
            line = _line(first, 1, module.num_features)
            roles.append(Role(str(node.target), "bn", line))
            src = ins[0]
            if src.op == "call_module" and isinstance(modules.get(src.target), SOURCE_TYPES):
                bn_after[str(src.target)] = (str(node.target), line)
            ids[node] = first
            node.meta["sk_kind"] = "bn"
        elif single and (isinstance(module, _LN_TYPES) or (node.op == "call_function" and node.target in
                                                          (F.layer_norm, F.group_norm))):
            if isinstance(module, nn.GroupNorm) or node.target is F.group_norm:
                normed = list(range(1, value.dim()))
            else:
                shape = module.normalized_shape if module is not None else node.args[1]
                normed = list(range(value.dim() - len(shape), value.dim()))
            over = set(_varying(first)) & set(normed)
            owner = _norm_owner(node, module)
            if over and allow_inexact and len(normed) == 1 and owner is not None:
                roles.append(Role(owner, "ln", _line(first, normed[0], value.shape[normed[0]])))
                inexact.append(owner)
            elif over:
                block(first, f"{_describe(node)} normalizes over them: removing a channel changes the mean "
                      "and variance of the others, so the pruned model would compute a different function "
                      "(allow_inexact=True prunes them anyway)")
            ids[node] = first
            node.meta["sk_kind"] = "opaque"
        elif single and (isinstance(module, _ELEMENTWISE_MODULES) or value is ins[0].meta.get("value")
                         or (node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS)
                         or (node.op == "call_method" and node.target in _ELEMENTWISE_METHODS)
                         or (node.op == "call_function" and node.target in _BINARY_FUNCTIONS | _SCALAR_OPS)
                         or (node.op == "call_method" and node.target in _BINARY_METHODS)) \
                and value.shape == ins[0].meta["value"].shape and _scalars_only(node, ins[0]):
            ids[node] = first
            node.meta["sk_kind"] = "pass"
        elif single and is_pool(node, module):
            if any(d > 1 for d in _varying(first)) or value.dim() != first.dim():
                block(first, f"{_describe(node)} pools along their channel dimension")
                continue
            ids[node] = first
            node.meta["sk_kind"] = "pool"
        elif single and ((node.op == "call_method" and node.target in _REDUCE_METHODS)
                         or (node.op == "call_function" and node.target in _REDUCE_FUNCTIONS)):
            red = _reduced_dims(node, first.dim())
            if red is None or set(red[0]) & set(_varying(first)):
                block(first, f"{_describe(node)} reduces over their channel dimension")
                continue
            dims, keep = red
            out = first
            if not keep:
                out = first.reshape([s for d, s in enumerate(first.shape) if d not in dims])
            ids[node] = out
            node.meta["sk_kind"] = "mean" if node.target in ("mean", torch.mean, "amax", torch.amax, "amin",
                                                             torch.amin) else "opaque"
        elif (isinstance(module, _MOVE_MODULES) or (node.op == "call_function" and node.target in _MOVE_FUNCTIONS)
              or (node.op == "call_method" and node.target in _MOVE_METHODS)):
            replace = {a: full(a) for a in node.all_input_nodes
                       if _flat_ids(a.meta.get("value"))}
            try:
                out = run_node(node, modules, replace)
            except (RuntimeError, TypeError, IndexError) as err:
                block([ids[a] for a in ins], f"{_describe(node)} could not be followed ({err})")
                continue
            ids[node] = _reduce(out) if isinstance(out, Tensor) else type(out)(
                _reduce(t) if isinstance(t, Tensor) else t for t in out)
            node.meta["sk_kind"] = "move"
            if isinstance(first, Tensor):
                why = _tie_layout(node, first, ids[node], atoms.union)
                if why is not None:
                    block([ids[a] for a in ins], why)
        elif ((node.op == "call_function" and node.target in _BINARY_FUNCTIONS)
              or (node.op == "call_method" and node.target in _BINARY_METHODS)) and isinstance(value, Tensor):
            operands = [a for a in node.args if isinstance(a, fx.Node) and isinstance(a.meta.get("value"), Tensor)]
            carried = [a for a in operands if a in ids and isinstance(ids[a], Tensor)]
            tshape = [1] * value.dim()
            aligned = []
            for a in carried:
                t = ids[a]
                t = t.view([1] * (value.dim() - t.dim()) + list(t.shape))
                aligned.append(t)
                tshape = [max(s, u) for s, u in zip(tshape, t.shape, strict=True)]
            aligned = [t.expand(tshape) for t in aligned]
            vary = {d for d, s in enumerate(tshape) if s > 1}
            bad = None
            for a in operands:
                if a in ids:
                    continue
                shape = list(a.meta["value"].shape)
                shape = [1] * (value.dim() - len(shape)) + shape
                if any(shape[d] > 1 for d in vary):
                    param = _channel_param(model, a, shape, tshape, vary, value.dim())
                    if param is None:
                        bad = a
                    else:  # a per-channel parameter (ConvNeXt's layer_scale): pruned with the channels
                        owner, attr, dim, d = param
                        line = _line(torch.stack(aligned).amax(0), d, tshape[d])
                        roles.append(Role(owner, "param", line, attr=attr, dim=dim))
            if bad is not None:
                block([ids[a] for a in carried], f"{_describe(node)} combines them with {_describe(bad)}, "
                      "which is not pruned along them")  # still followed: what they are tied to is blocked too
            out = aligned[0].clone()
            for t in aligned[1:]:
                both = (out >= 0) & (t >= 0)
                width = len(atom_source) + 1
                for key in (out[both] * width + t[both]).unique().tolist():
                    i, j = divmod(key, width)
                    if i != j:
                        atoms.union(i, j)
                lone = (out >= 0) ^ (t >= 0)
                if bool(lone.any()):
                    block(torch.where(lone, torch.maximum(out, t), -1), f"{_describe(node)} combines some of "
                          "them with channels that cannot be pruned")
                out = torch.where(out >= 0, out, t)
            ids[node] = _reduce(out.contiguous())
            node.meta["sk_kind"] = "binary"
        else:
            block([ids[a] for a in ins], f"its channels reach {_describe(node)}, which sparsekit.structured "
                  "cannot shrink")
            continue

    # Units (atoms tied position by position), then groups (units linked through their sources).
    n = len(atom_source)
    roots = [atoms.find(a) for a in range(n)]
    src_uf = _UnionFind()
    src_ids: dict[str, int] = {}
    for name in atom_source:
        if name not in src_ids:
            src_ids[name] = src_uf.add()
    src_of = [src_ids[name] for name in atom_source]
    for a, r in enumerate(roots):
        if r != a and src_of[r] != src_of[a]:
            src_uf.union(src_of[r], src_of[a])
    gkey = [src_uf.find(i) for i in src_of]
    order: dict[int, int] = {}
    for k in gkey:
        order.setdefault(k, len(order))
    group_list = [order[k] for k in gkey]
    group_of_atom = torch.tensor(group_list, dtype=torch.long)
    root_t = torch.tensor(roots, dtype=torch.long)
    # unit index within its group: rank of the unit's root (its smallest atom) among the group's roots
    unit_of_atom = torch.zeros(n, dtype=torch.long)
    groups = [ChannelGroup(channels=0) for _ in order]
    by_group = torch.argsort(group_of_atom, stable=True)
    bounds = torch.bincount(group_of_atom, minlength=len(groups)).tolist()
    start = 0
    for gi, count in enumerate(bounds):
        members_ = by_group[start:start + count]
        start += count
        uniq, inverse = torch.unique(root_t[members_], return_inverse=True)
        unit_of_atom[members_] = inverse
        g = groups[gi]
        g.atoms, g.atom_unit, g.channels = members_, inverse, len(uniq)
    blocked_first = {}
    for a in sorted(blocked):
        blocked_first.setdefault(group_list[a], blocked[a])
    seen_src: set[str] = set()
    for a, name in enumerate(atom_source):
        if name not in seen_src:
            seen_src.add(name)
            groups[group_list[a]].sources.append(name)
    for gi, reason in blocked_first.items():
        groups[gi].blocked = reason

    def groups_of(t: Tensor) -> list[int]:
        return torch.bincount(group_of_atom[t[t >= 0]], minlength=len(groups)).nonzero().flatten().tolist()

    for r in roles:
        for gi in groups_of(r.atoms):
            g = groups[gi]
            if r.kind == "bn" and r.module not in g.norms:
                g.norms.append(r.module)
            elif r.kind in ("in", "gin"):
                mine = (group_of_atom[r.atoms.clamp_min(0)] == gi) & (r.atoms >= 0)
                count = int(mine.sum())
                distinct = len(r.atoms[mine].unique())
                g.consumers.append(Consumer(r.module, max(count // max(distinct, 1), 1),
                                            r.node.name if r.node is not None else ""))
            elif r.kind == "dw" and r.module not in g.members:
                g.members.append(r.module)
    for src, (bn, line) in bn_after.items():
        for gi in groups_of(line):
            groups[gi].bn_of[src] = bn
    # Grouped convolutions: each block of positions must lose the same number of units.
    for name, pos, nblocks in constraints:
        for gi in groups_of(pos):
            g = groups[gi]
            if bool((pos < 0).any()) or len(pos) % nblocks:
                g.blocked = g.blocked or f"grouped convolution {name!r} reads channels that cannot be pruned"
                continue
            units = [sorted(set(unit_of_atom[blk].tolist())) for blk in pos.view(nblocks, -1)]
            covered = sorted(u for b in units for u in b)
            if covered != list(range(g.channels)) or len({len(b) for b in units}) != 1:
                g.blocked = g.blocked or (f"grouped convolution {name!r} (groups={nblocks}) does not split "
                                          "the group's channels into equal blocks")
            elif g.blocks is not None and g.blocks != units:
                g.blocked = g.blocked or f"two grouped convolutions split the channels of {name!r} differently"
            else:
                g.blocks = units
    for node, x in ids.items():
        for t in _flat_ids(x):
            for gi in groups_of(t):
                groups[gi].nodes.append(node)
    for node, x in ids.items():
        if isinstance(x, Tensor):
            v = _varying(x)
            node.meta["channel_dim"] = v[0] if len(v) == 1 else 1
    return Dependencies(groups, roles, atom_source, torch.tensor(atom_index, dtype=torch.long),
                        group_of_atom, unit_of_atom, ids, graph, inexact)


def _norm_owner(node: fx.Node, module: nn.Module | None) -> str | None:
    """The LayerNorm module whose weight and bias ``node`` uses (a module call, or ``F.layer_norm``
    on a module's ``get_attr`` tensors, as in torchvision's ``LayerNorm2d``)."""
    if isinstance(module, nn.LayerNorm):
        return str(node.target)
    if module is None and node.target is F.layer_norm:
        w = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")
        if isinstance(w, fx.Node) and w.op == "get_attr" and str(w.target).endswith(".weight"):
            return str(w.target).rsplit(".", 1)[0]
    return None


def _channel_param(model: nn.Module, node: fx.Node, shape: list[int], tshape: list[int], vary: set[int],
                   ndim: int) -> tuple[str, str, int, int] | None:
    """``(module, attribute, its dim, channel dim)`` when ``node`` is a module's parameter that is
    per-channel along the single varying dim (ConvNeXt's ``layer_scale``), else None."""
    if node.op != "get_attr" or len(vary) != 1:
        return None
    (d,) = vary
    if shape[d] != tshape[d] or any(s > 1 for i, s in enumerate(shape) if i != d):
        return None
    owner, _, attr = str(node.target).rpartition(".")
    try:
        module = model.get_submodule(owner) if owner else model
    except AttributeError:
        return None
    if not isinstance(getattr(module, attr, None), Tensor):
        return None
    own_dim = d - (ndim - node.meta["value"].dim())
    return (owner, attr, own_dim, d) if own_dim >= 0 else None


def _size_args(node: fx.Node) -> list[Any] | None:
    """The target sizes of a view/reshape, one per output dim (None for other ops)."""
    if node.op == "call_method" and node.target in ("view", "reshape"):
        sizes = list(node.args[1:])
    elif node.op == "call_function" and node.target is torch.reshape:
        sizes = list(node.args[1:2])
    else:
        return None
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    return sizes


def _tie_layout(node: fx.Node, before: Tensor, after: Any, union: Any) -> str | None:
    """Ties that keep a reshape, chunk or index of the channels valid once channels are gone; or why it cannot be.

    After pruning, the op runs on fewer channels with the sizes it computes at run time:
    * a view that splits the channels into a grid (a channel shuffle's ``view(b, g, c // g, ...)``)
      must lose the same cells of every row: cells are tied along every grid dim except the one
      whose size is computed at run time (``c // g`` or ``-1``);
    * ``chunk(n)`` along the channels must lose the same positions in every chunk (tied);
    * a view with a constant channel count, a split with constant sizes, and an index that keeps
      some channels by constant position cannot follow the pruning: blocked.
    """
    vary_in = _varying(before)
    if not vary_in:
        return None
    if isinstance(after, Tensor):
        vary_out = _varying(after)
        sizes = _size_args(node)
        if sizes is not None:
            if len(sizes) != after.dim():
                return f"{_describe(node)} reshapes them in a way sparsekit cannot follow"
            dyn = [d for d in vary_out if isinstance(sizes[d], fx.Node) or sizes[d] == -1]
            if len(dyn) != 1:
                return f"{_describe(node)} reshapes them to a constant channel count"
            if len(vary_out) > 1:
                grid = after.movedim(dyn[0], -1)
                grid = grid[tuple(slice(None) if grid.shape[d] > 1 or d == grid.dim() - 1 else 0
                                  for d in range(grid.dim()))]
                cols = grid.reshape(-1, grid.shape[-1])
                for k in range(cols.shape[1]):
                    col = cols[:, k][cols[:, k] >= 0].tolist()
                    for a in col[1:]:
                        union(col[0], a)
            return None
        kept_in = set(before[before >= 0].unique().tolist())
        kept_out = set(after[after >= 0].unique().tolist())
        if not kept_in <= kept_out and not (node.op == "call_function" and node.target is operator.getitem
                                        and not isinstance(node.args[0].meta.get("value"), Tensor)):
            return f"{_describe(node)} keeps some of them by constant position"
        return None
    # tuple outputs: chunk / split / unbind along the channels
    if node.target in ("chunk", torch.chunk):
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        dim = dim % before.dim()
        if dim not in vary_in:
            return None
        n = before.shape[dim]
        chunks = len(after)
        if n % chunks:
            return f"{_describe(node)} splits {n} channels into {chunks} unequal chunks"
        line = _line(before, dim, n).view(chunks, -1)
        for k in range(line.shape[1]):
            col = line[:, k][line[:, k] >= 0].tolist()
            for a in col[1:]:
                union(col[0], a)
        return None
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 and node.target != "unbind" else 0)
    if node.target in ("unbind", torch.unbind):
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    if isinstance(dim, int) and dim % before.dim() not in vary_in:
        return None
    return f"{_describe(node)} splits them at constant positions"


def _scalars_only(node: fx.Node, inp: fx.Node) -> bool:
    """True when every other tensor argument of ``node`` is a Python scalar (or absent)."""
    for a in list(node.args) + list(node.kwargs.values()):
        if a is inp:
            continue
        if isinstance(a, fx.Node) and isinstance(a.meta.get("value"), Tensor) and a.meta["value"].numel() > 1:
            return False
    return True


def channel_groups(model: nn.Module, example_input: Tensor | tuple[Tensor, ...],
                   graph: fx.Graph | None = None, *, allow_inexact: bool = False) -> list[ChannelGroup]:
    """The channel groups of ``model`` (tied Conv/Linear outputs), in source order.

    Each Conv/Linear output starts a group; residual additions, per-channel gates
    (squeeze-and-excitation), depthwise convolutions, concatenations, splits and channel
    shuffles are followed channel by channel (:func:`dependencies`). A group is *blocked*
    (with the reason) when its channels reach the model output or an operation this
    analysis does not model.
    """
    return dependencies(model, example_input, graph, allow_inexact=allow_inexact).groups


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
