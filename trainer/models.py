"""The paper's models. Inputs are images in [0, 1] with no normalisation layer, so eps is in pixel units.

Every model exposes `first_conv`, the layer whose filters the dashboard shows: catastrophic overfitting in
the single-layer CNN is visible there as filters turning into high-frequency noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import FIRST_CONV

MODELS = ("cnn", "lenet", "preact_resnet18")


class CNN(nn.Module):
    """n_layers × (3×3 conv, ReLU) keeping the image size, then one linear layer (the paper's toy CNN)."""

    def __init__(self, in_channels: int, image_size: int, n_classes: int, n_layers: int, n_filters: int):
        super().__init__()
        layers: list[nn.Module] = []
        kernel = FIRST_CONV["cnn"][1]  # every layer's
        for i in range(n_layers):
            conv = nn.Conv2d(in_channels if i == 0 else n_filters, n_filters, kernel, padding=kernel // 2)
            layers += [conv, nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(n_filters * image_size**2, n_classes)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.features[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x).flatten(1))


class LeNet(nn.Module):
    """The MNIST model of Madry et al.: two 5×5 conv + max-pool stages, then a 1024-unit hidden layer."""

    def __init__(self, in_channels: int, image_size: int, n_classes: int):
        super().__init__()
        filters, kernel = FIRST_CONV["lenet"]
        self.conv1 = nn.Conv2d(in_channels, filters, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(filters, 64, 5, padding=2)
        side = image_size // 2 // 2  # each 2×2 max-pool floors the size
        self.fc1 = nn.Linear(64 * side * side, 1024)
        self.fc2 = nn.Linear(1024, n_classes)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.conv1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016), as in Wong et al.'s fast_adversarial code."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18; adaptive pooling (= avg_pool2d(4) at 32 px) also admits 16 and 28 px inputs."""

    def __init__(self, in_channels: int, n_classes: int):
        super().__init__()
        filters, kernel = FIRST_CONV["preact_resnet18"]
        self.conv1 = nn.Conv2d(in_channels, filters, kernel, stride=1, padding=kernel // 2, bias=False)
        stages, in_planes = [], filters
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, n_classes)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.conv1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.linear(out.flatten(1))


def he_init(module: nn.Module) -> None:
    """The authors' `initialize_weights`: He-normal weights, by fan-out for convolutions and fan-in for
    linear layers, zero biases, batch norm at 1 and 0."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / module.in_features))
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def build_model(
    name: str,
    *,
    in_channels: int,
    image_size: int,
    n_classes: int,
    n_layers: int = 1,
    n_filters: int = 4,
    init: str = "torch",
) -> nn.Module:
    """A freshly initialised model (from torch's global RNG); n_layers and n_filters apply to cnn only.
    `init` "he": PyTorch's initialisation, then the authors' He-normal over it (their model.apply)."""
    if name == "cnn":
        model = CNN(in_channels, image_size, n_classes, n_layers, n_filters)
    elif name == "lenet":
        model = LeNet(in_channels, image_size, n_classes)
    elif name == "preact_resnet18":
        model = PreActResNet18(in_channels, n_classes)
    else:
        raise ValueError(f"model: must be one of {', '.join(MODELS)}; got {name!r}")
    if init == "he":
        model.apply(he_init)
    return model
