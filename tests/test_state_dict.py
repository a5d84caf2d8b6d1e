"""state_dict / load_state_dict: PyTorch's keys and shapes, round trips, loading torch weights, errors."""
import pickle

import numpy as np
import pytest
import torch

import tinycnn
from tinycnn import nn
from support import assert_close, to_numpy

DTYPES = [np.float32, np.float64]
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


def small_net(m, **kw):
    """The same network from tinycnn.nn or torch.nn: conv, BatchNorm, pooling, dropout, a head."""
    return m.Sequential(
        m.Conv2d(2, 4, 3, padding=1, **kw),
        m.BatchNorm2d(4, **kw),
        m.ReLU(),
        m.MaxPool2d(2),
        m.Sequential(m.Conv2d(4, 3, 1, bias=False, **kw), m.BatchNorm2d(3, affine=False, **kw)),
        m.AdaptiveAvgPool2d(1),
        m.Flatten(),
        m.Dropout(0.0),
        m.Linear(3, 5, **kw),
    )


def test_keys_shapes_and_dtypes_equal_torchs():
    ours = small_net(nn).state_dict()
    theirs = small_net(torch.nn).state_dict()
    assert list(ours) == list(theirs)
    for key in theirs:
        assert ours[key].shape == tuple(theirs[key].shape), key
        assert ours[key].dtype == to_numpy(theirs[key]).dtype, key
        assert isinstance(ours[key], np.ndarray), key


def test_named_parameters_and_buffers_equal_torchs():
    ours, theirs = small_net(nn), small_net(torch.nn)
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in theirs.named_parameters()]
    assert [name for name, _ in ours.named_buffers()] == [name for name, _ in theirs.named_buffers()]


def test_round_trip_gives_an_identical_network(rng):
    tinycnn.manual_seed(1)
    source = small_net(nn)
    x = tinycnn.tensor(rng.normal(size=(3, 2, 4, 4)).astype(np.float32))
    source(x)  # move the BatchNorm statistics away from their initial values
    state = pickle.loads(pickle.dumps(source.state_dict()))
    tinycnn.manual_seed(2)
    copy = small_net(nn)
    assert not np.array_equal(copy.state_dict()["0.weight"], state["0.weight"])
    assert copy.load_state_dict(state) == ([], [])
    for key, value in copy.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    source.eval()
    copy.eval()
    np.testing.assert_array_equal(copy(x).numpy(), source(x).numpy())


def test_state_dict_is_a_copy():
    net = small_net(nn)
    state = net.state_dict()
    state["0.weight"][...] = 0
    state["1.running_mean"][...] = 7
    assert net[0].weight.data.any() and not net[1].running_mean.any()


def test_load_state_dict_copies_into_buffers_in_place():
    net = small_net(nn)
    running_mean = net[1].running_mean
    state = net.state_dict()
    state["1.running_mean"] = np.arange(4, dtype=np.float32)
    net.load_state_dict(state)
    assert net[1].running_mean is running_mean
    np.testing.assert_array_equal(running_mean, np.arange(4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_weights_load_and_give_torchs_outputs(dtype, rng):
    torch.manual_seed(0)
    theirs = small_net(torch.nn, dtype=TORCH_DTYPES[dtype])
    with torch.no_grad():  # non-trivial BatchNorm parameters and statistics
        for module in theirs.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.num_batches_tracked.fill_(3)
                if module.affine:
                    module.weight.uniform_(0.5, 2)
                    module.bias.uniform_(-1, 1)
    ours = small_net(nn, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())  # torch tensors, converted on load
    assert int(ours[1].num_batches_tracked) == 3
    x = rng.normal(size=(3, 2, 4, 4)).astype(dtype)

    ours.eval()
    theirs.eval()
    assert_close(ours(tinycnn.tensor(x)), theirs(torch.tensor(x)), dtype, "eval mode")

    ours.train()
    theirs.train()
    assert_close(ours(tinycnn.tensor(x)), theirs(torch.tensor(x)), dtype, "train mode")
    for key, value in theirs.state_dict().items():  # the statistics moved the same way
        assert_close(ours.state_dict()[key], value, dtype, key)


def test_missing_key_raises_key_error_naming_it():
    state = small_net(nn).state_dict()
    del state["1.running_var"]
    with pytest.raises(KeyError, match=r"missing keys \['1.running_var'\]"):
        small_net(nn).load_state_dict(state)


def test_unexpected_key_raises_key_error_naming_it():
    state = small_net(nn).state_dict()
    state["9.weight"] = np.zeros(3, np.float32)
    with pytest.raises(KeyError, match=r"unexpected keys \['9.weight'\]"):
        small_net(nn).load_state_dict(state)


def test_misshaped_key_raises_value_error_naming_it():
    state = small_net(nn).state_dict()
    state["8.weight"] = np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match=r"8.weight expected shape \(5, 3\), got \(5, 4\)"):
        small_net(nn).load_state_dict(state)


def test_non_strict_load_reports_missing_and_unexpected():
    net = small_net(nn)
    state = net.state_dict()
    head = state.pop("8.bias")
    state["extra"] = head
    before = net[8].bias.data.copy()
    missing, unexpected = small_net(nn).load_state_dict(state, strict=False)
    assert missing == ["8.bias"] and unexpected == ["extra"]
    np.testing.assert_array_equal(net[8].bias.data, before)


def test_bias_false_and_untracked_batchnorm_have_no_keys():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2, track_running_stats=False))
    twin = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, bias=False), torch.nn.BatchNorm2d(2, track_running_stats=False))
    assert list(net.state_dict()) == list(twin.state_dict()) == ["0.weight", "1.weight", "1.bias"]
