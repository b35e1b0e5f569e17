"""What a method costs, beside what it scores: parameters, FLOPs per image, test throughput, peak memory.

- ``parameters``: every parameter the members compute with (a snapshot ensemble's network in training left out). ``parameters_per_member``: what one member computes
  with: the shared parameters in full, plus 1/M of those the layers declare per member
  (``member_parameters()``), e.g. BatchEnsemble's W plus one member's r, s and biases.
- ``flops_per_image``: torch's FlopCounterMode over one test forward pass of all M members (matmuls
  and convolutions, 2 FLOPs per multiply-add; element-wise ops such as BatchEnsemble's r and s
  scalings are not counted), divided by the batch size.
- ``images_per_s``: test forward passes of one batch (all members), timed after warm-up for at least
  ``min_time`` seconds on the run's device (synchronised on a GPU). ``peak_memory_bytes``: the
  device's peak allocation during those passes (CUDA only; null elsewhere).
- ``peak_tensor_bytes``: the peak bytes of live tensors (parameters, buffers, the batch and the
  activations alive at once) during the first of those passes, counted by ``TensorMemory`` in the same
  way on every device; a CPU run gets a memory figure too, and two runs of one configuration agree on it.
"""

import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ensemble_lab.metrics.registry import names
from ensemble_lab.metrics.tensor_memory import TensorMemory
from ensemble_lab.nn.members import member_network_parameters, member_owned_parameters

#: results.json's "cost" keys (the registry's rows placed there)
COST_KEYS = names(place="cost")
#: measurements of the machine, not results of the run: the only keys of results.json that differ
#: between two runs of the same configuration and seed
MEASURED = names(measured=True)


def parameter_counts(model: nn.Module, num_members: int) -> tuple[int, int]:
    """(all parameters, the parameters one member computes with)."""
    own = {id(p): p.numel() for p in member_owned_parameters(model)}
    used = member_network_parameters(model)  # a snapshot ensemble's network in training is not a member's
    total = sum(p.numel() for p in used)
    shared = sum(p.numel() for p in used if id(p) not in own)
    return total, shared + sum(own.values()) // num_members


@torch.no_grad()
def measure_cost(model: nn.Module, images: Tensor, num_members: int, warmup: int = 2, min_time: float = 0.3) -> dict[str, Any]:
    """The COST_KEYS of ``model`` (in eval mode) on the test batch ``images`` (B, ...), on its device.

    Args:
        model: the method; ``model(images)`` returns member logits (M, B, C).
        images: one test batch, already on the model's device.
        num_members: M.
        warmup: untimed forward passes first.
        min_time: seconds of timed forward passes (at least one).
    """
    total, per_member = parameter_counts(model, num_members)
    counter, memory = FlopCounterMode(display=False), TensorMemory(model, images)
    with counter, memory:
        model(images)
    cuda = images.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        model(images)
    if cuda:
        torch.cuda.reset_peak_memory_stats(images.device)
    sync()
    start, calls = time.perf_counter(), 0
    while calls == 0 or time.perf_counter() - start < min_time:
        model(images)
        sync()
        calls += 1
    elapsed = time.perf_counter() - start
    return {
        "parameters": total,
        "parameters_per_member": per_member,
        "flops_per_image": counter.get_total_flops() / images.shape[0],
        "images_per_s": images.shape[0] * calls / elapsed,
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(images.device)) if cuda else None,
        "peak_tensor_bytes": memory.peak_bytes,
    }


def format_cost(cost: dict[str, Any], device: str) -> str:
    """One line for the printed results: parameters, FLOPs, throughput and memory."""
    memory = "" if cost.get("peak_memory_bytes") is None else f", peak memory {cost['peak_memory_bytes'] / 2**20:.1f} MiB"
    if cost.get("peak_tensor_bytes") is not None:
        memory += f", peak tensors {cost['peak_tensor_bytes'] / 2**20:.1f} MiB"
    return (
        f"cost: {cost['parameters']:,} parameters ({cost['parameters_per_member']:,} per member), "
        f"{cost['flops_per_image'] / 1e6:.3f} MFLOPs per test image (all members), "
        f"{cost['images_per_s']:,.0f} test images/s on {device}{memory}"
    )
