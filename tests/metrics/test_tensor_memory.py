"""TensorMemory: peak live tensor bytes, against peaks worked out by hand from the tensors' sizes."""

import gc
import weakref

import torch
from torch import nn

from ensemble_lab.metrics.tensor_memory import TensorMemory

FLOAT = 4  # bytes


def test_new_storages_count_views_and_in_place_results_do_not_and_frees_are_subtracted():
    x = torch.randn(1000)
    with TensorMemory(x) as memory:
        a = x * 2  # live: x, a
        b = a.view(10, 100)  # same storage as a
        a.relu_()  # in place: same storage
        c = torch.cat([a, a])  # live: x, a, c (the peak)
        del a, b, c
        d = torch.zeros(500, dtype=torch.float64)  # live: x, d
    assert memory.peak_bytes == (1000 + 1000 + 2000) * FLOAT
    assert memory.live_bytes == 1000 * FLOAT + 500 * 8
    del d
    assert memory.live_bytes == 1000 * FLOAT


def test_a_network_peaks_where_two_activations_and_the_parameters_are_alive():
    batch, widths = 8, (64, 32, 10)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.randn(batch, 64)
    with torch.inference_mode(), TensorMemory(net, x) as memory:
        net(x)
    parameters = (64 * 32 + 32 + 32 * 10 + 10) * FLOAT
    # Sequential drops each activation once the next exists: linear1's output and relu's, then relu's and the logits
    hidden, logits = batch * widths[1] * FLOAT, batch * widths[2] * FLOAT
    activations = max(hidden + hidden, hidden + logits)
    assert memory.peak_bytes == parameters + batch * 64 * FLOAT + activations


def test_parameters_shared_by_two_modules_count_once_and_a_counter_can_be_collected():
    shared = nn.Linear(10, 10)
    with TensorMemory(shared, nn.Sequential(shared)) as memory:
        pass
    assert memory.peak_bytes == (100 + 10) * FLOAT
    counter, finalizers = weakref.ref(memory), memory._finalizers
    assert len(finalizers) == 2 and all(f.alive for f in finalizers)  # weight and bias
    del memory
    gc.collect()
    assert counter() is None  # the parameters' finalizers hold it weakly ...
    assert not any(f.alive for f in finalizers)  # ... and go with it: repeated measurements leave none behind
