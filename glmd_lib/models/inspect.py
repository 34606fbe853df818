"""What notebook 00 shows about a teacher: next-word distributions, size and speed on this machine."""
from __future__ import annotations

import time

import pandas as pd
import torch

from glmd_lib.models.teacher import count_parameters, model_kind


@torch.no_grad()
def next_token_table(model, tokenizer, prompts: list[str], k: int = 10) -> pd.DataFrame:
    """Top-k next tokens after each prompt (causal LMs), or at an appended mask (masked LMs)."""
    device = next(model.parameters()).device
    rows = []
    masked = model_kind(model.config) == "masked"
    for prompt in prompts:
        text = f"{prompt} {tokenizer.mask_token}" if masked else prompt
        enc = tokenizer(text, return_tensors="pt").to(device)
        logits = model(**enc).logits[0]
        pos = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0] if masked else -1
        probs = logits[pos].float().softmax(-1)
        top = probs.topk(k)
        for rank, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1):
            rows.append({"prompt": prompt, "rank": rank, "token": tokenizer.decode([i]), "token_id": i,
                         "probability": p})
    return pd.DataFrame(rows)


def describe(model, tokenizer) -> dict:
    cfg = model.config
    return {
        "architecture": type(model).__name__,
        "kind": model_kind(cfg),
        "parameters": count_parameters(model),
        "vocab_size": len(tokenizer),
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "attention_heads": getattr(cfg, "num_attention_heads", None),
        "max_positions": getattr(cfg, "max_position_embeddings", None),
        "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
    }


@torch.no_grad()
def forward_speed(model, vocab_size: int, batches: int = 3, batch_size: int = 8, seq_len: int = 128,
                  seed: int = 0) -> dict:
    """Tokens per second of a plain forward pass on random ids (one warm-up batch not timed)."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batches + 1, batch_size, seq_len), generator=g)
    model(input_ids=ids[0].to(device))  # warm-up
    start = time.perf_counter()
    for b in range(1, batches + 1):
        model(input_ids=ids[b].to(device))
    elapsed = time.perf_counter() - start
    tokens = batches * batch_size * seq_len
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed,
            "batch_size": batch_size, "seq_len": seq_len, "threads": torch.get_num_threads()}
