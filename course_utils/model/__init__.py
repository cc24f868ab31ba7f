"""Model: frozen vision encoder -> projector -> causal LM + detection head; Qwen2-VL/LoRA track.

Layout (see each module's docstring):

* :mod:`.configuration` - :class:`ModelConfig` with the ``tiny`` and ``colab`` presets.
* :mod:`.components` - :class:`Projector`, :class:`DetectionHead`, the loss functions, builders.
* :mod:`.multimodal` - :class:`RadiologyMultimodalModel` (forward, save/load).
* :mod:`.generation` - greedy / beam-search generation with sequence log-probabilities.
* :mod:`.prompts` - the instruction prompt with optional clinical context; id encoding.
* :mod:`.params` - parameter counts and memory estimates.
* :mod:`.encoder` - the course-pretrained ViT encoder (``python -m course_utils pretrain-encoder``).
* :mod:`.qwen2vl` - R2Gen2's Qwen2-VL with LoRA / QLoRA behind the same interface.
"""

from __future__ import annotations

from .components import (
    IGNORE_INDEX,
    DetectionHead,
    Projector,
    build_language_model,
    build_vision_encoder,
    detection_loss,
    detection_targets,
    report_loss,
)
from .configuration import COURSE_ENCODER, NUM_LABELS, ModelConfig
from .encoder import (
    default_encoder_dir,
    ensure_pretrained_encoder,
    fit_encoder,
    load_pretrained_encoder,
    load_pretraining_metrics,
    macro_auroc,
    per_label_auroc,
    predict_probs,
    pretrain_encoder,
)
from .generation import GenerationResult
from .multimodal import MultimodalOutput, RadiologyMultimodalModel
from .params import count_parameters, memory_estimate, parameter_bytes, trainable_parameters
from .prompts import (
    build_prompt,
    clinical_context,
    encode_example,
    encode_prompt,
    pad_batch,
    prompt_corpus,
    prompt_from_metadata,
)
from .qwen2vl import (
    Qwen2VLReportModel,
    apply_lora,
    build_qwen2vl,
    qwen2vl_components,
    qwen2vl_config,
    trainable_fraction,
)

__all__ = [
    "COURSE_ENCODER",
    "IGNORE_INDEX",
    "NUM_LABELS",
    "DetectionHead",
    "GenerationResult",
    "ModelConfig",
    "MultimodalOutput",
    "Projector",
    "Qwen2VLReportModel",
    "RadiologyMultimodalModel",
    "apply_lora",
    "build_language_model",
    "build_prompt",
    "build_qwen2vl",
    "build_vision_encoder",
    "clinical_context",
    "count_parameters",
    "default_encoder_dir",
    "detection_loss",
    "detection_targets",
    "encode_example",
    "encode_prompt",
    "ensure_pretrained_encoder",
    "fit_encoder",
    "load_pretrained_encoder",
    "load_pretraining_metrics",
    "macro_auroc",
    "memory_estimate",
    "pad_batch",
    "parameter_bytes",
    "per_label_auroc",
    "predict_probs",
    "pretrain_encoder",
    "prompt_corpus",
    "prompt_from_metadata",
    "qwen2vl_components",
    "qwen2vl_config",
    "report_loss",
    "trainable_fraction",
    "trainable_parameters",
]
