"""The FastAPI app (TestClient), path safety, dynamic batching and the serve CLI."""

from __future__ import annotations

import asyncio
import base64
import os
import time

import pytest
import torch
from fastapi.testclient import TestClient

from course_utils.deploy import (
    DynamicBatcher,
    PathNotAllowedError,
    ReportService,
    TorchBackend,
    create_app,
    resolve_image_path,
)
from course_utils.deploy.api import main
from course_utils.deploy.fixtures import (
    encode_jpeg,
    encode_png,
    gradient_image,
    tiny_model_and_data,
)


@pytest.fixture(scope="module")
def service():
    torch.set_num_threads(1)
    model, tok, _ = tiny_model_and_data(seed=3)
    return ReportService(TorchBackend(model, tok), model_version="v-api", max_new_tokens=4)


@pytest.fixture()
def root(tmp_path):
    (tmp_path / "p10" / "s1").mkdir(parents=True)
    (tmp_path / "p10" / "s1" / "pa.png").write_bytes(encode_png(gradient_image((64, 64))))
    (tmp_path / "p10" / "s1" / "broken.jpg").write_bytes(encode_jpeg(gradient_image((64, 64)))[:90])
    outside = tmp_path.parent / f"{tmp_path.name}-secret.png"
    outside.write_bytes(encode_png(gradient_image((64, 64))))
    os.symlink(outside, tmp_path / "p10" / "link.png")
    return tmp_path


def body(study_id="1.2.3", **image) -> dict:
    image = image or {"path": "p10/s1/pa.png"}
    return {"study_id": study_id, "images": [{"view": "PA", **image}],
            "clinical_context": {"age": 67, "sex": "M", "indication": "Shortness of breath",
                                 "prior_studies": ["2024-01-15"]},
            "report_template": "standard", "confidence_threshold": 0.85}  # fmt: skip


def post(client, payload, study_id=None):
    return client.post(f"/api/v1/studies/{study_id or payload['study_id']}/report", json=payload)


def test_report_by_path_and_by_upload(service, root) -> None:
    with TestClient(create_app(service, root)) as client:
        r = post(client, body())
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["study_id"] == "1.2.3" and data["model_version"] == "v-api"
        assert set(data) >= {"report_id", "findings", "impression", "recommendations",
                             "processing_time_ms", "requires_radiologist_review"}  # fmt: skip
        upload = base64.b64encode(encode_png(gradient_image((64, 64)))).decode()
        r2 = post(client, body(data_base64=upload))
        assert r2.status_code == 200 and r2.json()["report_text"] == data["report_text"]
        lateral_first = body()
        lateral_first["images"].insert(0, {"view": "LATERAL", "path": "does/not/matter.png"})
        assert post(client, lateral_first).status_code == 200  # the PA image is used
        assert client.get("/api/v1/health").json()["backend"] == "pytorch-fp32"
        metrics = client.get("/api/v1/metrics").json()
        assert metrics["batching"]["requests"] == 3.0 and "p99_ms" in metrics["latency"]


@pytest.mark.parametrize(
    "path, status, error",
    [
        ("../outside.png", 403, "PathNotAllowedError"),
        ("p10/../../etc/passwd", 403, "PathNotAllowedError"),
        ("/etc/passwd", 403, "PathNotAllowedError"),
        ("C:\\Windows\\win.ini", 403, "PathNotAllowedError"),
        ("p10/link.png", 403, "PathNotAllowedError"),  # symlink out of the root
        ("p10/s1/missing.png", 404, "FileNotFoundError"),
        ("p10/s1/broken.jpg", 422, "TruncatedImageError"),
    ],
)
def test_paths_outside_the_root_are_refused(service, root, path, status, error) -> None:
    with TestClient(create_app(service, root)) as client:
        r = post(client, body(path=path))
    assert r.status_code == status and r.json()["error"] == error, r.text


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda b: b["images"].__setitem__(0, {"view": "LATERAL", "path": "p10/s1/pa.png"}),
         "NoFrontalImageError"),
        (lambda b: b["images"][0].update(data_base64="AAAA"), "InputValidationError"),  # both
        (lambda b: b.update(images=[{"view": "PA", "data_base64": "***"}]), "NotAnImageError"),
        (lambda b: b.update(images=[{"view": "PA", "data_base64": base64.b64encode(
            b"hello").decode()}]), "NotAnImageError"),
        (lambda b: b["clinical_context"].update(age=400), "ClinicalContextError"),
        (lambda b: b["images"][0].update(view="OBLIQUE"), "InputValidationError"),
    ],
)  # fmt: skip
def test_invalid_requests_get_clear_errors(service, root, change, error) -> None:
    payload = body()
    change(payload)
    with TestClient(create_app(service, root)) as client:
        r = post(client, payload)
    assert r.status_code == 422 and r.json()["error"] == error, r.text


