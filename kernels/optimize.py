"""optimize(model): an inference graph in which each convolution is one fused foveal launch.

The model is traced with torch.fx. Every convolution absorbs what follows it when nothing else
reads the intermediate: an eval-mode BatchNorm folds into its weight and bias, and a residual
add and an activation fuse into its epilogue (conv -> [bn] -> [+ x] -> [activation]). Then a
depthwise convolution feeding a 1x1 convolution becomes one depthwise-separable launch whose
intermediate never reaches device memory. Convolutions left over (torchvision's DeformConv2d,
say) are swapped by `patch`; the rest of the graph runs as traced. With precision="fp8" the
fused convolutions then run in FP8 where they can (optimize_fp8.py).
"""

from __future__ import annotations

import copy
import functools
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import nn as fnn
from . import optimize_fp8
from .batchnorm import fold_batchnorm
from .epilogue import ActivationArg
from .patch import patch, register_torchvision, replacement_for

FOVEAL_CONVS: dict[tuple[int, bool], type[nn.Module]] = {
    (1, False): fnn.Conv1d, (2, False): fnn.Conv2d, (3, False): fnn.Conv3d,
    (1, True): fnn.ConvTranspose1d, (2, True): fnn.ConvTranspose2d, (3, True): fnn.ConvTranspose3d,
}
# functional convolution -> (spatial dims, transposed, positional parameter names)
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_TRANSPOSE_ARGS = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups",
                        "dilation")
CONV_FUNCTIONS: dict[Any, tuple[int, bool, tuple[str, ...]]] = {
    F.conv1d: (1, False, _CONV_ARGS), F.conv2d: (2, False, _CONV_ARGS),
    F.conv3d: (3, False, _CONV_ARGS), F.conv_transpose1d: (1, True, _CONV_TRANSPOSE_ARGS),
    F.conv_transpose2d: (2, True, _CONV_TRANSPOSE_ARGS),
    F.conv_transpose3d: (3, True, _CONV_TRANSPOSE_ARGS),
}
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

ACTIVATION_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Sigmoid: "sigmoid",
                      nn.Hardswish: "hardswish"}
ACTIVATION_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu",
                        F.relu6: "relu6", F.silu: "silu", torch.sigmoid: "sigmoid",
                        F.sigmoid: "sigmoid", F.hardswish: "hardswish"}
ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid",
                      "sigmoid_": "sigmoid"}
_ADDS = (operator.add, operator.iadd, torch.add)
_IN_PLACE_ADDS = (operator.iadd, "add_")

# Graph nodes that launch no kernel: views, shape queries, eval-mode dropout.
_NO_KERNEL_FUNCTIONS = (operator.getitem, getattr, torch.flatten, torch.reshape)
_NO_KERNEL_METHODS = ("size", "dim", "view", "reshape", "flatten", "unsqueeze", "squeeze",
                      "permute", "transpose", "expand")
_NO_KERNEL_MODULES = (nn.Identity, nn.Flatten, nn.modules.dropout._DropoutNd)


@dataclass
class OptimizeReport:
    """Launch counts before and after (estimated from the graph) and each fusion made."""

    launches_before: int = 0
    launches_after: int = 0
    fused: list[str] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)  # (node or module, why)
    precision: str | None = None  # "fp8" when asked for
    fp8: list[str] = field(default_factory=list)  # convolutions running in FP8, and their scale
    not_fp8: list[tuple[str, str]] = field(default_factory=list)  # (convolution, why not)

    def __str__(self) -> str:
        fp8 = f", {len(self.fp8)} in FP8" if self.precision == "fp8" else ""
        lines = [f"kernel launches: {self.launches_before} -> {self.launches_after} "
                 f"({len(self.fused)} fused convolution(s){fp8})"]
        lines += [f"  fused {line}" for line in self.fused]
        lines += [f"  left  {name}: {why}" for name, why in self.left]
        lines += [f"  fp8   {line}" for line in self.fp8]
        lines += [f"  kept  {name} in the model's dtype: {why}" for name, why in self.not_fp8]
        return "\n".join(lines)


