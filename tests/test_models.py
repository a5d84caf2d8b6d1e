"""The model zoo: registry, parameter counts (ARCHITECTURES.md), shapes at the canonical input
(shape-only mode), a forward + backward of every network at a small input, and transfer learning."""
import numpy as np
import pytest

import tinycnn
import tinycnn.models as models
from tinycnn import nn, optim
from tinycnn.models import ModelOutputs

from models_support import canonical_input, fast_init, num_classes_of, skipped_init

# ARCHITECTURES.md's parameter counts (1000 classes unless the name is a CIFAR or MNIST network).
EXPECTED_PARAMS = {
    "lenet": 431_080, "lenet5": 60_000, "lenet_d2l": 61_706,
    "alexnet_paper": 60_965_224, "alexnet": 61_100_840, "zfnet": 62_357_608,
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248,
    "nin": 7_439_608,
    "googlenet_paper": 13_378_280, "googlenet": 13_004_888,
    "inception_v3": 27_161_264, "inception_v4": 42_679_816,
    "inception_resnet_v2": 55_843_464, "inception_resnet_v1": 23_995_624,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "densenet121": 7_978_856, "densenet169": 14_149_480, "densenet201": 20_013_928, "densenet161": 28_681_000,
    "densenet264": 33_337_704,
    "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018, "resnet110": 1_727_962,
    # The plain nets have the same layers; option A shortcuts have no parameters.
    "plain20": 269_722, "plain32": 464_154, "plain44": 658_586, "plain56": 853_018, "plain110": 1_727_962,
    "densenet_bc_100": 769_162,
}

# Variants by argument: (name, kwargs, parameters).
EXPECTED_VARIANT_PARAMS = [
    ("googlenet_paper", dict(aux_logits=False), 6_998_552),
    ("googlenet", dict(aux_logits=False), 6_624_904),
    ("inception_v3", dict(aux_logits=False), 23_834_568),
    ("resnet20", dict(shortcut="B"), 272_474),
    ("resnet32", dict(shortcut="B"), 466_906),
    ("resnet44", dict(shortcut="B"), 661_338),
    ("resnet56", dict(shortcut="B"), 855_770),
    ("resnet110", dict(shortcut="B"), 1_730_714),
    ("densenet_bc_100", dict(num_classes=100), 800_032),
    ("lenet5", dict(head="linear"), 60_000 + 84 * 10 + 10),
    # stride placement moves no weights
    ("resnet50", dict(stride_in_1x1=True), 25_557_032),
]

# Figure 5 of the BatchNorm paper, typed again here (not read from the model) so the count of
# inception_v2 is checked against the table: (#1x1, #3x3 reduce, #3x3, double reduce, double 3x3,
# pool proj), 0 for an absent branch.
BN_INCEPTION_ROWS = [
    (64, 64, 64, 64, 96, 32), (64, 64, 96, 64, 96, 64), (0, 128, 160, 64, 96, 0),
    (224, 64, 96, 96, 128, 128), (192, 96, 128, 96, 128, 128), (160, 128, 160, 128, 160, 128),
    (96, 128, 192, 160, 192, 128), (0, 128, 192, 192, 256, 0),
    (352, 192, 320, 160, 224, 128), (352, 192, 320, 192, 224, 128),
]


def bn_inception_params(num_classes=1000):
    """Weights of convs without bias, plus 2 BatchNorm parameters per conv output channel."""
    def conv(c_in, c_out, k):
        return c_in * c_out * k * k + 2 * c_out

    total = conv(3, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3)
    channels = 192
    for ch1, red3, ch3, red_dbl, dbl, proj in BN_INCEPTION_ROWS:
        total += (conv(channels, ch1, 1) if ch1 else 0) + conv(channels, red3, 1) + conv(red3, ch3, 3)
        total += conv(channels, red_dbl, 1) + conv(red_dbl, dbl, 3) + conv(dbl, dbl, 3)
        total += conv(channels, proj, 1) if proj else 0
        channels = ch1 + ch3 + dbl + (proj or channels)
    return total + channels * num_classes + num_classes


EXPECTED_PARAMS["inception_v2"] = bn_inception_params()


def test_bn_inception_table_gives_1024_final_maps():
    # the recount's own sanity: 5b ends with 352 + 320 + 224 + 128 maps
    assert (bn_inception_params(1001) - bn_inception_params(1000)) == 1024 + 1


