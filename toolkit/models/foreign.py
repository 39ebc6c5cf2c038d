"""Models from torchvision and timm, wrapped to the toolkit's contract: RGB in [0, 1] in, logits out.

``torchvision:<builder>`` and ``timm:<name>`` build the library's network as ``net`` inside an :class:`ImageClassifier`
whose ``normalize`` applies the library's mean/std, so exporter, IG baseline and distillation see the same interface
as for the built-in models. torchvision and timm are imported only here, and only when such a name is used.

Structure is read on the ``meta`` device (no memory, no arithmetic): feature-block counts and channels, the stages
of a timm network, the default attention-transfer layers.
"""

from __future__ import annotations

import difflib
import functools
import re

import torch
from torch import nn

from toolkit import ToolkitError
from toolkit.models.normalize import InputNormalize
from toolkit.models.resnet_cifar import IMAGENET_MEAN, IMAGENET_STD

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
TORCHVISION_RESNET = re.compile(r"(resnet|resnext|wide_resnet)\d")
TORCHVISION_RESNET_AT_LAYERS = ("layer2", "layer3", "layer4")
NHWC_FEATURES = ("swin",)
"""torchvision builders whose ``features`` blocks return channels-last (N, H, W, C) tensors: not truncatable."""


class ImageClassifier(nn.Module):
    """A library network behind its input normalisation: (N, 3, H, W) RGB in [0, 1] -> logits (N, num_classes)."""

    def __init__(self, net: nn.Module, mean: tuple[float, float, float], std: tuple[float, float, float]):
        super().__init__()
        self.normalize = InputNormalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


class TruncatedNet(nn.Module):
    """The first blocks of a network (``features``), then global average pooling and a fresh ``Linear`` head."""

    def __init__(self, features: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if isinstance(f, (list, tuple)):  # a timm feature extractor returns its one requested stage in a list
            f = f[-1]
        return self.classifier(torch.flatten(self.pool(f), 1))


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    return f"; close names: {', '.join(close)}" if close else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


# --- torchvision -----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def torchvision_builders() -> tuple[str, ...]:
    """The classification builders of ``torchvision.models`` (not detection, segmentation, video, ...)."""
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))


def check_torchvision(builder: str) -> None:
    if builder not in torchvision_builders():
        raise ToolkitError(f"unknown torchvision classification model '{builder}'"
                           f"{_suggest(builder, list(torchvision_builders()))} (python -c \"import torchvision; "
                           "print(torchvision.models.list_models(module=torchvision.models))\" lists them)")


def _torchvision_net(builder: str, num_classes: int, pretrained: bool) -> nn.Module:
    import torchvision.models as tvm

    check_torchvision(builder)
    if not pretrained:
        extra = {"aux_logits": False, "init_weights": True} if builder in ("googlenet", "inception_v3") else {}
        return tvm.get_model(builder, weights=None, num_classes=num_classes, **extra)
    try:
        net = tvm.get_model(builder, weights="DEFAULT")
    except Exception as exc:  # noqa: BLE001 - download or cache failures become one line
        raise ToolkitError(f"cannot get torchvision's pretrained weights for '{builder}' (they are downloaded: needs "
                           f"internet or the torch hub cache): {_first_line(exc)}") from None
    replace_classifier(net, num_classes)
    return net


def build_torchvision(builder: str, num_classes: int = 10, pretrained: bool = False) -> ImageClassifier:
    """``torchvision.models.<builder>`` for ``num_classes``; ``pretrained``: ImageNet weights and a fresh head."""
    return ImageClassifier(_torchvision_net(builder, num_classes, pretrained), IMAGENET_MEAN, IMAGENET_STD)


