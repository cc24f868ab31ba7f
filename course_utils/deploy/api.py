"""FastAPI app: ``POST /api/v1/studies/{study_id}/report`` with dynamic batching (case study §4).

Request (JSON, the case study's fields)::

    {"study_id": "1.2.840...", "images": [{"series_uid": "...", "instance_uid": "...",
      "view": "PA", "path": "p10/p10000032/s50414267/abc.jpg"}],
     "clinical_context": {"age": 67, "sex": "M", "indication": "Shortness of breath",
                          "prior_studies": ["2024-01-15"]},
     "report_template": "standard", "confidence_threshold": 0.85}

Each image is either *referenced* by ``path``, relative to the server's configured image root
(absolute paths, ``..`` and symlinks that lead outside the root are refused with 403), or
*uploaded* inline as ``data_base64`` (JPEG, PNG or DICOM bytes). The first frontal image (PA,
then AP) is reported; lateral views are accepted and ignored (the model reads one frontal view).

Errors are JSON ``{"error": <exception name>, "detail": <message>}``: 422 for invalid input
(:mod:`course_utils.deploy.errors`), 403 for a path outside the root, 404 for a missing file.

``python -m course_utils serve`` calls :func:`main`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from pydantic import BaseModel, Field

from .batching import DynamicBatcher
from .errors import InputValidationError, NotAnImageError, PathNotAllowedError
from .service import DEFAULT_CONFIDENCE_THRESHOLD, ReportService, StudyReport

FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LATERAL", "LL", "RL")


class ImageRef(BaseModel):
    """One image of the study: a path under the image root, or inline base64 bytes."""

    series_uid: str | None = None
    instance_uid: str | None = None
    view: str = "PA"
    path: str | None = None
    data_base64: str | None = None


class StudyRequest(BaseModel):
    """The request body of case study §4."""

    study_id: str = Field(min_length=1, max_length=128)
    images: list[ImageRef] = Field(min_length=1, max_length=8)
    clinical_context: dict[str, Any] | None = None
    report_template: Literal["standard"] = "standard"
    confidence_threshold: float = Field(DEFAULT_CONFIDENCE_THRESHOLD, gt=0.0, le=1.0)


class NoFrontalImageError(InputValidationError):
    """The study has no PA or AP image (the model reads a frontal view)."""


class StudyMismatchError(InputValidationError):
    """The body's ``study_id`` differs from the URL's."""


def resolve_image_path(root: str | os.PathLike, relative: str) -> Path:
    """``root / relative`` if it stays inside ``root`` (symlinks resolved), else refuse.

    Raises:
        PathNotAllowedError: empty, absolute (POSIX or Windows), ``..`` parts, NUL bytes, or a
            symlink that resolves outside the root.
        FileNotFoundError: inside the root but not a file.
    """
    if not relative or "\x00" in relative:
        raise PathNotAllowedError("image path is empty or contains a NUL byte")
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or relative.startswith("\\"):
        raise PathNotAllowedError(f"image path {relative!r} must be relative to the image root")
    if ".." in posix.parts or ".." in windows.parts:
        raise PathNotAllowedError(f"image path {relative!r} may not contain '..'")
    base = Path(root).resolve()
    full = (base / posix).resolve()
    if not full.is_relative_to(base):
        raise PathNotAllowedError(f"image path {relative!r} leads outside the image root")
    if not full.is_file():
        raise FileNotFoundError(f"no image at {relative!r} under the image root")
    return full


def _frontal(images: Sequence[ImageRef]) -> ImageRef:
    views = [ref.view.upper() for ref in images]
    unknown = [v for v in views if v not in FRONTAL_VIEWS + LATERAL_VIEWS]
    if unknown:
        raise InputValidationError(
            f"unknown view(s) {unknown}; use {list(FRONTAL_VIEWS + LATERAL_VIEWS)}"
        )
    for wanted in FRONTAL_VIEWS:
        for ref, view in zip(images, views, strict=True):
            if view == wanted:
                return ref
    raise NoFrontalImageError(f"no frontal (PA/AP) image among views {views}")


def image_bytes(ref: ImageRef, root: str | os.PathLike | None, max_bytes: int) -> bytes:
    """The bytes of one image reference (path under ``root`` or inline base64)."""
    if (ref.path is None) == (ref.data_base64 is None):
        raise InputValidationError("each image needs exactly one of 'path' or 'data_base64'")
    if ref.path is not None:
        if root is None:
            raise PathNotAllowedError("this server has no image root: upload data_base64 instead")
        return resolve_image_path(root, ref.path).read_bytes()
    assert ref.data_base64 is not None
    if len(ref.data_base64) > max_bytes * 4 // 3 + 4:
        from .errors import ImageSizeError

        raise ImageSizeError(f"upload above the limit of {max_bytes:,} bytes")
    try:
        return base64.b64decode(ref.data_base64, validate=True)
    except (binascii.Error, ValueError) as err:
        raise NotAnImageError(f"data_base64 is not valid base64: {err}") from err


def create_app(
    service: ReportService,
    image_root: str | os.PathLike | None = None,
    *,
    max_batch: int = 8,
    max_wait_ms: float = 100.0,
) -> Any:
    """The FastAPI app around ``service`` (see the module docstring).

    ``app.state.batcher`` is the :class:`DynamicBatcher`; ``app.state.latencies_ms`` collects
    every served request's processing time for ``GET /api/v1/metrics``.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from .benchmark import latency_stats

    app = FastAPI(title="CXR report service", version=service.model_version)
    batcher = DynamicBatcher(service.run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms)
    app.state.batcher = batcher
    app.state.service = service
    app.state.latencies_ms = []
    root = Path(image_root).resolve() if image_root is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"image root {root} is not a directory")

    @app.exception_handler(InputValidationError)
    async def _invalid(request: Request, err: InputValidationError) -> JSONResponse:
        return JSONResponse({"error": type(err).__name__, "detail": str(err)}, err.status_code)

    @app.exception_handler(FileNotFoundError)
    async def _missing(request: Request, err: FileNotFoundError) -> JSONResponse:
        return JSONResponse({"error": "FileNotFoundError", "detail": str(err)}, 404)

    @app.post("/api/v1/studies/{study_id}/report", response_model=StudyReport)
    async def report(study_id: str, body: StudyRequest) -> StudyReport:
        if body.study_id != study_id:
            raise StudyMismatchError(
                f"study_id in the body ({body.study_id!r}) differs from the URL ({study_id!r})"
            )
        ref = _frontal(body.images)
        data = image_bytes(ref, root, service.limits.max_bytes)
        item = service.prepare(data, body.clinical_context, study_id=study_id,
                               confidence_threshold=body.confidence_threshold)  # fmt: skip
        result: StudyReport = await batcher.submit(item)
        app.state.latencies_ms.append(result.processing_time_ms)
        return result

    @app.get("/api/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_version": service.model_version,
                "backend": getattr(service.backend, "name", "?")}  # fmt: skip

    @app.get("/api/v1/metrics")
    async def metrics() -> dict[str, Any]:
        out: dict[str, Any] = {"batching": batcher.stats.summary(),
                               "queue_depth_now": batcher.queue_depth}  # fmt: skip
        if app.state.latencies_ms:
            out["latency"] = latency_stats(app.state.latencies_ms).to_dict()
        return out

    return app


