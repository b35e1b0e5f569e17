"""The backbone registry: each backbone owns its options, their defaults and their checks."""

import re

import pytest
from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn import BACKBONES, build_backbone, plain_layers

SHAPES = {"mlp": (1, 8, 8), "resnet18": (3, 8, 8), "wide_resnet": (3, 8, 8), "vit": (1, 8, 8)}


def linear_sizes(network: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in network.modules() if isinstance(m, nn.Linear)]


def build(name: str, **options) -> nn.Module:
    return build_backbone(name, plain_layers(), SHAPES[name], 10, **options)


def test_each_backbone_declares_its_options_and_defaults():
    assert BACKBONES["mlp"].options == {"hidden_sizes": (64, 32, 16)}
    assert BACKBONES["resnet18"].options == {"width": 64}
    assert BACKBONES["wide_resnet"].options == {"depth": 28, "widen_factor": 10}
    assert BACKBONES["vit"].options == {
        "patch_size": 4, "embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_ratio": 4.0, "pooling": "cls", "attention_dropout": 0.0,
    }


def test_options_left_out_or_none_take_the_backbones_default():
    # 1·8·8 = 64 inputs -> 64 -> 32 -> 16 -> 10 classes
    assert linear_sizes(build("mlp")) == [(64, 64), (64, 32), (32, 16), (16, 10)]
    assert linear_sizes(build("mlp", hidden_sizes=None, width=None)) == [(64, 64), (64, 32), (32, 16), (16, 10)]
    resnet = build("resnet18", hidden_sizes=None, width=None)
    assert resnet.conv1.out_channels == 64 and linear_sizes(resnet) == [(8 * 64, 10)]


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("resnet18", {"hidden_sizes": [32]}, "--model.hidden_sizes applies to the mlp backbone, not resnet18; drop it (resnet18 takes --model.backbone.width)"),
        ("mlp", {"width": 16}, "--model.width applies to the resnet18 backbone, not mlp; drop it (mlp takes --model.backbone.hidden_sizes)"),
        ("mlp", {"depth": 10}, "--model.depth applies to the wide_resnet / vit backbone, not mlp; drop it (mlp takes --model.backbone.hidden_sizes)"),
        ("wide_resnet", {"width": 16}, "--model.width applies to the resnet18 backbone, not wide_resnet; drop it (wide_resnet takes --model.backbone.depth, --model.backbone.widen_factor)"),
        ("mlp", {"num_layers": 3}, "--model.num_layers is not an option of any backbone"),
    ],
    ids=["hidden_sizes-for-resnet18", "width-for-mlp", "depth-for-mlp", "width-for-wide_resnet", "unknown"],
)
def test_an_option_the_backbone_does_not_take_is_refused(name, options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build(name, **options)


def test_older_runs_recording_both_backbones_defaults_still_build():
    # configs and checkpoints written before options were per backbone record hidden_sizes [64, 32, 16]
    # and width 64 whatever the backbone: the other backbone's default means "not given"
    assert build("resnet18", hidden_sizes=[64, 32, 16], width=8).conv1.out_channels == 8
    assert linear_sizes(build("mlp", hidden_sizes=[16], width=64)) == [(64, 16), (16, 10)]


@pytest.mark.parametrize(
    "name,options,shown",
    [
        ("mlp", {"hidden_sizes": [64, -3]}, "hidden_sizes=[64, -3]"),
        ("mlp", {"hidden_sizes": [0]}, "hidden_sizes=[0]"),
        ("resnet18", {"width": 0}, "width=0"),
        ("resnet18", {"width": -4}, "width=-4"),
    ],
    ids=["negative-size", "zero-size", "zero-width", "negative-width"],
)
def test_non_positive_sizes_are_refused(name, options, shown):
    with pytest.raises(ConfigError, match=re.escape(shown)):
        build(name, **options)


def test_no_hidden_layer_builds_a_linear_model_with_a_warning():
    with pytest.warns(UserWarning, match=r"builds a linear model \(no hidden layer\)") as record:
        network = build("mlp", hidden_sizes=[])
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert linear_sizes(network) == [(64, 10)]


def test_every_backbone_options_class_is_exported_where_configs_name_it():
    import ensemble_lab.nn

    for name, backbone in BACKBONES.items():
        cls = backbone.options_class
        assert cls.name == name and getattr(ensemble_lab.nn, cls.__name__) is cls
        assert cls.class_path() == f"ensemble_lab.nn.{cls.__name__}"
