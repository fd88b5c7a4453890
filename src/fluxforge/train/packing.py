"""Packed windows and the attention they allow: causal, optionally stopped at document boundaries.

Windows are cut from one token stream in which documents are separated by EOS, so a window holds the
tail of one document, whole documents and the head of another. By default attention is plainly causal
across those boundaries (GPT-3, Llama 1/2 practice). With ``doc_mask`` each token attends only to
earlier tokens of its own document and positions restart at 0 for each document, as variable-length
("intra-document") attention does in Llama 3, OLMo-core and torchtitan, and as the MeCo runs do
(methods.md section 1: "no cross-document attention"). Zhao et al. 2024 (arXiv 2402.13991) measure
the gain; here it keeps a document from conditioning on an unrelated neighbour.

The mask is an explicit 4-D boolean ``(B, 1, L, L)`` handed to the HF model, which passes custom 4-D
masks through unchanged (``transformers.masking_utils``): it works with eager and SDPA attention on CPU
and GPU. On GPU a FlashAttention-2 varlen kernel would skip the masked blocks entirely; this mask costs
O(L^2) memory per row, fine for the sequence lengths a CPU trains at.
"""

from __future__ import annotations

import torch


def segments(inputs: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Document index of each input position: a new document starts right after each EOS."""
    starts = torch.zeros_like(inputs, dtype=torch.long)
    starts[:, 1:] = (inputs[:, :-1] == eos_id).long()
    return starts.cumsum(dim=1)


def document_attention(inputs: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention mask ``(B, 1, L, L)`` bool, True = may attend; position ids ``(B, L)`` restarting per document)."""
    seg = segments(inputs, eos_id)
    length = inputs.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=inputs.device).tril()
    same = seg[:, :, None] == seg[:, None, :]
    mask = (same & causal)[:, None]
    idx = torch.arange(length, device=inputs.device).expand_as(seg)
    # position of each segment's first token: the running max of "start index" over the row
    is_start = torch.ones_like(seg, dtype=torch.bool)
    is_start[:, 1:] = seg[:, 1:] != seg[:, :-1]
    first = torch.where(is_start, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return mask, idx - first
