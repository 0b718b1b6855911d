"""Backbone registry, user specs and dummy-batch validation."""

import textwrap

import pytest
import torch
from torch import nn

from ncbench.backbones import BackboneError, build_backbone, probe_layers, validate_backbone
from ncbench.registry import BACKBONES


@pytest.mark.parametrize("name", BACKBONES.names())
def test_registered_backbone_maps_images_to_features(name, in_channels=1):  # 3 channels: test_pretrain's smoke
    model = build_backbone(name, in_channels=in_channels, image_size=16)
    x = torch.randn(3, in_channels, 16, 16, generator=torch.Generator().manual_seed(1))
    y = model.eval()(x)
    assert y.shape == (3, model.feature_dim)
    assert validate_backbone(model, in_channels, (16, 16)) == model.feature_dim
    stages = model.probe_layers()
    assert len(stages) >= 2 and len({n for n, _ in stages}) == len(stages)
    assert all(isinstance(m, nn.Module) for _, m in stages)


def test_conv4_is_four_blocks_of_64_with_256_features_at_32px():
    model = build_backbone("conv4", in_channels=1, image_size=32)
    assert model.feature_dim == 256
    assert [n for n, _ in model.probe_layers()] == ["block1", "block2", "block3", "block4"]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(64, (3, 3))] * 4


@pytest.mark.parametrize(
    "name, options, dim",
    [("mlp", {"width": 32, "depth": 3}, 32), ("conv4", {"width": 8}, 8 * 2 * 2), ("resnet12", {"widths": [8, 16, 24, 32]}, 32),
     ("wrn-28-4", {"depth": 10, "width": 1}, 64), ("resnet18", {}, 512)],
)
def test_architecture_options_set_feature_dim(name, options, dim):
    assert build_backbone(name, in_channels=3, image_size=32, **options).feature_dim == dim


def test_mlp_layers_are_linear_batchnorm_relu():
    model = build_backbone("mlp", in_channels=1, image_size=8, width=10, depth=2)
    kinds = [type(m) for _, stage in model.probe_layers() for m in stage if not isinstance(m, nn.Flatten)]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2


def test_unknown_name_suggests_close_match():
    with pytest.raises(BackboneError, match=r"unknown backbone 'conv-4'; did you mean 'conv4'"):
        build_backbone("conv-4")


def test_unknown_option_and_too_small_image_name_the_spec():
    with pytest.raises(BackboneError, match=r"'conv4'.*unknown option\(s\) \['widht'\]"):
        build_backbone("conv4", widht=3)
    with pytest.raises(BackboneError, match=r"'conv4'.*too small for depth 4"):
        build_backbone("conv4", image_size=8)


GOOD = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, in_channels, image_size):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 5, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x))).flatten(1)

def backbone(in_channels, image_size):
    return Net(in_channels, image_size)

def make():  # accepts no options: in_channels / image_size are offered, not forced
    return Net(3, 8)
"""


def _write(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_user_file_module_and_entry_point_specs(tmp_path, monkeypatch):
    (tmp_path / "v1.python").mkdir()
    assert build_backbone(str(_write(tmp_path / "v1.python", "net.py", GOOD)) + ":make").feature_dim == 5
    path = _write(tmp_path, "mynet.py", GOOD)
    model = build_backbone(str(path), in_channels=1, image_size=12)
    assert model.feature_dim == 5  # set from the dummy batch
    assert [n for n, _ in probe_layers(model)] == ["conv", "pool"]  # top-level children
    assert build_backbone(f"{path}:make").feature_dim == 5
    monkeypatch.syspath_prepend(str(tmp_path))
    assert build_backbone("mynet:backbone", in_channels=2, image_size=10).feature_dim == 5
    dist = tmp_path / "mynet_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mynet-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ncbench.backbones]\nmy-net = mynet:backbone\n")
    assert build_backbone("my-net", in_channels=1, image_size=9).feature_dim == 5


BAD = {
    "rank": ("def backbone(in_channels, image_size):\n    return nn.Conv2d(in_channels, 4, 3)\n",
             r"output must have shape \[B, m\] = \[2, m\] for a batch of 2, got \[2, 4, 6, 6\]"),
    "nan": ("class N(nn.Module):\n    def forward(self, x):\n        return x.flatten(1) * float('nan')\n"
            "def backbone(in_channels, image_size):\n    return N()\n", "NaN or inf"),
    "random": ("class N(nn.Module):\n    def forward(self, x):\n        return torch.rand(len(x), 3)\n"
               "def backbone(in_channels, image_size):\n    return N()\n", "not deterministic"),
    "not_module": ("def backbone(in_channels, image_size):\n    return 3\n", "returned int, expected an nn.Module"),
    "raises": ("def backbone(in_channels, image_size):\n    raise RuntimeError('boom')\n", "building .* failed: RuntimeError: boom"),
    "import": ("import not_a_real_package_xyz\n", "importing .* failed: ModuleNotFoundError"),
    "missing": ("def other(in_channels, image_size):\n    pass\n", "callable 'backbone' is missing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_user_backbone_fails_with_message_naming_spec(tmp_path, case):
    body, message = BAD[case]
    path = _write(tmp_path, f"bad_{case}.py", "import torch\nfrom torch import nn\n" + body)
    with pytest.raises(BackboneError, match=message) as err:
        build_backbone(str(path), in_channels=1, image_size=8)
    assert repr(str(path)) in str(err.value)


def test_bad_module_specs_name_the_spec():
    with pytest.raises(BackboneError, match=r"backbone 'no_such_mod_abc:net': importing module 'no_such_mod_abc' failed"):
        build_backbone("no_such_mod_abc:net")
    with pytest.raises(BackboneError, match=r"backbone 'torch.nn:nothing_here': callable 'nothing_here' is missing"):
        build_backbone("torch.nn:nothing_here")
    with pytest.raises(BackboneError, match=r"file '.*missing_file.py' not found"):
        build_backbone("missing_file.py")


def test_validate_restores_training_mode_and_checks_feature_dim():
    model = build_backbone("tiny-mlp", in_channels=1, image_size=4).train()
    validate_backbone(model, 1, 4)
    assert model.training
    model.feature_dim = 7
    with pytest.raises(BackboneError, match="feature_dim is 7 but the output has 16 features"):
        validate_backbone(model, 1, 4, spec="tiny-mlp")
