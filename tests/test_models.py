import pytest
import torch
from torch import nn

from trainer.data import DATA_SHAPES
from trainer.models import MODELS, build_model


def _build(name: str, dataset: str, **kwargs) -> nn.Module:
    channels, size, classes = DATA_SHAPES[dataset]
    return build_model(name, in_channels=channels, image_size=size, n_classes=classes, **kwargs)


@pytest.mark.parametrize("dataset", ["digits", "mnist", "svhn"])  # svhn and cifar10 share 3×32×32
@pytest.mark.parametrize("name", MODELS)
def test_output_shape_and_gradient_to_first_layer(name, dataset):
    torch.manual_seed(0)
    model = _build(name, dataset)
    channels, size, classes = DATA_SHAPES[dataset]
    x = torch.rand(2, channels, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (2, classes)
    out.sum().backward()
    first = model.first_conv
    assert isinstance(first, nn.Conv2d) and first.in_channels == channels
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_cnn_is_the_papers_single_layer_cnn_by_default():
    model = _build("cnn", "digits")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0] is model.features[0] is model.first_conv
    assert (convs[0].out_channels, convs[0].kernel_size, convs[0].padding) == (4, (3, 3), (1, 1))
    assert [type(m) for m in model.features] == [nn.Conv2d, nn.ReLU]


def test_cnn_depth_and_width_follow_arguments():
    model = _build("cnn", "svhn", n_layers=2, n_filters=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and all(c.out_channels == 8 for c in convs)
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_preact_resnet18_has_resnet18_layout():
    model = _build("preact_resnet18", "cifar10")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3  # stem, two per block, three projection shortcuts
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.17e6, rel=0.01)


def test_unknown_model_is_rejected_with_the_allowed_names():
    with pytest.raises(ValueError, match="cnn, lenet, preact_resnet18"):
        _build("vgg16", "cifar10")
