import pytest
import torch

from m3fm_model import TASKS, build_model
from m3fm_model.clinical import serialize
from m3fm_model.prompting import Exam, QuestionRouter, UnknownQuestionError, answer
from m3fm_model.routing import fit_question_router
from m3fm_model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def trained(tok):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model("tiny")
    loss = fit_question_router(model, tok, steps=300, batch_size=128)
    assert loss < 0.5
    return model.eval(), QuestionRouter(model, tok)


# Wordings that are not in the registry.
PARAPHRASES = [
    ("cancer_risk", "predict the lung cancer risk over six years"),
    ("cancer_risk", "Please predict the lung cancer risk over the next six years."),
    ("cancer_risk", "What is the six-year lung cancer risk for this patient?"),
    ("heart", "is there any significant cardiovascular abnormality"),
    ("covid19", "Does this CT suggest COVID-19 infection?"),
    ("lung_rads", "Which Lung-RADS category fits this nodule?"),
    ("fibrosis", "Is there pulmonary fibrosis or honeycombing?"),
    ("emphysema", "Can you see emphysema in the lungs?"),
    ("cvd_mortality", "How likely is death from cardiovascular disease?"),
]
NONSENSE = [
    "What is the capital of Italy?",
    "Please call a taxi.",
    "How deep is the ocean?",
    "asdf qwer zxcv",
    "Is the coffee machine broken?",
    "What day is it today?",
]


def test_registry_questions_route_exactly(trained):
    _, router = trained
    for name, spec in TASKS.items():
        for q in spec.questions:
            assert router.route(q).task == name


def _routed(router, question):
    try:
        return router.route(question).task
    except UnknownQuestionError:
        return None


def test_paraphrases_route_to_their_task(trained):
    # A tiny encoder trained only on the registry generalises to close rewordings; the
    # rate (not every single wording) is the capability under test.
    _, router = trained
    got = [_routed(router, q) for _, q in PARAPHRASES]
    correct = sum(g == t for g, (t, _) in zip(got, PARAPHRASES, strict=True))
    wrong = sum(
        g is not None and g != t for g, (t, _) in zip(got, PARAPHRASES, strict=True)
    )
    assert correct >= 8, got
    assert wrong <= 1, got


def test_nonsense_is_refused_with_known_tasks(trained):
    _, router = trained
    assert [_routed(router, q) for q in NONSENSE] == [None] * len(NONSENSE)
    for q in ("", "   ", NONSENSE[0]):
        with pytest.raises(UnknownQuestionError, match="cancer_risk"):
            router.route(q)


def test_untrained_encoder_does_not_route_free_text(tok):
    # Without the routing objective, the space is not trusted: nonsense is refused too.
    torch.manual_seed(1)
    router = QuestionRouter(build_model("tiny").eval(), tok)
    with pytest.raises(UnknownQuestionError):
        router.route("What is the capital of Italy?")


def test_answer_cancer_risk_gives_six_monotone_probabilities(trained, tok):
    model, router = trained
    crop = model.config.crop_for_roi("lung")
    exam = Exam(
        ct=torch.rand(1, *crop) * 2 - 1,
        spacing_mm=(2.0, 1.5, 1.5),
        clinical_text=serialize({"age": 66, "pack_years": 40}),
    )
    ans = answer(
        model,
        exam,
        "Predict the lung cancer risk over six years.",
        tokenizer=tok,
        router=router,
    )
    assert ans.task == "cancer_risk"
    assert len(ans.risk_by_year) == 6
    assert all(0 < r < 1 for r in ans.risk_by_year)
    assert ans.risk_by_year == sorted(ans.risk_by_year)
    assert "year 6" in ans.text


@pytest.mark.parametrize("with_ct,with_text", [(True, False), (False, True)])
def test_answer_with_one_modality(trained, tok, with_ct, with_text):
    model, router = trained
    crop = model.config.crop_for_roi("heart")
    exam = Exam(
        ct=torch.rand(1, *crop) * 2 - 1 if with_ct else None,
        spacing_mm=(2.0, 1.0, 1.0) if with_ct else None,
        clinical_text="The patient is 70.0 years old." if with_text else None,
    )
    ans = answer(
        model,
        exam,
        "Is there any significant cardiovascular abnormality?",
        tokenizer=tok,
        router=router,
    )
    assert set(ans.probabilities) == {"no", "yes"}
    assert sum(ans.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_answer_number_and_missing_inputs(trained, tok):
    model, router = trained
    q = TASKS["clinical_number"].questions[0]
    ans = answer(
        model,
        Exam(clinical_text="The patient is 68.0 years old."),
        q,
        tokenizer=tok,
        router=router,
    )
    assert ans.number is not None and 0 <= ans.number <= 999
    with pytest.raises(ValueError, match="neither"):
        answer(model, Exam(), q, tokenizer=tok, router=router)
