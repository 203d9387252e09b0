"""Training masks and the model input (spec A.3, F masking, invariant L).

Masks are float32 0/1 tensors of shape (B, L, F):
- `M_miss`: 1 present, 0 missing (from the data pipeline).
- `M_mask`: 1 keep, 0 hidden. Only present elements can be hidden; missing elements are always 1 (kept), so the
  reconstruction target `(1 - M_mask) * M_miss` never contains a missing value.

The model input is always `[X_corrupt, M_miss, M_mask, Flags]` along the last axis, F_in = 3F + R, float32.
"""

from __future__ import annotations

import torch

__all__ = ["sample_mask", "sample_group_mask", "apply_mask", "fill_missing", "build_model_input", "mask_stats"]


def sample_mask(M_miss: torch.Tensor, p_mask: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hide each present element with probability `p_mask`: returns M_mask (1 keep, 0 hide), float32.

    The uniforms are drawn on the generator's device (or M_miss's device without one) and then moved, so a
    given generator state yields the same mask whatever device the batch lives on.
    """
    if not 0.0 <= p_mask <= 1.0:
        raise ValueError(f"sample_mask: p_mask must be in [0, 1], got {p_mask}")
    device = generator.device if generator is not None else M_miss.device
    u = torch.rand(M_miss.shape, generator=generator, device=device, dtype=torch.float32).to(M_miss.device)
    hide = (u < p_mask) & (M_miss > 0.5)
    return (~hide).to(torch.float32)


def sample_group_mask(
    M_miss: torch.Tensor,
    M_mask: torch.Tensor,
    group_of: torch.Tensor,
    p_group: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """With probability `p_group` per window, replace its mask by one that hides one whole feature group.

    `group_of` (F,) int64 gives each feature's group (0 .. G-1). A chosen window gets a uniformly drawn group
    hidden at every present element of the window, and nothing else; the other windows keep `M_mask`. A
    hidden group cannot be copied from its own past or from a sibling feature of the same signal, so the model
    learns to predict it from the rest of the turbine (what the "group" scoring masks ask of it).
    """
    if not 0.0 <= p_group <= 1.0:
        raise ValueError(f"sample_group_mask: p_group must be in [0, 1], got {p_group}")
    B, _, F = M_miss.shape
    if group_of.shape != (F,):
        raise ValueError(f"sample_group_mask: group_of must be ({F},), got {tuple(group_of.shape)}")
    device = generator.device if generator is not None else M_miss.device
    n_groups = int(group_of.max()) + 1
    chosen = (torch.rand(B, generator=generator, device=device) < p_group).to(M_miss.device)
    g = torch.randint(n_groups, (B,), generator=generator, device=device).to(M_miss.device)
    hide = (group_of.to(M_miss.device).reshape(1, 1, F) == g.reshape(B, 1, 1)) & (M_miss > 0.5)  # (B, L, F)
    return torch.where(chosen.reshape(B, 1, 1), (~hide).to(torch.float32), M_mask)


def apply_mask(X: torch.Tensor, M_mask: torch.Tensor, fill_value: float) -> torch.Tensor:
    """X_corrupt = X where M_mask == 1, else `fill_value` (a select, so a NaN under the mask cannot leak)."""
    if X.shape != M_mask.shape:
        raise ValueError(f"apply_mask: X {tuple(X.shape)} and M_mask {tuple(M_mask.shape)} must have the same shape")
    return torch.where(M_mask > 0.5, X, torch.full_like(X, fill_value))


def fill_missing(X: torch.Tensor, M_miss: torch.Tensor, fill_value: float) -> torch.Tensor:
    """X with every missing element (M_miss == 0) set to `fill_value`.

    The data pipeline already writes the fill value there; doing it again at the model boundary guarantees that
    the value stored at a missing position can never influence an output or a score.
    """
    return apply_mask(X, M_miss, fill_value)


def build_model_input(
    X_corrupt: torch.Tensor, M_miss: torch.Tensor, M_mask: torch.Tensor, Flags: torch.Tensor
) -> torch.Tensor:
    """Concatenate [X_corrupt, M_miss, M_mask, Flags] -> X_in (B, L, 3F + R) float32."""
    if X_corrupt.dim() != 3:
        raise ValueError(f"build_model_input: X_corrupt must be (B, L, F), got {tuple(X_corrupt.shape)}")
    for name, t in (("M_miss", M_miss), ("M_mask", M_mask)):
        if t.shape != X_corrupt.shape:
            msg = f"build_model_input: {name} {tuple(t.shape)} must match X_corrupt {tuple(X_corrupt.shape)}"
            raise ValueError(msg)
    if Flags.dim() != 3 or Flags.shape[:2] != X_corrupt.shape[:2]:
        msg = (
            f"build_model_input: Flags must be (B, L, R) with (B, L) = {tuple(X_corrupt.shape[:2])}, "
            f"got {tuple(Flags.shape)}"
        )
        raise ValueError(msg)
    parts = [t.to(torch.float32) for t in (X_corrupt, M_miss, M_mask, Flags)]
    X_in = torch.cat(parts, dim=-1)  # (B, L, 3F + R)
    F, R = X_corrupt.shape[-1], Flags.shape[-1]
    if X_in.shape[-1] != 3 * F + R:  # guards the fixed order/width contract against future edits
        raise ValueError(f"build_model_input: F_in {X_in.shape[-1]} != 3F + R = {3 * F + R}")
    return X_in


def mask_stats(M_mask: torch.Tensor, M_miss: torch.Tensor) -> dict[str, float]:
    """Sanity counts for logging: n_present, n_masked (hidden and present), mask_rate = n_masked / n_present."""
    present = M_miss > 0.5
    n_present = float(present.sum().item())
    n_masked = float(((M_mask < 0.5) & present).sum().item())
    return {"mask_rate": n_masked / max(n_present, 1.0), "n_present": n_present, "n_masked": n_masked}
