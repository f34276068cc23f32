"""The workloads file: it parses, every workload is valid for its op, the real shapes match
the torchvision layers they name, and bad files fail with messages that say what is wrong."""

from __future__ import annotations

import functools
import textwrap

import pytest
import torch

from foveal.bench.harness import check_workloads
from foveal.bench.ops import ADAPTERS
from foveal.bench.workloads import (
    WorkloadError,
    load_workloads,
    parse_assignments,
    parse_value,
    select,
)

WORKLOADS = load_workloads()


def test_shipped_workloads_are_valid_with_positive_costs():
    check_workloads(WORKLOADS)
    assert len({w.name for w in WORKLOADS}) == len(WORKLOADS)
    for w in WORKLOADS:
        for dtype in w.dtypes:
            for backward in (False, True):
                cost = ADAPTERS[w.op].cost(w, getattr(torch, dtype), backward)
                assert cost.flops > 0 and cost.bytes > 0, (w.name, dtype, backward)


def test_every_op_adapter_has_a_smoke_workload():
    smoke_ops = {w.op for w in WORKLOADS if w.suite == "smoke"}
    assert set(ADAPTERS) <= smoke_ops


def test_full_suite_covers_the_layers_asked_for():
    full = [w for w in WORKLOADS if w.suite == "full"]
    by_tag = lambda tag: [w for w in full if tag in w.tags]
    for tag in ("resnet50", "resnext50"):
        group = by_tag(tag)
        assert group, tag
        assert all(w.batch == 32 and set(w.dtypes) == {"float16", "bfloat16"}
                   and w.layout == "channels_last" for w in group), tag
    assert all(w.args["groups"] == 32 for w in by_tag("resnext50"))
    assert sorted(w.args["dilation"] for w in by_tag("deeplab")) == [6, 12, 18]
    for tag in ("r3d18", "r2plus1d18"):
        group = by_tag(tag)
        assert group and all(w.op == "conv3d" and w.batch == 8 for w in group), tag


def test_full_suite_covers_the_depthwise_family_and_deform():
    full = [w for w in WORKLOADS if w.suite == "full"]
    depthwise = [w for w in full if w.op == "conv2d"
                 and w.args.get("groups", 1) == w.args["in_channels"] > 1]
    kinds = {(w.model, w.args["kernel"], w.args.get("stride", 1)) for w in depthwise}
    assert {("MobileNetV2", 3, 1), ("MobileNetV2", 3, 2), ("EfficientNet-B0", 3, 1),
            ("EfficientNet-B0", 3, 2), ("EfficientNet-B0", 5, 1), ("EfficientNet-B0", 5, 2),
            ("RepLKNet-31B", 31, 1)} <= kinds
    assert all("depthwise" in w.tags for w in depthwise)
    fused = [w for w in full if w.op == "depthwise_separable_conv2d"]
    assert {w.model for w in fused} == {"MobileNetV2", "EfficientNet-B0"}
    assert any(w.args.get("residual") for w in fused)
    assert any(w.args.get("stride", 1) == 2 for w in fused)
    assert [w.op for w in full if "local" in w.tags] == ["local_conv2d"]
    assert [w.op for w in full if "separable" in w.tags] == ["separable_conv2d"]
    dcn = [w for w in full if w.op == "deform_conv2d"]
    assert {w.args["in_channels"] for w in dcn} == {128, 256, 512}
    assert {w.layout for w in dcn} == {"channels_last", "contiguous"}
    for w in dcn:
        assert w.args["mask"] is True and w.args["kernel"] == 3 and w.args["padding"] == 1
        assert set(w.dtypes) == {"float16", "bfloat16", "float32"}


# -- the shapes are real: each workload with a `source` matches that torchvision layer ------
def _model_inputs():
    from torchvision.models import efficientnet_b0, mobilenet_v2, resnet50, resnext50_32x4d
    from torchvision.models.segmentation.deeplabv3 import ASPP
    from torchvision.models.video import r2plus1d_18, r3d_18

    return {
        "mobilenet_v2": (mobilenet_v2, (1, 3, 224, 224)),
        "efficientnet_b0": (efficientnet_b0, (1, 3, 224, 224)),
        "resnet50": (resnet50, (1, 3, 224, 224)),
        "resnext50_32x4d": (resnext50_32x4d, (1, 3, 224, 224)),
        "r3d_18": (r3d_18, (1, 3, 16, 112, 112)),
        "r2plus1d_18": (r2plus1d_18, (1, 3, 16, 112, 112)),
        "aspp": (lambda: ASPP(2048, [6, 12, 18]), (1, 2048, 32, 32)),
    }


@functools.cache
def _model(model_name: str) -> torch.nn.Module:
    build, _ = _model_inputs()[model_name]
    with torch.device("meta"):
        return build().eval()


