"""Dilations and receptive field of the causal TCN, without torch (the config check needs them too)."""

from __future__ import annotations


def resolve_dilations(kind: str, num_blocks: int, dilation_list: list[int] | None = None) -> list[int]:
    """Dilation per residual block: `powers_of_two` gives 1, 2, 4, ...; `explicit` takes `dilation_list`."""
    if num_blocks < 1:
        raise ValueError(f"model.tcn.num_blocks must be >= 1, got {num_blocks}")
    if kind == "powers_of_two":
        return [2**i for i in range(num_blocks)]
    if kind == "explicit":
        dl = list(dilation_list or [])
        if len(dl) != num_blocks or any(d < 1 for d in dl):
            raise ValueError(f"model.tcn.dilation_list must hold num_blocks={num_blocks} positive integers, got {dl}")
        return dl
    raise ValueError(f"model.tcn.dilations: unknown {kind!r}; allowed ['powers_of_two', 'explicit']")


def receptive_field(kernel_size: int, dilations: list[int]) -> int:
    """Steps of history one output sees: each block holds TWO causal convs, so 1 + 2(k-1)*sum(dilations)."""
    return 1 + 2 * (kernel_size - 1) * sum(dilations)