# ---------------------------------------------------------------------- CLI
def build_service(
    checkpoint: str | os.PathLike | None = None,
    backend: str = "fp32",
    onnx_dir: str | os.PathLike | None = None,
    model_version: str | None = None,
) -> ReportService:
    """A :class:`ReportService` from a course checkpoint (fp32 / INT8) or an ONNX export."""
    from .backends import OnnxBackend, TorchBackend

    if backend == "onnx":
        from .onnx_export import OnnxReportModel

        if onnx_dir is None:
            raise ValueError("--backend onnx needs --onnx-dir (written by export_onnx)")
        onnx_model = OnnxReportModel(onnx_dir)
        meta = onnx_model.meta
        return ReportService(
            OnnxBackend(onnx_model), model_version=model_version or meta.get("model_version", "dev"),
            target=meta.get("target", "findings"), prompt_context=meta.get("prompt_context", True),
            max_new_tokens=int(meta.get("max_new_tokens", 100)),
        )  # fmt: skip
    from ..train.course import checkpoint_dir, load_course_checkpoint
    from .quantize import quantize_language_model

    path = Path(checkpoint) if checkpoint else checkpoint_dir()
    model, tokenizer, config, _ = load_course_checkpoint(path)
    if backend == "int8":
        model = quantize_language_model(model)
    elif backend != "fp32":
        raise ValueError(f"backend={backend!r}; choose fp32, int8 or onnx")
    return ReportService(
        TorchBackend(model, tokenizer, name=f"pytorch-{backend}"),
        model_version=model_version or f"{path.name}-{backend}", target=config.target,
        prompt_context=config.prompt_context, max_new_tokens=config.max_new_tokens,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``serve``: run the report API with uvicorn (``--dry-run`` builds it and prints routes)."""
    parser = argparse.ArgumentParser(
        prog="python -m course_utils serve", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", default=None,
                        help="course checkpoint folder (default: runs/checkpoints/tiny-findings-seed42)")  # fmt: skip
    parser.add_argument("--backend", choices=("fp32", "int8", "onnx"), default="fp32")
    parser.add_argument("--onnx-dir", default=None, help="folder written by export_onnx")
    parser.add_argument("--image-root", default=None,
                        help="images referenced by 'path' must lie under this folder")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=100.0)
    parser.add_argument("--model-version", default=None)
    parser.add_argument("--dry-run", action="store_true", help="build the app, print, exit")
    args = parser.parse_args(argv)
    service = build_service(args.checkpoint, args.backend, args.onnx_dir, args.model_version)
    app = create_app(service, args.image_root, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms)  # fmt: skip
    routes = sorted(f"{sorted(r.methods)[0]} {r.path}" for r in app.routes
                    if getattr(r, "methods", None) and r.path.startswith("/api"))  # fmt: skip
    info = {"model_version": service.model_version, "backend": service.backend.name,
            "image_root": args.image_root, "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms, "routes": routes}  # fmt: skip
    print(json.dumps(info, indent=2))
    if args.dry_run:
        return 0
    try:
        import uvicorn
    except ImportError:
        print("serving needs uvicorn: pip install uvicorn", file=sys.stderr)
        return 1
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


__all__ = [
    "ImageRef",
    "NoFrontalImageError",
    "StudyMismatchError",
    "StudyRequest",
    "build_service",
    "create_app",
    "image_bytes",
    "main",
    "resolve_image_path",
]