@functools.cache
def _layers(model_name: str) -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    """Every conv of a torchvision model with the spatial size of its input (meta device), in
    the order the forward pass runs them."""
    model = _model(model_name)
    x = torch.empty(_model_inputs()[model_name][1], device="meta")
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(
        lambda mod, args, out, name=name: sizes.__setitem__(name, tuple(args[0].shape[2:])))
        for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    modules = dict(model.named_modules())
    return {name: (modules[name], size) for name, size in sizes.items()}


def _as_tuple(value, n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def _check_conv(workload, conv: torch.nn.Module, input_size: tuple[int, ...]) -> None:
    """The workload's convolution arguments are those of the torchvision conv layer."""
    a, n = workload.args, len(conv.kernel_size)
    assert _as_tuple(a["kernel"], n) == conv.kernel_size
    assert _as_tuple(a.get("stride", 1), n) == conv.stride
    assert _as_tuple(a.get("padding", 0), n) == conv.padding
    assert _as_tuple(a.get("dilation", 1), n) == conv.dilation
    assert tuple(a["size"]) == input_size


_ACTIVATIONS = {torch.nn.ReLU6: "relu6", torch.nn.SiLU: "silu"}


def _check_fused_block(workload, model_name: str, path: str) -> None:
    """A depthwise_separable_conv2d workload names an inverted-residual block: its depthwise
    conv, that conv's activation, the 1x1 projection's channels and the residual match."""
    model = _model(model_name)
    block = model.get_submodule(path)
    convs = {name: v for name, v in _layers(model_name).items() if name.startswith(path + ".")}
    depthwise = [(name, conv, size) for name, (conv, size) in convs.items()
                 if conv.groups == conv.in_channels > 1]
    assert len(depthwise) == 1, f"{path} has no single depthwise conv"
    [(dw_name, dw, size)] = depthwise
    projection, _ = list(convs.values())[-1]  # the block's last conv
    a = workload.args
    assert a["in_channels"] == dw.in_channels
    _check_conv(workload, dw, size)
    activation = model.get_submodule(dw_name.rsplit(".", 1)[0])[-1]  # conv, BatchNorm, act
    assert a.get("mid_activation") == _ACTIVATIONS[type(activation)]
    assert projection.kernel_size == (1, 1) and projection.in_channels == dw.out_channels
    assert a["out_channels"] == projection.out_channels
    assert a.get("activation") is None  # the projection is linear
    assert a.get("residual", False) == block.use_res_connect


@pytest.mark.parametrize("workload", [w for w in WORKLOADS if w.source], ids=lambda w: w.name)
def test_workload_matches_its_torchvision_layer(workload):
    model_name, path = workload.source.split(":")
    if workload.op in ("depthwise_separable_conv2d", "depthwise_separable_conv2d_fp8"):
        _check_fused_block(workload, model_name, path)
        return
    layers = _layers(model_name)
    assert path in layers, f"{model_name} has no conv layer {path!r}"
    conv, input_size = layers[path]
    a, n = workload.args, len(conv.kernel_size)
    assert workload.op in (f"conv{n}d", f"conv{n}d_fp8")
    assert (a["in_channels"], a["out_channels"]) == (conv.in_channels, conv.out_channels)
    assert a.get("groups", 1) == conv.groups
    _check_conv(workload, conv, input_size)


# -- bad files and bad selections --------------------------------------------------------------
GOOD = """
[[workload]]
name = "a"
op = "conv2d"
batch = 2
in_channels = 4
out_channels = 4
size = [8, 8]
kernel = 3
"""


def _load(tmp_path, text):
    path = tmp_path / "w.toml"
    path.write_text(textwrap.dedent(text))
    return load_workloads(path)


def test_minimal_file_gets_defaults(tmp_path):
    [w] = _load(tmp_path, GOOD)
    assert (w.suite, w.layout, w.dtypes) == ("full", "contiguous", ("float32",))
    check_workloads([w])


@pytest.mark.parametrize("text, message", [
    ('[[workload]]\nop = "conv2d"\nbatch = 1\n', "missing required field 'name'"),
    (GOOD + GOOD, "workload name 'a' appears twice"),
    (GOOD + 'dtypes = ["float8"]\n', "dtype 'float8' is not one of"),
    (GOOD + 'layout = "nhwc"\n', "layout must be one of"),
    (GOOD.replace("batch = 2", "batch = 0"), "batch must be a positive integer"),
    (GOOD + 'suite = "nightly"\n', "suite must be one of"),
    ("[extras]\nx = 1\n" + GOOD, "unknown top-level table"),
    ("[defaults]\nkernel = 3\n" + GOOD, "[defaults] may only set"),
    (GOOD + "size = [", "is not valid TOML"),
    (GOOD + "tags = 3\n", "tags must be a string or a list of strings"),
])
def test_bad_file_is_refused_with_a_clear_message(tmp_path, text, message):
    with pytest.raises(WorkloadError) as err:
        _load(tmp_path, text)
    assert message in str(err.value)


@pytest.mark.parametrize("change, message", [
    (('op = "conv2d"', 'op = "conv9d"'), "no benchmark adapter for op 'conv9d'"),
    (("kernel = 3", "kernal = 3"), "unknown argument(s) ['kernal']"),
    (("kernel = 3\n", ""), "missing argument(s) ['kernel']"),
    (("out_channels = 4", "out_channels = 4\ngroups = 3"), "input channels (4) must be divisible "
                                                           "by groups (3)"),
    (("kernel = 3", "kernel = 9"), "kernel larger than the padded input"),
    (("size = [8, 8]", "size = [8, 8, 8]"), "size must be an int or a sequence of 2 ints"),
    (("kernel = 3", 'kernel = 3\nactivation = "tanh"'), "activation must be None or one of"),
    (("kernel = 3", 'kernel = 3\nbias = "yes"'), "bias must be true or false"),
    (("kernel = 3", "kernel = 3\nstride = 0"), "stride must be positive"),
    (("in_channels = 4", "in_channels = 0"), "in_channels must be a positive integer"),
])
def test_bad_op_arguments_are_refused_naming_workload_and_argument(tmp_path, change, message):
    [w] = _load(tmp_path, GOOD.replace(*change))
    with pytest.raises(WorkloadError) as err:
        check_workloads([w])
    assert message in str(err.value)
    assert "workload 'a'" in str(err.value)


@pytest.mark.parametrize("op, extra, message", [
    ("local_conv2d", "weight_size = [8, 8]", "weight_size [8, 8] (the weight's H_out, W_out) "
                                             "must equal the output size (6, 6)"),
    ("local_conv2d", 'padding = "same"', "padding must be an int or a sequence of 2 ints"),
    ("deform_conv2d", "offset_groups = 3", "input channels (4) must be divisible by the offset "
                                           "groups (3"),
    ("deform_conv2d", "offset_groups = 0", "offset_groups must be a positive integer"),
    ("deform_conv2d", 'mask = "yes"', "mask must be true or false"),
    ("deform_conv2d", "groups = 3", "input channels (4) must be divisible by groups (3)"),
    ("depthwise_separable_conv2d", "groups = 4", "unknown argument(s) ['groups']"),
    ("depthwise_separable_conv2d", 'mid_activation = "tanh"',
     "mid_activation: activation must be None or one of"),
    ("depthwise_separable_conv2d", "stride = 0", "stride must be positive"),
    ("separable_conv2d", "dilation = 5", "kernel larger than the padded input"),
])
def test_bad_arguments_of_the_other_ops_are_refused(tmp_path, op, extra, message):
    text = GOOD.replace('op = "conv2d"', f'op = "{op}"')
    check_workloads(_load(tmp_path, text))  # valid without `extra`
    [w] = _load(tmp_path, text + extra + "\n")
    with pytest.raises(WorkloadError) as err:
        check_workloads([w])
    assert message in str(err.value)
    assert f"workload 'a' ({op})" in str(err.value)


def test_channels_last_needs_2d_or_3d(tmp_path):
    text = GOOD.replace('op = "conv2d"', 'op = "conv1d"').replace("[8, 8]", "[8]")
    [w] = _load(tmp_path, text + 'layout = "channels_last"\n')
    with pytest.raises(WorkloadError, match="channels_last needs a 2-D or 3-D convolution"):
        check_workloads([w])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(WorkloadError, match="does not exist"):
        load_workloads(tmp_path / "nope.toml")


def test_select_by_pattern_op_tag_and_suite():
    names = [w.name for w in select(WORKLOADS, names=["resnext50.layer2.*"])]
    assert names == ["resnext50.layer2.0.conv2", "resnext50.layer2.1.conv2"]
    assert {w.op for w in select(WORKLOADS, suite="full", ops=["conv3d"])} == {"conv3d"}
    assert all("video" in w.tags for w in select(WORKLOADS, suite="full", tags=["video"]))
    assert {w.suite for w in select(WORKLOADS, suite="smoke")} == {"smoke"}
    with pytest.raises(WorkloadError, match=r"no workload matches 'resnet5\.conv1'"):
        select(WORKLOADS, names=["resnet5.conv1"])


def test_command_line_values_read_like_toml():
    assert parse_value("56x56") == [56, 56]
    assert parse_value("3") == 3
    assert parse_value("true") is True
    assert parse_value("relu") == "relu"
    assert parse_assignments(["size=7x9", "padding=same"]) == {"size": [7, 9], "padding": "same"}
    with pytest.raises(WorkloadError, match="expected key=value"):
        parse_assignments(["kernel"])


def test_workloads_pickle_for_worker_processes():
    import pickle

    for workload in WORKLOADS[:3]:
        again = pickle.loads(pickle.dumps(workload))
        assert again == workload and dict(again.args) == dict(workload.args)
