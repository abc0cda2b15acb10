"""From token ids to training batches. Explained in chapter 8."""

from __future__ import annotations

import torch


def to_tensor(ids) -> torch.Tensor:
    """A list of token ids as a 1-D int64 tensor."""
    return torch.as_tensor(ids, dtype=torch.long)


def pack_blocks(ids: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cut a 1-D id tensor into non-overlapping windows of block_size + 1 (inputs + next token).

    Returns (N, block_size + 1); the tail that does not fill a window is dropped.
    """
    n = (len(ids) - 1) // block_size
    if n < 1:
        raise ValueError(f"need more than {block_size} tokens to make one block, got {len(ids)}")
    return torch.stack([ids[i * block_size : i * block_size + block_size + 1] for i in range(n)])


def random_batch(
    ids: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
):
    """Sample batch_size random windows: x (B, block_size) and targets y = x shifted by one."""
    if len(ids) <= block_size:
        raise ValueError(f"need more than block_size={block_size} tokens, got {len(ids)}")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    x = torch.stack([ids[s : s + block_size] for s in starts])
    y = torch.stack([ids[s + 1 : s + 1 + block_size] for s in starts])
    return x, y


class BlockDataset(torch.utils.data.Dataset):
    """Packed blocks as a ``Dataset`` of (x, y) pairs for a ``DataLoader``."""

    def __init__(self, ids: torch.Tensor, block_size: int):
        self.blocks = pack_blocks(ids, block_size)

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        b = self.blocks[i]
        return b[:-1], b[1:]
