"""M independent copies of any network, run as one vectorised call (a Deep Ensemble of a model built elsewhere).

The members' parameters and buffers are stacked: the wrapped module keeps its structure and names, each of
its tensors (M, ...) with row i member i's. ``torch.func.functional_call`` under ``torch.func.vmap`` runs every
member on its own rows in one call, with no loop over members; each member draws its own dropout masks.
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ensemble_lab.errors import CheckpointMismatchError
from ensemble_lab.nn.members import check_num_members, gram_of_rows, rows_per_member

#: modules whose parameters are left out of the effective weight cosine, as the library's own norm layers
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


class StackedMembers(nn.Module):
    """M independently initialised copies of ``make()``, their tensors stacked (M, ...) in ``network``.

    Answers the member-layer protocol for the whole network: ``member_state(i)`` is member i's full state
    dict (as ``make()``'s module holds it), ``member_gram()`` the Gram of the members' non-norm parameters,
    ``member_parameters()`` every stacked parameter.
    """

    def __init__(self, make: Callable[[], nn.Module], num_members: int) -> None:
        """
        Args:
            make: builds one member (called M times: each its own initialisation).
            num_members: number of members M.
        """
        super().__init__()
        check_num_members(num_members)
        self.num_members = num_members
        members = [make() for _ in range(num_members)]
        params, buffers = stack_module_state(members)  # {name: (M, ...)}
        self.network = members[0]
        for name, tensor in list(params.items()) + list(buffers.items()):
            owner, _, leaf = name.rpartition(".")
            module = self.network.get_submodule(owner)
            stacked = nn.Parameter(tensor.detach().clone()) if name in params else tensor.detach().clone()
            if name in params:
                module.register_parameter(leaf, stacked)
            else:
                module.register_buffer(leaf, stacked)
        norms = {name for name, m in self.network.named_modules() if isinstance(m, NORMS)}
        self._norm_parameters = {name for name, _ in self.network.named_parameters() if name.rpartition(".")[0] in norms}

    def forward(self, x: Tensor) -> Tensor:
        """(M·B, ...) member-major rows -> (M·B, ...) outputs, member i's network on its rows."""
        m = self.num_members
        rows = x.view(m, rows_per_member(x.shape[0], m), *x.shape[1:])  # (M, B, ...)
        tensors = dict(self.network.named_parameters()) | dict(self.network.named_buffers())

        def one(member: dict[str, Tensor], inputs: Tensor) -> Tensor:
            return functional_call(self.network, member, (inputs,))

        out = vmap(one, randomness="different")(tensors, rows)  # (M, B, ...)
        return out.reshape(m * rows.shape[1], *out.shape[2:])  # (M·B, ...)

    def member_state(self, i: int) -> dict[str, Tensor]:
        """Member i's full state dict, as one ``make()`` network holds it (detached)."""
        return {name: tensor[i].detach() for name, tensor in self.network.state_dict(keep_vars=True).items()}

    @torch.no_grad()
    def fill_member(self, i: int, state: dict[str, Tensor], source: str) -> None:
        """Member i's tensors from ``state``, one plain network's full state dict (a SingleModel checkpoint's);
        a CheckpointMismatchError naming ``source`` where the names or shapes differ."""
        mine = self.network.state_dict(keep_vars=True)
        if mine.keys() != state.keys() or any(mine[k].shape[1:] != state[k].shape for k in mine):
            differ = sorted(set(mine) ^ set(state)) or [k for k in mine if mine[k].shape[1:] != state[k].shape]
            raise CheckpointMismatchError(f"{source} does not hold this network's tensors (first difference: {differ[0]})")
        for key, tensor in mine.items():
            tensor[i].copy_(state[key])

    @torch.no_grad()
    def member_gram(self) -> Tensor:
        """G_ij = ⟨θ_i, θ_j⟩ (M, M) float64 over every parameter outside the norm layers."""
        return gram_of_rows(*(p for name, p in self.network.named_parameters() if name not in self._norm_parameters))

    def member_parameters(self) -> list[Tensor]:
        """Every stored parameter: row i of each is member i's own."""
        return list(self.network.parameters())
