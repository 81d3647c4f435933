"""Training signal that makes the question-encoder space route questions to tasks.

The head is chosen by the task key, so plain task training gives the question encoder no
reason to separate tasks. This objective does: each registry paraphrase is pulled towards
its task's prototype (mean embedding of that task's paraphrases) and pushed below a
rejection threshold for every other task, and out-of-scope questions are pushed below the
threshold for all tasks. It runs alongside task training (as an auxiliary loss) or alone
(``fit_question_router``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .m3fm import M3FM
from .tasks import TASKS, TaskSpec
from .tokenizer import TextTokenizer

# Generic questions no task answers; they teach the router to refuse.
OUT_OF_SCOPE = (
    "What is the capital of France?",
    "Please book a taxi for five pm.",
    "How tall is Mount Everest?",
    "Is the printer out of paper?",
    "What time is it now?",
    "Who won the football match yesterday?",
    "Can you recommend a good restaurant nearby?",
    "How do I reset my password?",
    "What is the weather forecast for tomorrow?",
    "Translate hello into Spanish.",
    "When does the cafeteria open?",
    "How many beds does the hospital have?",
    "Send the report to the billing office.",
    "What is two plus two?",
    "Who is the attending physician on call tonight?",
    "Where is the parking garage?",
)
# Ways people wrap a question in free text; training on them keeps fillers and case from
# moving a question out of its task's region.
_WRAPPERS = (
    "{q}",
    "{lower}",
    "Please {lower}",
    "Can you tell me: {lower}",
    "{q} Thanks.",
    "For this patient, {lower}",
)
ROUTE_THRESHOLD = 0.6
_TEMPERATURE = 0.1


def pooled_question_embedding(
    model: M3FM, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Unit-norm (B, Dt) mean of the question encoder's token states over real tokens."""
    states = model.text_encoder(ids, mask)
    m = mask[..., None].to(states.dtype)
    pooled = (states * m).sum(1) / m.sum(1).clamp(min=1)
    return F.normalize(pooled.float(), dim=-1)


def routing_batch(
    tokenizer: TextTokenizer,
    registry: Mapping[str, TaskSpec],
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All registry paraphrases and out-of-scope questions, in several wrappings.

    Returns:
        ids (N, L), mask (N, L), labels (N,) with the task index, or len(registry) for
        out-of-scope questions.
    """
    names = list(registry)
    texts, labels = [], []
    for i, name in enumerate(names):
        for q in registry[name].questions:
            lower = q[0].lower() + q[1:]
            texts += [w.format(q=q, lower=lower) for w in _WRAPPERS]
            labels += [i] * len(_WRAPPERS)
    for q in OUT_OF_SCOPE:
        lower = q[0].lower() + q[1:]
        texts += [w.format(q=q, lower=lower) for w in _WRAPPERS]
        labels += [len(names)] * len(_WRAPPERS)
    ids, mask = tokenizer.encode(texts, max_length)
    return ids, mask, torch.tensor(labels)


def routing_loss(
    model: M3FM,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    num_tasks: int,
    *,
    word_dropout: float = 0.15,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Prototype cross-entropy with a rejection class at the routing threshold.

    Args:
        model: model whose text encoder is trained.
        ids: tokenized questions (N, L).
        mask: (N, L) True = real token.
        labels: (N,) task index, or ``num_tasks`` for out-of-scope questions.
        num_tasks: number of tasks (the rejection class index).
        word_dropout: probability of hiding each non-BOS token (augmentation).
        generator: RNG for the dropout.
    """
    keep = torch.rand(ids.shape, generator=generator) >= word_dropout
    keep[:, 0] = True
    emb = pooled_question_embedding(model, ids, mask & keep.to(mask.device))
    labels = labels.to(emb.device)
    present = [int(t) for t in labels.unique() if int(t) < num_tasks]
    if not present:
        raise ValueError("the routing batch holds no in-scope question")
    protos = F.normalize(
        torch.stack([emb[labels == t].mean(0) for t in present]), dim=-1
    )
    logits = emb @ protos.T
    reject = torch.full_like(logits[:, :1], ROUTE_THRESHOLD)
    logits = torch.cat([logits, reject], dim=1) / _TEMPERATURE
    index = {t: i for i, t in enumerate(present)}
    target = torch.tensor(
        [index.get(int(t), len(present)) for t in labels], device=emb.device
    )
    return F.cross_entropy(logits, target)


def fit_question_router(
    model: M3FM,
    tokenizer: TextTokenizer,
    *,
    registry: Mapping[str, TaskSpec] | None = None,
    steps: int = 200,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
) -> float:
    """Train only the text encoder on the routing objective; returns the final loss."""
    reg = {t: (registry or TASKS)[t] for t in model.tasks if t in (registry or TASKS)}
    ids, mask, labels = routing_batch(tokenizer, reg, model.config.text.question_len)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    opt = torch.optim.AdamW(model.text_encoder.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.train()
    loss = torch.zeros(())
    for _ in range(steps):
        pick = torch.randperm(len(labels), generator=gen)[:batch_size]
        loss = routing_loss(
            model, ids[pick], mask[pick], labels[pick], len(reg), generator=gen
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.train(was_training)
    return float(loss.detach())