@dataclass
class _Conv:
    """One convolution in the graph, traced as a module call or as a functional call."""

    node: fx.Node
    input: fx.Node
    name: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    transposed: bool
    options: dict[str, Any]  # the torch.nn constructor's stride, padding, ..., padding_mode


class _LeafTracer(fx.Tracer):
    """Keeps convolutions, BatchNorms and foveal's modules whole, so they appear as calls."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        replacement, _ = replacement_for(m)
        return (replacement is not None or isinstance(m, _BATCHNORMS)
                or type(m).__module__ == fnn.__name__
                or super().is_leaf_module(m, module_qualified_name))


def optimize(model: nn.Module, *, depthwise_separable: bool = True, precision: str | None = None,
             calibration: Iterable[Any] | None = None,
             fp8_exclude: Sequence[str] = ("first", "last")) -> fx.GraphModule:
    """A fused inference copy of `model` (an eval-mode nn.Module), sharing no parameters with it.

    The result computes the same function as `model` in eval mode. Its `report` attribute
    (an OptimizeReport) gives the launch count before and after and each fusion. Raises
    ValueError for a model in training mode (BatchNorm folding would change its function) or
    one torch.fx cannot trace (use `patch(model)` then).

    precision="fp8" runs the fused convolutions on FP8 inference kernels (optimize_fp8.py):
    weights quantized per output channel once, here; input scales from the `calibration`
    batches (each the model's input, or a tuple of its inputs, in the model's own dtype and
    device), or per call from each input's amax when there are none. `fp8_exclude` names the
    convolutions kept in the model's dtype: "first", "last" and/or module names
    ("layer1.0.conv1"); () puts every eligible one in FP8. The report says which ran in FP8
    and why the others did not.
    """
    if precision not in (None, "fp8"):
        raise ValueError(f"precision must be None (the model's own) or 'fp8', got {precision!r}")
    if calibration is not None and precision != "fp8":
        raise ValueError("calibration batches are for precision='fp8'")
    if isinstance(fp8_exclude, str):
        raise TypeError(f"fp8_exclude must be a sequence of names, got the string "
                        f"{fp8_exclude!r}; write ({fp8_exclude!r},)")
    if model.training:
        raise ValueError("optimize() is for inference: call model.eval() first (it folds "
                         "BatchNorms with their running statistics)")
    register_torchvision()  # its DeformConv2d stays a leaf for patch() to swap
    model = copy.deepcopy(model).eval()  # share nothing: the result is cast and moved alone
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:  # tracing fails in many ways: dynamic control flow, ...
        raise ValueError(f"optimize() could not trace {type(model).__name__} with torch.fx "
                         f"({type(err).__name__}: {err}); patch(model) swaps its convolutions "
                         "without tracing") from err
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    report = OptimizeReport(launches_before=count_launches(gm), precision=precision)
    modules = dict(gm.named_modules())
    conv_nodes = [node for node in gm.graph.nodes if _is_conv(node, modules)]
    ranges = None
    if precision == "fp8" and calibration is not None:  # on the graph as traced, unfused
        ranges = optimize_fp8.input_ranges(gm, conv_nodes, calibration)
    order = [node.name for node in conv_nodes]
    fused_modules: dict[str, nn.Module] = {}
    origins: dict[str, optimize_fp8.Origin] = {}
    for node in list(gm.graph.nodes):
        conv = _as_conv(node, gm, modules, report)
        if conv is not None:
            _fuse_epilogue(gm, conv, modules, fused_modules, report, origins)
    if depthwise_separable:
        _fuse_depthwise_separable(gm, fused_modules, report, origins)
    if precision == "fp8":
        optimize_fp8.convert(gm, fused_modules, origins, order, ranges, fp8_exclude, report)
    gm.delete_all_unused_submodules()
    for name, why in patch(gm).left:
        report.left.append((name, why))
    gm.graph.lint()
    gm.recompile()
    report.launches_after = count_launches(gm)
    gm.report = report
    return gm.eval()


def count_launches(gm: fx.GraphModule) -> int:
    """Graph nodes that run a kernel (an estimate: views and eval-mode dropout run none)."""
    modules = dict(gm.named_modules())
    count = 0
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = modules[node.target]
            if not isinstance(module, _NO_KERNEL_MODULES):
                count += getattr(module, "launches", 1)  # FP8 modules quantize first
        elif node.op == "call_function":
            count += node.target not in _NO_KERNEL_FUNCTIONS
        elif node.op == "call_method":
            count += node.target not in _NO_KERNEL_METHODS
    return count


def _attribute(gm: fx.GraphModule, target: str) -> Any:
    return functools.reduce(getattr, target.split("."), gm)


def _is_conv(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A convolution call, as traced: a torch.nn (or foveal) conv module or F.conv*d."""
    if node.op == "call_module":
        module = modules[node.target]
        return (replacement_for(module)[0] is not None
                or type(module) in FOVEAL_CONVS.values())
    return node.op == "call_function" and node.target in CONV_FUNCTIONS


