"""Input encodings of token ids: the reference codes' one-hot float format, built on request only."""
from __future__ import annotations

import torch

_WHITENINGS = (False, True, "2024", "2023")


def one_hot(tokens: torch.Tensor, v: int, layout: str = "ncl", dtype: torch.dtype = torch.float32,
            whiten: bool | str = False) -> torch.Tensor:
    """One-hot encode token ids [P, d] into [P, v, d] (``layout="ncl"``, channels first, as the
    reference codes feed Conv1d) or [P, d, v] (``"nlc"``).

    ``whiten``: False; True or "2024" for (x - 1/v) / sqrt(1 - 1/v) (random-hierarchy-model);
    "2023" for x·(1 + (v-1)^-1/2) - (v-1)^-1/2 (hierarchy-learning). Costs 4·v bytes per token in
    float32 against 1 for uint8 ids: prefer token ids and rhmfast's token layer where possible.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape [P, d], got {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer tensor, got {tokens.dtype}")
    if not isinstance(v, int) or v < 2:
        raise ValueError(f"v must be an int >= 2, got {v!r}")
    if layout not in ("ncl", "nlc"):
        raise ValueError(f"layout must be 'ncl' or 'nlc', got {layout!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    if whiten not in _WHITENINGS:
        raise ValueError(f"whiten must be one of {_WHITENINGS}, got {whiten!r}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= v):
        raise ValueError(f"token ids must be in [0, v = {v}), got values in [{int(tokens.min())}, {int(tokens.max())}]")
    if whiten == "2023":
        shift = (v - 1) ** -0.5
        off, on = -shift, 1.0
    elif whiten:
        scale = (1.0 - 1.0 / v) ** -0.5
        off, on = -scale / v, scale * (1.0 - 1.0 / v)
    else:
        off, on = 0.0, 1.0
    P, d = tokens.shape
    index = tokens.long()
    if layout == "ncl":
        out = torch.full((P, v, d), off, dtype=dtype, device=tokens.device)
        return out.scatter_(1, index.unsqueeze(1), on)
    out = torch.full((P, d, v), off, dtype=dtype, device=tokens.device)
    return out.scatter_(2, index.unsqueeze(2), on)
