"""Deployment: INT8, ONNX, parity, latency, input validation, the §4 service, FHIR, the API,
monitoring, A/B tests and drift (notebook 08, case study §3.8 and §4).

Layout (see each module's docstring):

* :mod:`.prepare` - :func:`prepare_for_deployment` (the five steps of §3.8) and its config.
* :mod:`.quantize` - INT8 dynamic quantisation of the LM, sizes on disk.
* :mod:`.onnx_export` - ONNX graphs (encoder, embedding, cached decoder step) and
  :class:`OnnxReportModel` (greedy reports with onnxruntime).
* :mod:`.parity` - max |Δlogit|, identical text, CheXpert-label agreement.
* :mod:`.benchmark` - interleaved latency timing, p50 / p95 / p99, studies per hour.
* :mod:`.errors`, :mod:`.validation`, :mod:`.fixtures` - input validation and bad inputs.
* :mod:`.backends` - PyTorch fp32 / INT8 and onnxruntime behind one interface.
* :mod:`.service` - :func:`predict_study`, the response schema, the QA review.
* :mod:`.fhir` - FHIR R4 ``DiagnosticReport``.
* :mod:`.batching`, :mod:`.api` - dynamic batching and the FastAPI app (``serve`` CLI).
* :mod:`.monitoring`, :mod:`.ab_test`, :mod:`.drift` - §4 monitoring, promotion, drift.
"""

from __future__ import annotations

from .ab_test import ABResult, paired_ab_test, per_study_metrics, word_edit_distance
from .api import create_app, main, resolve_image_path
from .backends import OnnxBackend, TorchBackend, generate_all
from .batching import DynamicBatcher
from .benchmark import LatencyStats, compare_latency, latency_stats, time_interleaved
from .drift import DriftDetector, mmd2, mmd_permutation_test, render_phantom_batch
from .errors import (
    ChannelError,
    ClinicalContextError,
    DicomError,
    EmptyContextError,
    ImageResizedWarning,
    ImageSizeError,
    InputValidationError,
    IntensityRangeError,
    MissingContextWarning,
    MissingPixelDataError,
    NonFiniteError,
    NotAnImageError,
    PathNotAllowedError,
    TruncatedImageError,
)
from .fhir import FhirValidationError, to_fhir_diagnostic_report, validate_fhir_report
from .monitoring import (
    AlertThresholds,
    CostModel,
    batching_throughput,
    cost_table,
    critical_sensitivity,
    detection_rate_check,
    evaluate_alerts,
    hallucination_stats,
    monitoring_snapshot,
    simulate_stream,
)
from .onnx_export import (
    OnnxReportModel,
    export_decoder_onnx,
    export_encoder_onnx,
    export_onnx,
    quantize_onnx_decoder,
)
from .parity import encoder_parity, generation_parity, label_agreement, logits_parity
from .prepare import (
    DeploymentConfig,
    DeploymentResult,
    package_service,
    prepare_for_deployment,
    run_latency,
    run_parity,
)
from .quantize import (
    FullRangeDynamicLinear,
    count_linears,
    cpu_has_vnni,
    fp16_encoder,
    quantize_language_model,
    size_report,
    state_dict_bytes,
)
from .service import (
    CRITICAL_FINDINGS,
    ReportService,
    StudyReport,
    build_response,
    predict_study,
    qa_review,
    tune_thresholds,
)
from .validation import (
    ImageLimits,
    decode_image_bytes,
    read_dicom,
    validate_clinical_context,
    validate_image,
    validate_pixels,
)

__all__ = [
    "CRITICAL_FINDINGS",
    "ABResult",
    "AlertThresholds",
    "ChannelError",
    "ClinicalContextError",
    "CostModel",
    "DeploymentConfig",
    "DeploymentResult",
    "DicomError",
    "DriftDetector",
    "DynamicBatcher",
    "EmptyContextError",
    "FhirValidationError",
    "ImageLimits",
    "ImageResizedWarning",
    "ImageSizeError",
    "InputValidationError",
    "IntensityRangeError",
    "LatencyStats",
    "MissingContextWarning",
    "MissingPixelDataError",
    "NonFiniteError",
    "NotAnImageError",
    "OnnxBackend",
    "OnnxReportModel",
    "PathNotAllowedError",
    "ReportService",
    "StudyReport",
    "TorchBackend",
    "TruncatedImageError",
    "batching_throughput",
    "build_response",
    "compare_latency",
    "cost_table",
    "FullRangeDynamicLinear",
    "count_linears",
    "cpu_has_vnni",
    "create_app",
    "critical_sensitivity",
    "decode_image_bytes",
    "detection_rate_check",
    "encoder_parity",
    "evaluate_alerts",
    "export_decoder_onnx",
    "export_encoder_onnx",
    "export_onnx",
    "fp16_encoder",
    "generate_all",
    "generation_parity",
    "hallucination_stats",
    "label_agreement",
    "latency_stats",
    "logits_parity",
    "main",
    "mmd2",
    "mmd_permutation_test",
    "monitoring_snapshot",
    "package_service",
    "paired_ab_test",
    "per_study_metrics",
    "predict_study",
    "prepare_for_deployment",
    "qa_review",
    "quantize_language_model",
    "quantize_onnx_decoder",
    "read_dicom",
    "render_phantom_batch",
    "resolve_image_path",
    "run_latency",
    "run_parity",
    "simulate_stream",
    "size_report",
    "state_dict_bytes",
    "time_interleaved",
    "to_fhir_diagnostic_report",
    "tune_thresholds",
    "validate_clinical_context",
    "validate_fhir_report",
    "validate_image",
    "validate_pixels",
    "word_edit_distance",
]