def test_every_registered_model_has_an_expected_count():
    assert set(models.list()) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_count(name):
    with skipped_init():
        model = models.create(name)
    assert model.num_parameters() == EXPECTED_PARAMS[name]


VARIANT_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw, _ in EXPECTED_VARIANT_PARAMS]


@pytest.mark.parametrize("name, kwargs, expected", EXPECTED_VARIANT_PARAMS, ids=VARIANT_IDS)
def test_parameter_count_of_variants(name, kwargs, expected):
    with skipped_init():
        model = models.create(name, **kwargs)
    assert model.num_parameters() == expected


def test_lenet5_rbf_codes_are_fixed_not_trainable():
    model = models.lenet5()
    assert model.num_parameters(trainable_only=True) == 60_000
    assert "output.codes" in model.state_dict()
    assert all(name != "output.codes" for name, _ in model.named_parameters())


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_output_shape_at_canonical_input(name):
    with skipped_init():
        model = models.create(name)
    result = tinycnn.summary(model, canonical_input(name), print_table=False, batch_size=2)
    assert result.output_shape == (2, num_classes_of(name))


# (model, layer, output shape at the canonical input with batch 1): the sizes the papers print.
LAYER_SHAPES = [
    ("alexnet_paper", "features.conv1", (1, 96, 55, 55)),
    ("alexnet_paper", "features.pool5", (1, 256, 6, 6)),
    ("alexnet", "features.12", (1, 256, 6, 6)),
    ("zfnet", "features.conv1", (1, 96, 110, 110)),
    ("zfnet", "features.pool1", (1, 96, 55, 55)),
    ("zfnet", "features.conv2", (1, 256, 26, 26)),
    ("zfnet", "features.pool5", (1, 256, 6, 6)),
    ("vgg16", "features.30", (1, 512, 7, 7)),
    ("nin", "features.7.4", (1, 1000, 5, 5)),
    ("googlenet_paper", "maxpool1", (1, 64, 56, 56)),
    ("googlenet_paper", "maxpool2", (1, 192, 28, 28)),
    ("googlenet_paper", "inception3a.branch4.1.relu", (1, 32, 28, 28)),
    ("googlenet_paper", "maxpool4", (1, 832, 7, 7)),
    ("googlenet", "maxpool4", (1, 832, 7, 7)),
    ("inception_v2", "blocks.inception3c.branch4", (1, 320, 14, 14)),
    ("inception_v2", "blocks.inception4e.branch4", (1, 608, 7, 7)),
    ("inception_v3", "Conv2d_4a_3x3.relu", (1, 192, 71, 71)),
    ("inception_v3", "Mixed_7c.branch_pool.relu", (1, 192, 8, 8)),
    ("inception_v4", "features.5.maxpool", (1, 192, 35, 35)),
    ("inception_v4", "features.21.branch3.1.relu", (1, 256, 8, 8)),
    ("inception_resnet_v2", "mixed_5b.branch3.1.relu", (1, 64, 35, 35)),
    ("inception_resnet_v2", "conv2d_7b.relu", (1, 1536, 8, 8)),
    ("inception_resnet_v1", "conv2d_4b.relu", (1, 256, 35, 35)),
    ("inception_resnet_v1", "block8.conv2d", (1, 1792, 8, 8)),
    ("resnet50", "maxpool", (1, 64, 56, 56)),
    ("resnet50", "layer1.2.relu", (1, 256, 56, 56)),
    ("resnet50", "layer4.2.relu", (1, 2048, 7, 7)),
    ("resnext50_32x4d", "layer1.0.conv2", (1, 128, 56, 56)),
    ("resnext101_32x8d", "layer4.0.conv2", (1, 2048, 7, 7)),
    ("resnet20", "layer3.2.relu", (1, 64, 8, 8)),
    ("densenet121", "features.norm5", (1, 1024, 7, 7)),
    ("densenet169", "features.norm5", (1, 1664, 7, 7)),
    ("densenet201", "features.norm5", (1, 1920, 7, 7)),
    ("densenet264", "features.norm5", (1, 2688, 7, 7)),
    ("densenet_bc_100", "features.norm5", (1, 342, 8, 8)),
]


