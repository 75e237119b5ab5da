"""Decoder calls with explicit positions and KV cache, and greedy decoding (transformers 5 API).

Any transformers causal LM works: the decoder is ``lm.get_decoder()``, the head
``lm.get_output_embeddings()``. Positions are always passed (``position_ids``), never inferred,
so a query that continues a cached prefix gets the same positions as the full sequence would.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel


@dataclass(frozen=True)
class GenerationOutput:
    token_ids: list[int]  # generated ids (incl. the eos id when generation stopped there)
    step_logits: torch.Tensor | None  # [T, vocab] float32 raw logits of each greedy step (None for beams)
    stopped_at_eos: bool


def new_cache(language_model: PreTrainedModel) -> DynamicCache:
    return DynamicCache(config=language_model.config)


def decode(language_model: PreTrainedModel, embeds: torch.Tensor, start: int, cache: Any) -> torch.Tensor:
    """Run [T, H] embeddings at positions start..start+T-1 on ``cache`` (extended in place) -> [T, H].

    [B, T, H] runs B sequences at the same positions (the cache holds B rows) -> [B, T, H].
    """
    batch = embeds if embeds.dim() == 3 else embeds[None]
    positions = torch.arange(start, start + batch.shape[1], device=embeds.device)[None].expand(batch.shape[0], -1)
    decoder: Any = language_model.get_decoder()
    out = decoder(inputs_embeds=batch, position_ids=positions, cache=cache, use_cache=True)
    return out.last_hidden_state if embeds.dim() == 3 else out.last_hidden_state[0]


def repetition_processors(generation_config: Any) -> Any:
    """transformers' repetition penalty when generation_config asks for one, else None."""
    penalty = getattr(generation_config, "repetition_penalty", None)
    if penalty is None or float(penalty) == 1.0:
        return None
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    return LogitsProcessorList([RepetitionPenaltyLogitsProcessor(float(penalty))])


@torch.no_grad()
def greedy_continue(language_model: PreTrainedModel, last_hidden: torch.Tensor, cache: Any, position: int,
                    max_new_tokens: int, eos_token_ids: Iterable[int] = (), processors: Any = None) -> GenerationOutput:
    """Greedy decoding from the final hidden state [H] of the prompt's last position.

    ``position`` is the position the first generated token will take (= prompt length). The
    penalty processors see only the generated tokens, as transformers' ``generate`` does when it
    is given embeddings without ids. Stops after an eos id or ``max_new_tokens``.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    eos = set(int(e) for e in eos_token_ids)
    head: Any = language_model.get_output_embeddings()
    embed: Any = language_model.get_input_embeddings()
    logits = head(last_hidden[None]).float()
    generated: list[int] = []
    steps: list[torch.Tensor] = []
    stopped = False
    for step in range(max_new_tokens):
        steps.append(logits[0])
        scores = logits
        if processors is not None:
            seen = torch.tensor([generated], dtype=torch.long, device=logits.device)
            scores = processors(seen, logits.clone())
        token = int(torch.argmax(scores[0]))
        generated.append(token)
        if token in eos:
            stopped = True
            break
        if step == max_new_tokens - 1:
            break
        token_embed = embed(torch.tensor([token], device=last_hidden.device))
        hidden = decode(language_model, token_embed, position, cache)
        position += 1
        logits = head(hidden[-1:]).float()
    return GenerationOutput(token_ids=generated, step_logits=torch.stack(steps), stopped_at_eos=stopped)