def _as_conv(node: fx.Node, gm: fx.GraphModule, modules: dict[str, nn.Module],
             report: OptimizeReport) -> _Conv | None:
    """The convolution `node` runs, if foveal can run it with a fused epilogue."""
    if node.op == "call_module":
        module = modules[node.target]
        replacement, _ = replacement_for(module)
        plain_foveal = type(module) in FOVEAL_CONVS.values() and module.activation is None
        if replacement not in FOVEAL_CONVS.values() and not plain_foveal:
            return None
        if len(node.args) != 1 or node.kwargs:
            return None  # output_size or a residual given: patch() handles it as it is
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        options = {k: getattr(module, k) for k in ("stride", "padding", "dilation", "groups",
                                                   "padding_mode")}
        if transposed:
            options["output_padding"] = module.output_padding
        return _Conv(node, node.args[0], node.target, module.weight, module.bias, transposed,
                     options)
    if node.op != "call_function" or node.target not in CONV_FUNCTIONS:
        return None
    _, transposed, names = CONV_FUNCTIONS[node.target]
    arguments = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    weight, bias = arguments["weight"], arguments.get("bias")
    options = {k: v for k, v in arguments.items() if k not in ("input", "weight", "bias")}
    if (not isinstance(weight, fx.Node) or weight.op != "get_attr"
            or not (bias is None or (isinstance(bias, fx.Node) and bias.op == "get_attr"))
            or any(isinstance(v, fx.Node) for v in options.values())):
        report.left.append((node.name, "its weight, bias or arguments are computed in the "
                                       "graph, not parameters"))
        return None
    return _Conv(node, arguments["input"], weight.target.removesuffix(".weight"),
                 _attribute(gm, weight.target),
                 None if bias is None else _attribute(gm, bias.target), transposed, options)


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _batchnorm_after(node: fx.Node, conv: _Conv, modules: dict[str, nn.Module]) -> nn.Module | None:
    """The eval-mode BatchNorm that alone reads `node`, if it can fold into `conv`."""
    user = _only_user(node)
    if user is None or user.op != "call_module" or len(user.args) != 1:
        return None
    bn = modules[user.target]
    groups = conv.options.get("groups", 1)
    channels = conv.weight.shape[1] * groups if conv.transposed else conv.weight.shape[0]
    if (type(bn) not in _BATCHNORMS or bn.training or bn.running_mean is None
            or bn.num_features != channels
            or (conv.transposed and groups != 1)):
        return None
    return bn