@pytest.mark.parametrize("name, layer, shape", LAYER_SHAPES, ids=[f"{n}-{l}" for n, l, _ in LAYER_SHAPES])
def test_layer_shapes_match_the_papers(name, layer, shape):
    with skipped_init():
        model = models.create(name)
    rows = tinycnn.summary(model, canonical_input(name), print_table=False).rows
    shapes = {row.name: row.output_shape for row in rows}
    assert shapes[layer] == shape


# (name, input (N, C, H, W), kwargs): the smallest input each architecture takes; the ImageNet
# networks with adaptive pooling at 32x32, the fixed-size heads (AlexNet-paper's and ZFNet's
# 6x6 maps, the paper GoogLeNet's 5x5/3 aux pool) at their canonical size, batch 2 for BatchNorm.
def small_input(name):
    if name in ("alexnet_paper", "zfnet", "googlenet_paper"):
        return (2,) + canonical_input(name)
    if name.startswith("lenet"):
        return (2,) + canonical_input(name)
    if name.startswith(("inception_v3", "inception_v4", "inception_resnet")):
        return (2, 3, 75, 75)
    if name in ("alexnet", "nin"):
        return (2, 3, 96, 96)
    if canonical_input(name) == (3, 32, 32):
        return (2, 3, 8, 8)
    return (2, 3, 32, 32)


SMALL_KWARGS = {
    # the aux head needs 299x299 in training mode (its own test below runs it at that size)
    "inception_v3": dict(aux_logits=False, num_classes=3),
    "lenet5": dict(),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_forward_backward_at_a_small_input(name):
    tinycnn.manual_seed(0)
    kwargs = SMALL_KWARGS.get(name, dict(num_classes=3))
    with fast_init():
        model = models.create(name, **kwargs)
    x = tinycnn.tensor(np.random.default_rng(0).standard_normal(small_input(name)).astype(np.float32))
    output = model(x)
    if isinstance(output, ModelOutputs):
        loss = output.logits.sum() + model.aux_loss_weight * sum(aux.sum() for aux in output.aux_logits)
        logits = output.logits
    else:
        loss, logits = output.sum(), output
    assert logits.shape == (2, 10 if name == "lenet5" else kwargs.get("num_classes", 3))
    assert np.isfinite(logits.numpy()).all()
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name}: {parameter_name} received no gradient"
        assert parameter.grad.shape == parameter.shape
        assert np.isfinite(parameter.grad).all(), f"{name}: {parameter_name} has a non-finite gradient"


def test_inception_v3_aux_head_in_training_at_299():
    tinycnn.manual_seed(0)
    with fast_init():
        model = models.inception_v3(num_classes=3)
    with tinycnn.config.using(shape_only=True), tinycnn.no_grad():
        output = model(tinycnn.tensor(np.zeros((2, 3, 299, 299), np.float32)))
    assert isinstance(output, ModelOutputs)
    assert output.logits.shape == (2, 3) and [a.shape for a in output.aux_logits] == [(2, 3)]
    assert model.aux_loss_weight == 0.4
    model.eval()
    with tinycnn.config.using(shape_only=True), tinycnn.no_grad():
        assert model(tinycnn.tensor(np.zeros((1, 3, 299, 299), np.float32))).shape == (1, 3)


def test_registry_create_and_list():
    names = models.list()
    assert names == sorted(names)
    assert {"lenet", "resnet50", "googlenet_paper", "densenet_bc_100"} <= set(names)
    assert isinstance(models.create("resnet20", num_classes=7), nn.Module)
    assert models.resnet50.__module__ == "tinycnn.models.resnet"
    assert models.create("resnet20").fc.out_features == 10
    assert models.create("lenet").num_parameters() == models.lenet().num_parameters()


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_default_input_shape_is_the_canonical_input(name):
    assert models.default_input_shape(name) == canonical_input(name)


def test_unknown_model_name_lists_close_names():
    with pytest.raises(ValueError, match="resnet50") as info:
        models.create("resnet5O")
    assert "unknown model 'resnet5O'" in str(info.value)
    with pytest.raises(ValueError, match="did you mean lenet"):
        models.default_input_shape("lenet6")


