"""Models: output shapes, parameter counts, dropout in train and eval mode."""

from __future__ import annotations

import pytest
import torch

from trainables import build_model

# (model, an input shape it is used with, without the batch dimension)
MODEL_INPUTS = [
    ("mlp", (1, 40)),
    ("mlp", (3, 32, 32)),
    ("cnn1d", (1, 40)),
    ("cnn", (1, 28, 28)),
    ("cnn", (3, 32, 32)),
    ("resnet", (3, 32, 32)),
]


@pytest.mark.parametrize(("name", "input_shape"), MODEL_INPUTS)
@pytest.mark.parametrize("num_classes", [10, 3])
def test_output_is_one_logit_per_class(name: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, input_shape, num_classes, dropout=0.0)
    out = model(torch.randn(4, *input_shape))
    assert out.shape == (4, num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_cnn1d_has_the_papers_5210_parameters_on_mnist1d() -> None:
    model = build_model("cnn1d", (1, 40), 10, dropout=0.0)
    assert sum(p.numel() for p in model.parameters()) == 5210


def test_mlp_has_two_hidden_layers_of_100() -> None:
    model = build_model("mlp", (1, 40), 10, dropout=0.0)
    expected = (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="vit"):
        build_model("vit", (3, 32, 32), 10, dropout=0.0)


@pytest.mark.parametrize(("name", "input_shape"), MODEL_INPUTS)
def test_dropout_is_active_in_train_mode_and_off_in_eval_mode(name: str, input_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, *input_shape)
    with torch.no_grad():
        model = build_model(name, input_shape, 10, dropout=0.5)
        model.train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))

        # control: without dropout two train-mode passes agree, so the difference above is dropout's
        model = build_model(name, input_shape, 10, dropout=0.0).train()
        assert torch.equal(model(x), model(x))