def torchvision_default_at_layers(builder: str) -> tuple[str, ...]:
    """ResNets: the outputs of their last three stages; ``features`` networks: the middle block; else none."""
    if TORCHVISION_RESNET.match(builder):
        return TORCHVISION_RESNET_AT_LAYERS
    blocks = feature_blocks(TORCHVISION_PREFIX + builder)
    return (blocks[len(blocks) // 2][0],) if blocks else ()


# --- timm ------------------------------------------------------------------------------------------------------------

def check_timm(name: str) -> None:
    import timm

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return
    if not timm.is_model(name):
        arch = name.split(".")[0]
        raise ToolkitError(f"unknown timm model '{name}'{_suggest(arch, timm.list_models())} "
                           "(python -c \"import timm; print(timm.list_models('*pattern*'))\" lists them)")


def _timm_create(name: str, pretrained: bool, **kwargs) -> nn.Module:
    import timm

    check_timm(name)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # noqa: BLE001 - download failures, bad tags, unsupported options
        what = "get timm's pretrained weights for" if pretrained else "build timm model"
        raise ToolkitError(f"cannot {what} '{name}': {_first_line(exc)}") from None


def timm_mean_std(net: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation of a timm network's pretrained config (ImageNet's when it names none)."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
    if len(mean) != 3 or len(std) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def build_timm(name: str, num_classes: int = 10, pretrained: bool = False) -> ImageClassifier:
    """``timm.create_model(name, pretrained=pretrained, num_classes=num_classes)`` behind its own normalisation."""
    net = _timm_create(name, pretrained, num_classes=num_classes)
    return ImageClassifier(net, *timm_mean_std(net))


@functools.lru_cache(maxsize=64)
def _timm_stages(name: str) -> tuple[tuple[str, int], ...]:
    """(module path, channels) of each stage timm reports (``feature_info``) when all give (N, C, H, W) maps."""
    check_timm(name)  # imports timm outside the meta context: module-level tensors must stay real
    with torch.device("meta"):
        try:
            net = _timm_create(name, False)
            info = list(getattr(net, "feature_info", None) or [])
            if not info:
                return ()
            modules = dict(net.named_modules())
            outputs: dict[str, torch.Tensor] = {}
            handles = [modules[i["module"]].register_forward_hook(
                (lambda n: lambda _m, _i, out: outputs.__setitem__(n, out))(i["module"]))
                for i in info if i.get("module") in modules]
            size = tuple((getattr(net, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224))
            with torch.no_grad():
                net.eval()(torch.zeros(1, *size))
            for h in handles:
                h.remove()
        except Exception:  # noqa: BLE001 - a model that cannot be traced on meta simply has no known stages
            return ()
    stages = []
    for i in info:
        out = outputs.get(i.get("module"))
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[1] != i["num_chs"]:
            return ()
        stages.append((i["module"], int(i["num_chs"])))
    return tuple(stages)


def timm_default_at_layers(name: str) -> tuple[str, ...]:
    """The outputs of the last three stages in timm's ``feature_info`` (CNNs); none for other networks."""
    return tuple(path for path, _ in _timm_stages(name)[-3:])


# --- truncation support: the block sequence of a foreign network ----------------------------------------------------

@functools.lru_cache(maxsize=64)
def feature_blocks(name: str) -> tuple[tuple[str, int], ...]:
    """(module path in the bare network, output channels) of each block a truncation may remove, or () if none.

    torchvision: the children of ``features`` (an ``nn.Sequential`` giving (N, C, H, W) maps); timm: the stages of
    ``feature_info`` when timm can build a pruned ``features_only`` extractor of them (``feature_cls="getter"``).
    """
    if name.startswith(TORCHVISION_PREFIX):
        builder = name[len(TORCHVISION_PREFIX):]
        check_torchvision(builder)  # imports torchvision outside the meta context: module-level tensors stay real
        if builder.startswith(NHWC_FEATURES):
            return ()
        with torch.device("meta"):
            try:
                net = _torchvision_net(builder, 10, False)
            except Exception:  # noqa: BLE001 - builders that compute with tensor values (regnet) have no `features`
                return ()
            features = getattr(net, "features", None)
            if not isinstance(features, nn.Sequential) or len(features) < 2:
                return ()
            x, blocks = torch.zeros(1, 3, 224, 224), []
            try:
                with torch.no_grad():
                    for i, block in enumerate(features.eval()):
                        x = block(x)
                        if x.dim() != 4:
                            return ()
                        blocks.append((f"features.{i}", int(x.shape[1])))
            except Exception:  # noqa: BLE001 - blocks that cannot run on shapes alone are not truncated
                return ()
        return tuple(blocks)
    if name.startswith(TIMM_PREFIX):
        stages = _timm_stages(name[len(TIMM_PREFIX):])
        if len(stages) < 2:
            return ()
        try:
            with torch.device("meta"):
                _timm_create(name[len(TIMM_PREFIX):], False, features_only=True, out_indices=(0,), feature_cls="getter")
        except ToolkitError:
            return ()
        return stages
    return ()


def build_truncated_foreign(base: str, keep: int, num_classes: int, pretrained: bool) -> ImageClassifier:
    """The first ``keep`` blocks of foreign ``base`` (see :func:`feature_blocks`), then GAP + a fresh Linear."""
    blocks = feature_blocks(base)
    channels = blocks[keep - 1][1]
    if base.startswith(TORCHVISION_PREFIX):
        net = _torchvision_net(base[len(TORCHVISION_PREFIX):], num_classes, pretrained)
        return ImageClassifier(TruncatedNet(net.features[:keep], channels, num_classes), IMAGENET_MEAN, IMAGENET_STD)
    name = base[len(TIMM_PREFIX):]
    # the "getter" extractor prunes the network after the requested stage (the default one of some families keeps all)
    features = _timm_create(name, pretrained, features_only=True, out_indices=(keep - 1,), feature_cls="getter")
    info = getattr(features, "feature_info", None)
    channels = int(info.channels()[-1]) if info is not None else channels
    return ImageClassifier(TruncatedNet(features, channels, num_classes), *timm_mean_std(features))


# --- heads and module paths ------------------------------------------------------------------------------------------

def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel


def classifier_name(model: nn.Module) -> str:
    """Module path (in ``model.state_dict()`` terms) of the final classifier: a ``Linear`` or ``Conv2d``.

    timm networks name it in their pretrained config; otherwise it is the last ``Linear``/``Conv2d`` registered,
    which is the head in the built-in, torchvision and timm classifiers.
    """
    model = _unwrap(model)
    modules = dict(model.named_modules())
    prefix = "net." if isinstance(model, ImageClassifier) else ""
    net = model.net if prefix else model
    hint = (getattr(net, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(hint, (list, tuple)):
        hint = hint[0] if hint else None
    if isinstance(hint, str) and isinstance(modules.get(prefix + hint), (nn.Linear, nn.Conv2d)):
        return prefix + hint
    heads = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not heads:
        raise ToolkitError(f"{type(model).__name__} has no Linear or Conv2d layer to serve as its classifier")
    return heads[-1]


def replace_classifier(model: nn.Module, num_classes: int) -> None:
    """Swap the classifier (:func:`classifier_name`) for a freshly initialised one with ``num_classes`` outputs."""
    path = classifier_name(model)
    old = model.get_submodule(path)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                        bias=old.bias is not None)
    model.set_submodule(path, new.to(old.weight.device))


def find_module(model: nn.Module, path: str) -> str | None:
    """The path under which ``model`` holds module ``path``: as given, else inside a wrapper (``net.``), else inside a
    truncated network's blocks (``net.features.``, ``net.features.model.`` for timm), so base paths fit truncations."""
    modules = dict(_unwrap(model).named_modules())
    for candidate in (path, f"net.{path}", f"net.features.{path}", f"net.features.model.{path}"):
        if candidate in modules:
            return candidate
    return None


def top_level_modules(model: nn.Module) -> list[str]:
    """The children a user writes paths from: those of the wrapped network for an :class:`ImageClassifier`."""
    model = _unwrap(model)
    root = model.net if isinstance(model, ImageClassifier) else model
    return [n for n, _ in root.named_children()]