def test_schema_errors_and_mismatched_ids(service, root) -> None:
    with TestClient(create_app(service, root)) as client:
        assert post(client, body(), study_id="other").json()["error"] == "StudyMismatchError"
        bad_template = {**body(), "report_template": "fancy"}
        assert post(client, bad_template).status_code == 422
        assert post(client, {**body(), "confidence_threshold": 0}).status_code == 422
        assert post(client, {**body(), "images": []}).status_code == 422
    with TestClient(create_app(service, None)) as client:  # no image root: paths refused
        assert post(client, body()).json()["error"] == "PathNotAllowedError"


def test_resolve_image_path_direct(root) -> None:
    assert resolve_image_path(root, "p10/s1/pa.png") == (root / "p10/s1/pa.png").resolve()
    for bad in ("", "a\x00b", "..", "p10/../..", "\\\\server\\share"):
        with pytest.raises(PathNotAllowedError):
            resolve_image_path(root, bad)


# ---------------------------------------------------------------------------- batching
def test_batcher_groups_concurrent_requests_and_keeps_order() -> None:
    calls = []

    def run(items):
        calls.append(list(items))
        time.sleep(0.02)
        return [x * 10 for x in items]

    batcher = DynamicBatcher(run, max_batch=8, max_wait_ms=50)

    async def go():
        return await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    assert asyncio.run(go()) == [i * 10 for i in range(10)]
    assert [len(c) for c in calls] == [8, 2]  # at most 8 per batch
    assert batcher.stats.batch_sizes == [8, 2] and batcher.stats.queue_depths[:3] == [0, 1, 2]


def test_batcher_wait_window_and_errors() -> None:
    batcher = DynamicBatcher(lambda items: [x + 1 for x in items], max_batch=8, max_wait_ms=30)

    async def lone():
        start = time.perf_counter()
        out = await batcher.submit(1)
        return out, time.perf_counter() - start

    out, waited = asyncio.run(lone())
    assert out == 2 and 0.025 <= waited < 1.0  # a lone request waits for the window

    def boom(items):
        raise RuntimeError("model failed")

    failing = DynamicBatcher(boom, max_batch=4, max_wait_ms=0)

    async def go():
        return await asyncio.gather(failing.submit(1), failing.submit(2), return_exceptions=True)

    errors = asyncio.run(go())
    assert all(isinstance(e, RuntimeError) and "model failed" in str(e) for e in errors)
    with pytest.raises(ValueError, match="max_batch >= 1"):
        DynamicBatcher(boom, max_batch=0)


# ---------------------------------------------------------------------------- CLI
def test_serve_cli_dry_run(tmp_path, capsys) -> None:
    from course_utils.train import TrainConfig
    from course_utils.train.course import save_course_model

    model, tok, _ = tiny_model_and_data(seed=4)
    ckpt = save_course_model(model, tok, TrainConfig.tiny(), None, tmp_path / "ckpt")
    (tmp_path / "images").mkdir()
    argv = ["--checkpoint", str(ckpt), "--backend", "int8", "--image-root",
            str(tmp_path / "images"), "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "POST /api/v1/studies/{study_id}/report" in out and "pytorch-int8" in out
    with pytest.raises(ValueError, match="--onnx-dir"):
        main(["--backend", "onnx", "--dry-run"])
