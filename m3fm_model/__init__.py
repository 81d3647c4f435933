"""M3FM: medical multimodal multitask foundation model for lung-cancer screening (PyTorch)."""

from .builders import build_from_config, build_model, count_parameters
from .config import ModelConfig, preset_config
from .convert_weights import load_authors_checkpoint
from .m3fm import M3FM, M3FMOutput
from .prompting import Answer, Exam, QuestionRouter, UnknownQuestionError, answer
from .tasks import TASKS, AnswerKind, TaskSpec

__all__ = [
    "Answer",
    "Exam",
    "M3FM",
    "QuestionRouter",
    "UnknownQuestionError",
    "answer",
    "TASKS",
    "AnswerKind",
    "M3FMOutput",
    "ModelConfig",
    "TaskSpec",
    "build_from_config",
    "build_model",
    "count_parameters",
    "load_authors_checkpoint",
    "preset_config",
]