def test_models_take_in_channels():
    with skipped_init():
        for name in ("resnet18", "vgg11", "densenet121", "alexnet", "googlenet", "inception_v3", "resnet20"):
            model = models.create(name, in_channels=1)
            C, H, W = canonical_input(name)
            output_shape = tinycnn.summary(model, (1, H, W), print_table=False).output_shape
            assert output_shape == (1, num_classes_of(name))


def test_resnet_v1_stride_sits_on_the_first_1x1():
    v15 = models.resnet50()
    v1 = models.resnet50(stride_in_1x1=True)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert tinycnn.summary(v1, (3, 64, 64), print_table=False).output_shape == (1, 1000)


def test_zero_init_residual_zeroes_the_last_batchnorm_of_each_block():
    model = models.resnet18(zero_init_residual=True)
    assert all(not block.bn2.weight.data.any() for block in model.layer1)
    assert models.resnet18().layer1[0].bn2.weight.data.all()


def test_option_a_shortcut_subsamples_and_pads_with_zeros():
    from tinycnn.models.resnet import ZeroPadShortcut

    x_array = np.random.default_rng(1).standard_normal((2, 3, 5, 5))
    x = tinycnn.tensor(x_array, requires_grad=True)
    y = ZeroPadShortcut(3, 8, 2)(x)
    expected = np.concatenate([x_array[:, :, ::2, ::2], np.zeros((2, 5, 3, 3))], axis=1)
    np.testing.assert_array_equal(y.numpy(), expected)
    gy = np.random.default_rng(2).standard_normal(y.shape)
    y.backward(gy)
    expected_gx = np.zeros_like(x_array)
    expected_gx[:, :, ::2, ::2] = gy[:, :3]
    np.testing.assert_array_equal(x.grad, expected_gx)


def test_plain_net_differs_from_resnet_only_by_the_shortcut():
    tinycnn.manual_seed(3)
    resnet = models.resnet20()
    plain = models.plain20()
    plain.load_state_dict(resnet.state_dict())
    resnet.eval()
    plain.eval()
    x = tinycnn.tensor(np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32))
    # the same weights, different outputs: the shortcut carries the input past each block
    assert not np.allclose(resnet(x).numpy(), plain(x).numpy())
    stem = resnet.relu(resnet.bn1(resnet.conv1(x)))  # 1 x 16 x 8 x 8
    block, plain_block = resnet.layer1[0], plain.layer1[0]
    np.testing.assert_allclose(block(stem).numpy(), np.maximum(plain_block.bn2(plain_block.conv2(
        plain_block.relu(plain_block.bn1(plain_block.conv1(stem))))).numpy() + stem.numpy(), 0), rtol=1e-6, atol=1e-6)


def test_alexnet_paper_initialisation_and_lrn_constants():
    model = models.alexnet_paper()
    features = dict(model.features.named_children())
    assert (features["conv2"].bias.data == 1).all() and (features["conv1"].bias.data == 0).all()
    assert abs(float(features["conv3"].weight.data.std()) - 0.01) < 1e-3
    assert features["conv2"].groups == 2 and features["conv3"].groups == 1
    assert (features["norm1"].k, features["norm1"].alpha_divided_by_size) == (2.0, False)
    with skipped_init():
        caffe = dict(models.alexnet_paper(lrn="caffe").features.named_children())
    assert (caffe["norm1"].k, caffe["norm1"].alpha_divided_by_size) == (1.0, True)


def test_transfer_learning_trains_only_the_new_head():
    tinycnn.manual_seed(0)
    model = models.resnet18()
    model.requires_grad_(False)
    model.fc = nn.Linear(model.fc.in_features, 3)
    frozen = {name: p.data.copy() for name, p in model.named_parameters() if not name.startswith("fc.")}
    head_before = model.fc.weight.data.copy()
    assert model.num_parameters(trainable_only=True) == 512 * 3 + 3

    optimizer = optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = tinycnn.tensor(np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    target = tinycnn.tensor(np.array([0, 1, 2, 1]))
    loss = tinycnn.functional.cross_entropy(model(x), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    for name, p in model.named_parameters():
        if name.startswith("fc."):
            continue
        assert p.grad is None, f"{name} is frozen but received a gradient"
        np.testing.assert_array_equal(p.data, frozen[name], err_msg=name)
    assert not np.array_equal(model.fc.weight.data, head_before)
