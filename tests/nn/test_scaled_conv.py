"""scaled_input_conv2d: conv2d(x ∘ r, W) as autograd computes it, keeping x instead of x ∘ r."""

import pytest
import torch
from torch.nn import functional as F

from ensemble_lab.metrics.tensor_memory import TensorMemory
from ensemble_lab.nn.scaled_conv import scaled_input_conv2d

N, B, CIN, COUT, SIZE = 3, 2, 4, 5, 7


def inputs(dtype=torch.float64, channels_last=False):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N * B, CIN, SIZE, SIZE, generator=gen, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.view(N, B, CIN, SIZE, SIZE).requires_grad_(True)
    r = (1 + 0.5 * torch.randn(N, 1, CIN, 1, 1, generator=gen, dtype=dtype)).requires_grad_(True)
    w = torch.randn(COUT, CIN, 3, 3, generator=gen, dtype=dtype).requires_grad_(True)
    return x, r, w


def plain(x, r, w, stride, padding):
    y = F.conv2d((x * r).flatten(0, 1), w, None, stride, padding)
    return y.view(N, B, *y.shape[1:])


@pytest.mark.parametrize("stride, padding, channels_last", [(1, 1, False), (2, 0, False), ((2, 1), (1, 0), True)])
def test_output_and_gradients_equal_autograd_through_the_product(stride, padding, channels_last):
    x, r, w = inputs(channels_last=channels_last)
    out = scaled_input_conv2d(x, r, w, stride, padding)
    reference = plain(x, r, w, stride, padding)
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(reference)
    got = torch.autograd.grad(out, (x, r, w), grad)
    expected = torch.autograd.grad(reference, (x, r, w), grad)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_only_the_gradients_asked_for_and_a_detached_weight():
    x, r, w = inputs()
    out = scaled_input_conv2d(x, r, w.detach(), 1, 1)  # gradient blocking detaches W for members 1..
    grad_x, grad_r = torch.autograd.grad(out.sum(), (x, r))
    expected = torch.autograd.grad(plain(x, r, w.detach(), 1, 1).sum(), (x, r))
    torch.testing.assert_close(grad_x, expected[0])
    torch.testing.assert_close(grad_r, expected[1])


def test_under_autocast_it_takes_the_plain_compositions_dtypes():
    x, r, w = inputs(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, reference = scaled_input_conv2d(x, r, w, 1, 1), plain(x, r, w, 1, 1)
    assert out.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    grad = torch.randn_like(reference)
    got, expected = torch.autograd.grad(out, (x, r, w), grad), torch.autograd.grad(reference, (x, r, w), grad)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)  # the same bf16 kernels; sums may run in another order


def test_backward_keeps_x_not_x_times_r():
    x, r, w = inputs(torch.float32)
    out_bytes = N * B * COUT * SIZE * SIZE * 4
    for conv, extra in ((scaled_input_conv2d, 0), (plain, x.numel() * 4)):  # the plain form keeps x ∘ r as well
        with TensorMemory(x, r, w) as memory:
            before = memory.live_bytes
            out = conv(x, r, w, 1, 1)
            assert memory.live_bytes - before == out_bytes + extra, conv
        del out