def _residual_after(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(the add, the other operand) when `node` alone feeds an add of two same-role tensors."""
    add = _only_user(node)
    if add is None or add.kwargs or len(add.args) != 2:
        return None
    if not ((add.op == "call_function" and add.target in _ADDS)
            or (add.op == "call_method" and add.target in ("add", "add_"))):
        return None
    first, second = add.args
    other = second if first is node else first
    if (not isinstance(other, fx.Node) or other is node or other.op == "get_attr"
            or (add.target in _IN_PLACE_ADDS and first is not node)):
        return None  # a constant, x + x, or an in-place add into the other operand
    return add, other


def _activation_after(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[fx.Node,
                                                                            ActivationArg] | None:
    """(the node, its activation) when an activation foveal's epilogue has alone reads `node`."""
    user = _only_user(node)
    if user is None or not user.args or user.args[0] is not node:
        return None
    extra = list(user.args[1:]) + list(user.kwargs.values())
    if any(isinstance(value, fx.Node) for value in extra):
        return None
    if user.op == "call_module":
        module = modules[user.target]
        if isinstance(module, nn.LeakyReLU) and type(module) is nn.LeakyReLU:
            return user, ("leaky_relu", module.negative_slope)
        if type(module) is nn.GELU and module.approximate == "none":
            return user, "gelu"
        name = ACTIVATION_MODULES.get(type(module))
    elif user.op == "call_function":
        if user.target is F.leaky_relu:
            slope = user.args[1] if len(user.args) > 1 else user.kwargs.get("negative_slope", 0.01)
            return user, ("leaky_relu", slope)
        if user.target is F.gelu:
            return (user, "gelu") if user.kwargs.get("approximate", "none") == "none" else None
        name = ACTIVATION_FUNCTIONS.get(user.target)
    elif user.op == "call_method":
        name = ACTIVATION_METHODS.get(user.target) if len(user.args) == 1 else None
    else:
        name = None
    return (user, name) if name is not None else None


def _foveal_conv(conv: _Conv, weight: torch.Tensor, bias: torch.Tensor | None,
                 activation: ActivationArg) -> nn.Module:
    """A foveal conv module with `conv`'s geometry holding `weight` and `bias`."""
    groups = conv.options.get("groups", 1)
    channels = (weight.shape[0], weight.shape[1] * groups)
    in_channels, out_channels = channels if conv.transposed else channels[::-1]
    cls = FOVEAL_CONVS[(weight.dim() - 2, conv.transposed)]
    module = cls(in_channels, out_channels, tuple(weight.shape[2:]), bias=bias is not None,
                 device="meta", activation=activation, **conv.options)
    module.weight = _parameter(weight)
    module.bias = None if bias is None else _parameter(bias)
    return module


def _parameter(tensor: torch.Tensor) -> nn.Parameter:
    return tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor,
                                                                         requires_grad=False)


def _fuse_epilogue(gm: fx.GraphModule, conv: _Conv, modules: dict[str, nn.Module],
                   fused_modules: dict[str, nn.Module], report: OptimizeReport,
                   origins: dict[str, optimize_fp8.Origin]) -> None:
    """Replace conv -> [bn] -> [+ residual] -> [activation] with one foveal conv call."""
    chain, parts = [conv.node], [conv.name]
    weight, bias = conv.weight, conv.bias
    bn = _batchnorm_after(conv.node, conv, modules)
    if bn is not None:
        weight, bias = fold_batchnorm(weight, bias, bn, transposed=conv.transposed)
        chain.append(_only_user(conv.node))
        parts.append(chain[-1].target)
    residual = _residual_after(chain[-1])
    if residual is not None:
        chain.append(residual[0])
        parts.append(f"{residual[0].name}({residual[1].name})")
    activation = _activation_after(chain[-1], modules)
    if activation is not None:
        chain.append(activation[0])
        parts.append(str(activation[0].target if activation[0].op != "call_function"
                         else activation[0].name))
    name = f"fused.{conv.node.name}"
    module = _foveal_conv(conv, weight, bias, activation[1] if activation else None)
    gm.add_submodule(name, module)
    fused_modules[name] = module
    origins[name] = optimize_fp8.Origin(conv.name, conv.node.name)
    graph = gm.graph
    last = chain[-1]
    with graph.inserting_before(last):
        kwargs = {"residual": residual[1]} if residual else {}
        new = graph.call_module(name, (conv.input,), kwargs)
    last.replace_all_uses_with(new)
    _erase(graph, chain)
    epilogue = [what for what, present in (("BatchNorm folded", bn), ("residual", residual))
                if present is not None]
    if activation is not None:
        epilogue.append(str(activation[1]))
    report.fused.append(" + ".join(parts) + f" -> foveal {type(module).__name__}"
                        + (f" ({', '.join(epilogue)})" if epilogue else ""))


