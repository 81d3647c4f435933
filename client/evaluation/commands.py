"""The ``m3fm-site`` subcommands of this package: evaluate, predict, explain, adapt.

Each command writes only into its ``--out`` folder (default: a folder under the
site's state directory) and reports bad input as one ``ValueError`` message that
``client.cli`` prints without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ProgressFactory = Callable[[str], Any]


def progress_bar(desc: str) -> Callable[[Any, int], Any]:
    """A tqdm progress-bar wrapper on stderr for an iterable of batches."""
    from tqdm import tqdm

    def wrap(items: Any, total: int) -> Any:
        return tqdm(items, total=total, desc=desc, unit="batch", file=sys.stderr)

    return wrap


def _out_dir(args: argparse.Namespace, cfg: Any | None, default: str) -> Path | None:
    if args.out:
        return Path(args.out).expanduser().resolve()
    if cfg is not None:
        return cfg.state_dir / default
    return None


def _cmd_evaluate(args: argparse.Namespace, progress: ProgressFactory) -> int:
    from ..site_config import load_site_config
    from .evaluate import EvalOptions, evaluate_site, format_table, write_outputs
    from .model_io import load_model
    from .subgroups import load_groups_table

    cfg = load_site_config(args.site_config)
    models = [load_model(p, preset=args.preset) for p in [args.model, *args.compare]]
    opts = EvalOptions(
        split=args.split,
        n_boot=args.bootstrap,
        specificity=args.specificity,
        subgroups=tuple(args.by or ("gender", "age")),
        device=args.device or cfg.compute.device,
        seed=args.seed,
    )
    groups = load_groups_table(args.groups) if args.groups else None
    payload = evaluate_site(
        cfg, models, opts, groups=groups, progress=progress("evaluating")
    )
    print(format_table(payload))
    metrics, report = write_outputs(
        payload, _out_dir(args, cfg, f"evaluation-{args.split}")
    )
    print(f"\nmetrics: {metrics}\nreport:  {report}")
    return 0 if payload["tasks"] else 1


def _add_evaluate(sub: Any, progress: ProgressFactory) -> None:
    e = sub.add_parser(
        "evaluate",
        help="metrics with 95%% CIs of one or more models on the site's data",
    )
    e.add_argument(
        "--model", required=True, help="checkpoint (final_model.pt or model.pt)"
    )
    e.add_argument("--site-config", required=True)
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="CKPT",
        help="models to set side by side",
    )
    e.add_argument(
        "--preset", help="preset when no model card is beside the checkpoint"
    )
    e.add_argument(
        "--by", action="append", metavar="FIELD",
        help="subgroup field (repeatable): a clinical data type, 'ct', or a --groups "
        "column (default: gender and age)",
    )  # fmt: skip
    e.add_argument(
        "--groups", help="table with exam_id + extra subgroup columns (scanner)"
    )
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    e.add_argument("--specificity", type=float, default=0.9)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", help="cpu, cuda, ... (default: the site config's)")
    e.add_argument(
        "--out", help="output folder (default: <state-dir>/evaluation-<split>)"
    )
    e.set_defaults(func=lambda a: _cmd_evaluate(a, progress))


def _exam_args(p: Any) -> None:
    p.add_argument(
        "--model", required=True, help="checkpoint (final_model.pt or model.pt)"
    )
    p.add_argument("--exam", help="DICOM folder of one exam (CT)")
    p.add_argument("--clinical", help="clinical data: JSON object, .json, .csv, ...")
    p.add_argument("--question", required=True, help="free-text question")
    p.add_argument("--exam-id", help="exam to use when the folder holds several")
    p.add_argument(
        "--preset", help="preset when no model card is beside the checkpoint"
    )
    p.add_argument(
        "--site-config", help="site config: DICOM ID tags and the default --out folder"
    )
    p.add_argument("--out", help="output folder (default: under the site's state-dir)")


def _load_exam_and_model(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from ..site_config import load_site_config
    from .exam_input import load_exam
    from .model_io import load_model

    cfg = load_site_config(args.site_config) if args.site_config else None
    loaded = load_model(args.model, preset=args.preset)
    tags = None
    if cfg is not None:
        tags = {
            "patient_id_tag": cfg.dicom.patient_id_tag,
            "exam_id_tag": cfg.dicom.exam_id_tag,
        }
    inputs = load_exam(
        preset=loaded.preset, dicom_dir=args.exam, clinical=args.clinical,
        exam_id=args.exam_id, tags=tags,
    )  # fmt: skip
    return cfg, loaded, inputs


def _write_json(path: Path, payload: Any) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return path


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict_exam

    cfg, loaded, inputs = _load_exam_and_model(args)
    ans, record = predict_exam(loaded, inputs, args.question)
    print(f"[{ans.task}] {ans.text}")
    written = []
    if args.json:
        written.append(_write_json(Path(args.json).expanduser(), record))
    out = _out_dir(args, cfg, "predictions")
    if out is not None:
        written.append(_write_json(out / "prediction.json", record))
    for path in written:
        print(f"json: {path}")
    return 0


def _add_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="answer a question about one exam")
    _exam_args(p)
    p.add_argument("--json", help="write the answer record to this JSON file")
    p.set_defaults(func=_cmd_predict)


def _cmd_explain(args: argparse.Namespace) -> int:
    from .explain_cmd import explain_exam, format_fields, write_explanation

    cfg, loaded, inputs = _load_exam_and_model(args)
    result = explain_exam(loaded, inputs, args.question, args.ct_method)
    print(f"[{result.record['task']}] {result.record['answer']['text']}")
    if result.ct_share is not None:
        print(f"CT share of the relevance: {100 * result.ct_share:.1f}%")
    if result.fields:
        print(format_fields(result))
    out = _out_dir(args, cfg, "explanations")
    if out is None:
        raise ValueError(
            "explain writes images and HTML: give --out DIR (or --site-config)"
        )
    for path in write_explanation(result, inputs, out):
        print(f"wrote {path}")
    return 0


def _add_explain(sub: Any) -> None:
    p = sub.add_parser("explain", help="which data elements drove an answer (one exam)")
    _exam_args(p)
    p.add_argument(
        "--ct-method",
        choices=("gradient", "rollout"),  # m3fm_model.explain.CT_METHODS; no torch here
        default="gradient",
        help="CT relevance: |gradient x input| through the whole model (default) or "
        "attention rollout over the fusion layers",
    )
    p.set_defaults(func=_cmd_explain)


def add_site_commands(sub: Any, progress: ProgressFactory = progress_bar) -> None:
    """Register evaluate, predict, explain and adapt on ``m3fm-site``'s subparsers.

    Args:
        sub: The subparsers action of the ``m3fm-site`` parser.
        progress: Description -> progress-bar wrapper.
    """
    _add_evaluate(sub, progress)
    _add_predict(sub)
    _add_explain(sub)
    _add_adapt(sub)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _cmd_adapt(args: argparse.Namespace) -> int:
    from ..cache import ExamCache
    from ..site_config import load_site_config
    from ..site_dataset import load_manifest
    from .adapt import AdaptOptions, cross_validate, fit_final, subsample
    from .adapt_data import load_labelled_exams
    from .adapt_output import format_cv, write_adapted
    from .model_io import load_model
    from .task_spec import load_new_task

    cfg = load_site_config(args.site_config)
    loaded = load_model(args.model, preset=args.preset)
    task = load_new_task(args.task)
    data = load_labelled_exams(task, args.labels, load_manifest(cfg, loaded.preset))
    if args.limit:
        data = subsample(data, args.limit, args.seed)
    opts = AdaptOptions(
        steps=args.steps, folds=args.folds, seed=args.seed,
        train_fusion=args.train_fusion, fusion_steps=args.fusion_steps,
    )  # fmt: skip
    if opts.train_fusion:
        print(
            f"training: the fusion layers (task_attention) and the {task.spec.name} "
            f"head, {opts.fusion_steps} steps of {opts.fusion_batch} exams; "
            "CT and text encoders frozen"
        )
    else:
        print(
            f"training: the {task.spec.name} head, {opts.steps} full-batch steps; "
            "encoders and fusion layers frozen"
        )
    cache = ExamCache(cfg.cache_dir / "crops")
    report = cross_validate(loaded, task, data, cache, opts)
    print(format_cv(task.spec.name, report))
    model = fit_final(loaded, task, data, cache, opts)
    out = _out_dir(args, cfg, f"adapt-{task.spec.name}")
    written = write_adapted(
        model, loaded, task, report, out, fusion_tuned=opts.train_fusion
    )
    for path in written:
        print(f"wrote {path}")
    if opts.train_fusion:
        print(
            "note: model.pt holds the fine-tuned fusion layers; its answers to the "
            "other tasks go through them too"
        )
    return 0


def _add_adapt(sub: Any) -> None:
    a = sub.add_parser(
        "adapt", help="add a new task head and fit it on a small labelled set"
    )
    a.add_argument("--model", required=True, help="checkpoint to adapt")
    a.add_argument(
        "--task", required=True, help="new-task TOML (see docs/site-evaluation.md)"
    )
    a.add_argument("--labels", required=True, help="labels table of the new task")
    a.add_argument("--site-config", required=True)
    a.add_argument(
        "--preset", help="preset when no model card is beside the checkpoint"
    )
    a.add_argument(
        "--limit", type=int, help="use this many labelled exams (stratified)"
    )
    a.add_argument("--folds", type=int, default=5)
    a.add_argument("--steps", type=int, default=300, help="head training steps")
    a.add_argument(
        "--train-fusion", action="store_true",
        help="fine-tune the fusion layers (task_attention) together with the head; "
        "the encoders stay frozen. The saved model's answers to the other tasks then "
        "go through the fine-tuned fusion layers",
    )  # fmt: skip
    a.add_argument(
        "--fusion-steps", type=int, default=150,
        help="mini-batch steps with --train-fusion (default: 150)",
    )  # fmt: skip
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", help="output folder (default: <state-dir>/adapt-<task>)")
    a.set_defaults(func=_cmd_adapt)
