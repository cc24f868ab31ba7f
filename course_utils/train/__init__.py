"""Training: datasets/collators, augmentations, schedules and `train_two_stage` on accelerate.

Layout (see each module's docstring):

* :mod:`.config` - :class:`TrainConfig` with the ``tiny`` and ``colab`` presets.
* :mod:`.data` - targets (findings / JSON / style), :func:`build_tokenizer`,
  :class:`ReportDataset`, :class:`ReportCollator`, :func:`balanced_sample_weights`.
* :mod:`.augment` - colour inversion, rotation, translation, intensity jitter (:class:`Augmenter`).
* :mod:`.optim` - :func:`configure_stage`, :func:`cosine_with_warmup`, :func:`train_step`, LoRA.
* :mod:`.validate` - validation losses, detection AUROC, the fast generation metric.
* :mod:`.loop` - :func:`train_two_stage`, checkpoints and resuming.
* :mod:`.course` - :func:`course_model`: the trained tiny model notebooks 06-09 reuse.
"""

from __future__ import annotations

from .augment import Augmenter, affine_transform, invert_colours, jitter_intensity
from .config import TARGETS, TrainConfig
from .course import (
    CourseModel,
    build_course_model,
    checkpoint_dir,
    course_model,
    course_train_config,
    load_course_checkpoint,
    load_splits,
    save_course_model,
)
from .data import (
    ReportCollator,
    ReportDataset,
    abnormal_first,
    assign_styles,
    balanced_sample_weights,
    build_tokenizer,
    clean_report,
    example_prompt,
    json_target,
    make_target,
    postprocess_generation,
    style_target,
    tokenizer_corpus,
    word_dropout,
)
from .loop import (
    EpochSampler,
    load_training_state,
    save_model,
    save_training_state,
    train_two_stage,
)
from .optim import (
    add_lora,
    configure_stage,
    cosine_schedule,
    cosine_with_warmup,
    has_lora,
    init_head_from_encoder,
    merged_lora,
    model_inputs,
    stage_parts,
    train_step,
    warmup_steps_for,
)
from .validate import (
    detection_macro_auroc,
    evaluate_loss,
    generate_reports,
    generation_metrics,
    json_to_text,
)

__all__ = [
    "CourseModel",
    "build_course_model",
    "checkpoint_dir",
    "course_model",
    "course_train_config",
    "load_course_checkpoint",
    "load_splits",
    "save_course_model",
    "TARGETS",
    "Augmenter",
    "EpochSampler",
    "ReportCollator",
    "ReportDataset",
    "TrainConfig",
    "abnormal_first",
    "add_lora",
    "affine_transform",
    "assign_styles",
    "balanced_sample_weights",
    "build_tokenizer",
    "clean_report",
    "configure_stage",
    "cosine_schedule",
    "cosine_with_warmup",
    "detection_macro_auroc",
    "evaluate_loss",
    "example_prompt",
    "generate_reports",
    "generation_metrics",
    "has_lora",
    "init_head_from_encoder",
    "invert_colours",
    "jitter_intensity",
    "json_target",
    "json_to_text",
    "load_training_state",
    "make_target",
    "merged_lora",
    "model_inputs",
    "postprocess_generation",
    "save_model",
    "save_training_state",
    "stage_parts",
    "style_target",
    "tokenizer_corpus",
    "train_step",
    "train_two_stage",
    "warmup_steps_for",
    "word_dropout",
]
