"""Model demo: the tiny preset answers free-text questions about a generated exam.

It builds the model, teaches its question encoder to route questions to tasks, and
answers questions about a CT crop plus a clinical paragraph.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from .builders import build_model, count_parameters
from .clinical import random_record, serialize
from .prompting import Exam, QuestionRouter, UnknownQuestionError, answer
from .routing import fit_question_router
from .tokenizer import load_tokenizer

QUESTIONS = (
    "Predict the lung cancer risk over six years.",
    "Please predict the lung cancer risk over the next six years.",
    "Is there any significant cardiovascular abnormality?",
    "How many pack-years has the patient smoked?",
    "What is the capital of France?",
)


def main(argv: list[str] | None = None) -> int:
    """Run the demo and print the answers."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--router-steps", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    tok = load_tokenizer()
    model = build_model("tiny")
    print(
        f"tiny preset: {count_parameters(model):,} parameters, {len(model.tasks)} task heads"
    )
    start = time.perf_counter()
    loss = fit_question_router(model, tok, steps=args.router_steps, batch_size=128)
    print(
        f"question router trained in {time.perf_counter() - start:.1f} s (loss {loss:.3f})"
    )
    router = QuestionRouter(model.eval(), tok)
    record = random_record(np.random.default_rng(args.seed), completeness=0.8)
    crop = model.config.crop_for_roi("lung")
    exam = Exam(
        ct=torch.rand(1, *crop) * 2 - 1,
        spacing_mm=(2.0, 1.5, 1.5),
        clinical_text=serialize(record),
    )
    print(f"clinical text: {exam.clinical_text}\n")
    for question in QUESTIONS:
        try:
            ans = answer(model, exam, question, tokenizer=tok, router=router)
            print(f"Q: {question}\n   -> [{ans.task}] {ans.text}")
        except UnknownQuestionError as err:
            print(f"Q: {question}\n   -> refused: {str(err)[:120]}...")
    print("\n(untrained weights: the answers show the plumbing, not clinical skill)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