def _erase(graph: fx.Graph, chain: list[fx.Node]) -> None:
    """Erase a replaced chain, last first, and the get_attr nodes only it read."""
    for node in reversed(chain):
        inputs = node.all_input_nodes
        graph.erase_node(node)
        for source in inputs:
            if source.op == "get_attr" and not source.users:
                graph.erase_node(source)


def _fuse_depthwise_separable(gm: fx.GraphModule, fused_modules: dict[str, nn.Module],
                              report: OptimizeReport,
                              origins: dict[str, optimize_fp8.Origin]) -> None:
    """depthwise kxk -> 1x1 pairs (already fused with their epilogues) -> one launch each."""
    graph = gm.graph
    erased: set[fx.Node] = set()
    for node in list(graph.nodes):
        if node in erased:
            continue
        depthwise = fused_modules.get(node.target) if node.op == "call_module" else None
        pointwise_node = _only_user(node) if depthwise is not None else None
        if pointwise_node is None or pointwise_node.op != "call_module":
            continue
        pointwise = fused_modules.get(pointwise_node.target)
        if (pointwise is None or node.kwargs or pointwise_node.args[0] is not node
                or not _is_depthwise(depthwise) or not _is_pointwise(pointwise, depthwise)):
            continue
        block = fnn.DepthwiseSeparableConv2d(
            depthwise.in_channels, pointwise.out_channels, depthwise.kernel_size,
            depthwise.stride, depthwise.padding, depthwise.dilation, bias=True,
            mid_activation=depthwise.activation, activation=pointwise.activation, device="meta")
        block.dw_weight, block.pw_weight = depthwise.weight, pointwise.weight
        block.dw_bias, block.pw_bias = (_parameter(_bias_or_zeros(m)) for m in (depthwise,
                                                                                 pointwise))
        name = f"fused.{node.name}_{pointwise_node.name}"
        gm.add_submodule(name, block)
        fused_modules[name] = block
        origins[name] = origins[pointwise_node.target]  # the 1x1 is what runs in FP8
        with graph.inserting_before(pointwise_node):
            new = graph.call_module(name, node.args, dict(pointwise_node.kwargs))
        pointwise_node.replace_all_uses_with(new)
        _erase(graph, [node, pointwise_node])
        erased.add(pointwise_node)
        report.fused.append(f"{node.target} + {pointwise_node.target} -> foveal "
                            "DepthwiseSeparableConv2d (one launch)")


def _is_depthwise(module: nn.Module) -> bool:
    return (type(module) is fnn.Conv2d and module.groups == module.in_channels
            == module.out_channels and module.padding_mode == "zeros")


def _is_pointwise(module: nn.Module, depthwise: nn.Module) -> bool:
    return (type(module) is fnn.Conv2d and module.kernel_size == (1, 1)
            and module.stride == (1, 1) and module.groups == 1
            and module.padding in ((0, 0), "valid")
            and module.in_channels == depthwise.out_channels)


def _bias_or_zeros(module: nn.Module) -> torch.Tensor:
    if module.bias is not None:
        return module.bias
    return torch.zeros(module.out_channels, device=module.weight.device,
                       dtype=module.weight.dtype)
