"""kernels/cpu_conv_weights.gather_taps against NumPy's indexing of the same taps: every layout,
any subset and order of taps, float32 and float64, serial and parallel sizes (the parallel loop
splits the output channels), and an unknown layout's error."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from tinycnn.kernels.cpu_conv_weights import gather_taps

EXPECTED = {  # the layouts as NumPy writes them, from W (OC, C, KH*KW)
    "tap": lambda W3, taps: W3[:, :, taps].transpose(2, 0, 1),
    "pixel": lambda W3, taps: W3[:, :, taps].transpose(0, 2, 1),
    "channel": lambda W3, taps: W3[:, :, taps],
}


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 3), st.integers(1, 3), st.data(),
       st.sampled_from([np.float32, np.float64]), st.sampled_from(sorted(EXPECTED)))
def test_gather_taps_matches_numpy(OC, C, KH, KW, data, dtype, layout):
    taps = data.draw(st.lists(st.integers(0, KH * KW - 1), min_size=1, max_size=KH * KW, unique=True))
    W = np.random.default_rng(OC * 100 + C).uniform(-1, 1, (OC, C, KH, KW)).astype(dtype)
    got = gather_taps(W, taps, layout)
    expected = EXPECTED[layout](W.reshape(OC, C, KH * KW), np.array(taps))
    assert got.flags.c_contiguous and got.dtype == dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("layout", sorted(EXPECTED))
def test_gather_taps_in_parallel(layout):
    # 512x512 channels by 4 taps: a million values, split over the kernel threads by output channel
    W = np.random.default_rng(0).uniform(-1, 1, (512, 512, 3, 3)).astype(np.float32)
    taps = np.array([8, 4, 5, 7])
    np.testing.assert_array_equal(gather_taps(W, taps, layout), EXPECTED[layout](W.reshape(512, 512, 9), taps))


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="layout must be 'tap', 'pixel' or 'channel', got 'rows'"):
        gather_taps(np.zeros((2, 2, 3, 3), np.float32), [0], "rows")
