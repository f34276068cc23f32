"""The GEMM weight view: packing keeps every value, and the inference cache never goes stale."""

from __future__ import annotations

import torch

import foveal.kernels as fk
from foveal.kernels.weights import gemm_weight


def test_view_indexes_group_out_in_taps():
    w = torch.randn(6, 2, 3, 4)  # conv weight, groups=3: (C_out, C_in/g, kh, kw)
    view = gemm_weight(w, 3, 0, cache=False)
    assert view.shape == (3, 2, 2, 1, 3, 4)
    for g in range(3):
        assert torch.equal(view[g, :, :, 0], w[2 * g:2 * g + 2])
    assert view.stride(1) == 1  # packed: output channels contiguous


def test_transposed_layout_swaps_in_and_out():
    w = torch.randn(4, 5, 2, 2)  # conv_transpose weight: (C_in, C_out/g, kh, kw), groups=2
    view = gemm_weight(w, 2, 1, cache=False)
    assert view.shape == (2, 5, 2, 1, 2, 2)
    assert torch.equal(view[1, 3, 0, 0], w[2, 3])


def test_pointwise_and_channels_last_weights_are_not_copied():
    w = torch.randn(8, 4, 1, 1)
    assert gemm_weight(w, 1, 0, cache=False).data_ptr() == w.data_ptr()
    w_cl = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
    assert gemm_weight(w_cl, 1, 0, cache=False).data_ptr() == w_cl.data_ptr()


def test_cache_hit_and_invalidation_on_in_place_update():
    w = torch.randn(8, 4, 3, 3)
    first = gemm_weight(w, 1, 0, cache=True)
    assert gemm_weight(w, 1, 0, cache=True) is first
    w.mul_(2)  # bumps the version counter
    second = gemm_weight(w, 1, 0, cache=True)
    assert second is not first
    assert torch.equal(second[0, :, :, 0], w)


def test_inference_results_follow_weight_updates():
    x = torch.randn(1, 4, 6, 6)
    w = torch.randn(5, 4, 3, 3)
    with torch.no_grad():
        before = fk.conv2d(x, w)
        w.copy_(torch.randn(5, 4, 3, 3))
        after = fk.conv2d(x, w)
    expected = torch.nn.functional.conv2d(x.double(), w.double())
    assert not torch.allclose(before, after)
    assert torch.allclose(after.double(), expected, atol=1e-4)


def test_new_tensor_at_a_reused_address_is_not_served_from_cache():
    x = torch.randn(1, 4, 6, 6)
    for _ in range(3):  # freed weights' memory is often reused by the next allocation
        w = torch.randn(5, 4, 3, 3)
        with torch.no_grad():
            out = fk.conv2d(x, w)
        assert torch.allclose(out.double(), torch.nn.functional.conv2d(x.double(), w.double()),
                              atol=1e-4)
        del w
