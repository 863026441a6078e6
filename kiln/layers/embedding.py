"""Token embedding and the LM head (which may share the embedding's weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kiln.errors import KilnError


class VocabEmbedding(nn.Module):
    """Looks up rows of a [vocab_size, hidden_size] table."""

    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype,
                 device: torch.device | str):
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size, dtype=dtype, device=device),
                                   requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[T] token ids -> [T, hidden_size]."""
        return F.embedding(input_ids, self.weight)


class LMHead(nn.Module):
    """Projects hidden rows onto the vocabulary; logits come back in float32.

    With ``tied_to`` the head reads the embedding's table instead of owning one (Qwen2.5 small
    models, Llama 3.2 1B/3B), so the checkpoint needs no lm_head tensor. A quantized head
    (``method``) always owns its tensors: an engine built with --lm-head-quant stores a quantized
    copy of a tied table as the head's, and the embedding keeps the float table for its lookups.
    """

    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype,
                 device: torch.device | str, tied_to: VocabEmbedding | None = None,
                 method=None):
        super().__init__()
        self.vocab_size = vocab_size
        self.dtype = dtype
        # A plain attribute list keeps the tied module out of this module's parameters, so it is
        # neither listed nor loaded twice.
        self._tied = [tied_to] if tied_to is not None and method is None else []
        # With a quantized LinearMethod (an engine built with --lm-head-quant) the head stores
        # that method's tensors (weight, weight_scale) and computes through it, as a Linear would.
        self.method = method
        self.in_features, self.out_features = hidden_size, vocab_size
        self.output_sizes, self.has_bias = (vocab_size,), False
        if method is not None:
            method.create_weights(self, dtype, device)
        elif tied_to is None:
            self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size, dtype=dtype, device=device),
                                       requires_grad=False)

    @property
    def is_tied(self) -> bool:
        """Whether the head shares the token embedding's weight."""
        return bool(self._tied)

    @property
    def is_quantized(self) -> bool:
        """Whether the head computes through a quantized LinearMethod."""
        return self.method is not None

    def table(self) -> torch.Tensor:
        """The [vocab_size, hidden_size] matrix the head multiplies with (unquantized heads)."""
        if self.method is not None:
            raise KilnError("a quantized LM head has no float table")
        return self._tied[0].weight if self._tied else self.weight

    def finish_loading(self) -> None:
        """Once loaded, an unquantized bfloat16 head on CUDA keeps a second copy of its table in
        the order of kiln.kernels.mma_direct (``mma_direct``) when KILN_MMA_DIRECT names float
        (a quantized head's method does this for its own tensors)."""
        self.mma_direct = None
        if self.method is None:
            from kiln.kernels import mma_direct
            self.mma_direct = mma_direct.pack_if_enabled(self.table().data)

    def forward(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[N, hidden_size] -> [N, vocab_size] float32 (matmul in the model dtype, like HF).

        ``out`` ([N, vocab_size]) receives the logits instead of a new tensor: the decode graphs of
        every batch size write into one shared buffer this way. An ``out`` in the model dtype
        takes the matmul's result as it is, with no float32 copy (the decode graphs' buffer: a
        greedy step's argmax needs no float32 logits, and float32 of a bf16 value is exact).
        """
        if self.method is not None:
            if out is not None and out.dtype == hidden.dtype:
                return self.method.apply_into(self, hidden, out)
            logits = self.method.apply(self, hidden)  # in the model dtype
        else:
            table = self.table()
            words = getattr(self, "mma_direct", None)
            if words is not None and hidden.is_cuda and hidden.dtype == table.dtype:
                from kiln.kernels import mma_direct
                rows = hidden.numel() // hidden.shape[-1]
                if 0 < rows <= mma_direct.MMA_DIRECT_MAX_M and mma_direct.mma_direct_enabled("float"):
                    if out is not None and out.dtype == hidden.dtype and out.is_contiguous():
                        return mma_direct.linear(hidden, words, None, self.vocab_size, out=out)
                    logits = mma_direct.linear(hidden, words, None, self.vocab_size)
                    return logits.float() if out is None else out.copy_(logits)
            if out is not None and out.dtype == hidden.dtype == table.dtype:
                if hidden.is_cuda and hidden.shape[0] == 1 and out.is_contiguous():
                    from kiln.kernels import ring_gemv as rg
                    if rg.ring_gemv_enabled(head=True) and rg.ring_gemv_ok(hidden, table):
                        return rg.ring_gemv(hidden, table, None, out=out)
                return torch.mm(hidden, table.t(), out=out)
            logits = F.linear(hidden, table)
        if out is None:
            return logits.float()
        return out.copy_(logits)
