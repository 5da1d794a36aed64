"""HTTP text-to-speech server for one Bert-VITS2 2.3 generator (FastAPI + uvicorn).

    python server.py --model Data/models/G_8000.pth --config Data/config.json \\
        --bert-dir ZH=bert/chinese-roberta-wwm-ext-large --host 127.0.0.1 --port 5000

Without `--model`, the first entry of `server.models` in config.yml is served (port, device and language from
the same section). Endpoints:

* `GET /voice?text=&speaker=&language=&sdp_ratio=&noise=&noisew=&length=&format=` and `POST /voice` with the
  same fields as JSON: the audio (`format` wav, flac or ogg). `speaker_name` is accepted for `speaker`, as the
  reference server names it. Parameters left out take the speaker's preset from config.yml, else the defaults.
* `GET /speakers`: speakers, languages, sampling rate.  `GET /health`: liveness.

Every client error is answered with a 4xx status and a JSON body `{"error": "..."}`. The model is loaded once;
requests are served from a thread pool and take turns on the model (one lock), so concurrent requests are safe.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import infer

logger = logging.getLogger(__name__)

AUDIO_FORMATS = {
    # name: (soundfile format, subtype, media type)
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "ogg": ("OGG", "VORBIS", "audio/ogg"),
}
DEFAULT_MAX_TEXT_LENGTH = 500
DEFAULT_PARAMS = {"sdp_ratio": 0.2, "noise_scale": 0.6, "noise_scale_w": 0.8, "length_scale": 1.0}


class VoiceRequest(BaseModel):
    """Query parameters of GET /voice, or the JSON body of POST /voice. Ranges are the reference webui's."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    text: str
    speaker: str = Field(validation_alias=AliasChoices("speaker", "speaker_name"))
    language: str | None = None
    sdp_ratio: float | None = Field(None, ge=0.0, le=1.0)
    noise: float | None = Field(None, ge=0.0, le=2.0, validation_alias=AliasChoices("noise", "noise_scale"))
    noisew: float | None = Field(None, ge=0.0, le=2.0, validation_alias=AliasChoices("noisew", "noise_scale_w"))
    length: float | None = Field(None, ge=0.1, le=3.0, validation_alias=AliasChoices("length", "length_scale"))
    format: str = "wav"


class ClientError(Exception):
    """A request the server refuses; becomes `status` with a JSON `{"error": message}` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServerState:
    synthesizer: infer.Synthesizer
    default_language: str = "ZH"
    max_text_length: int = DEFAULT_MAX_TEXT_LENGTH
    presets: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # One synthesis at a time: the generator and the BERT models are not made for concurrent calls.
    lock: threading.Lock = field(default_factory=threading.Lock)


def _describe_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]) or "body"
        if item["type"] == "missing":
            parts.append(f"missing parameter '{name}'")
        else:
            parts.append(f"parameter '{name}': {item['msg']}")
    return "; ".join(parts)


def parse_voice_request(data: Mapping[str, Any]) -> VoiceRequest:
    try:
        return VoiceRequest.model_validate(dict(data))
    except ValidationError as error:
        raise ClientError(422, _describe_validation_error(error)) from error


def _resolve(state: ServerState, request: VoiceRequest) -> dict[str, Any]:
    """Check the request against the loaded model; the keyword arguments of `Synthesizer.synthesize`."""
    synthesizer = state.synthesizer
    text = request.text.strip()
    if not text:
        raise ClientError(422, "parameter 'text' is empty")
    if len(text) > state.max_text_length:
        raise ClientError(422, f"text is {len(text)} characters long; the limit is {state.max_text_length}")
    if request.speaker not in synthesizer.speaker_ids:
        known = ", ".join(synthesizer.speakers)
        raise ClientError(404, f"unknown speaker {request.speaker!r}; known speakers: {known}")
    language = (request.language or state.default_language).upper()
    if language not in infer.LANGUAGES:
        raise ClientError(400, f"unknown language {request.language!r}; use one of {', '.join(infer.LANGUAGES)}")
    if request.format.lower() not in AUDIO_FORMATS:
        raise ClientError(400, f"unknown format {request.format!r}; use one of {', '.join(AUDIO_FORMATS)}")
    params = {**DEFAULT_PARAMS, **state.presets.get(request.speaker, {})}
    given = {
        "sdp_ratio": request.sdp_ratio,
        "noise_scale": request.noise,
        "noise_scale_w": request.noisew,
        "length_scale": request.length,
    }
    params.update({name: value for name, value in given.items() if value is not None})
    return {"text": text, "speaker": request.speaker, "language": language, **params}


def encode_audio(audio: Any, sampling_rate: int, audio_format: str) -> tuple[bytes, str]:
    import numpy as np
    import soundfile

    container, subtype, media_type = AUDIO_FORMATS[audio_format]
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1.0, 1.0), sampling_rate, format=container, subtype=subtype)
    return buffer.getvalue(), media_type


def synthesize_request(state: ServerState, data: Mapping[str, Any]) -> tuple[bytes, str]:
    """Validate, synthesize and encode one request: (audio bytes, media type). Raises ClientError."""
    request = parse_voice_request(data)
    arguments = _resolve(state, request)
    start = time.perf_counter()
    try:
        with state.lock:
            sampling_rate, audio = state.synthesizer.synthesize(**arguments)
    except FileNotFoundError as error:  # a BERT folder (or another resource) this server lacks
        raise ClientError(503, str(error)) from error
    except ValueError as error:  # text the front end cannot read, nothing to pronounce, ...
        raise ClientError(422, str(error)) from error
    logger.info(
        "%s/%s: %d chars -> %.2f s of audio in %.2f s",
        arguments["speaker"],
        arguments["language"],
        len(arguments["text"]),
        audio.size / sampling_rate,
        time.perf_counter() - start,
    )
    return encode_audio(audio, sampling_rate, request.format.lower())


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI application serving `state`'s model."""
    app = FastAPI(title="Bert-VITS2 2.3 TTS", docs_url=None, redoc_url=None)

    def error_response(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(ClientError)
    async def client_error(_request: Request, error: ClientError) -> JSONResponse:
        return error_response(error.status, error.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail))  # unknown path, wrong method, ...

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, error: Exception) -> JSONResponse:
        logger.exception("request failed")
        return error_response(500, f"internal error: {type(error).__name__}: {error}")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "sampling_rate": state.synthesizer.sampling_rate}

    @app.get("/speakers")
    def speakers() -> dict[str, Any]:
        return {
            "speakers": state.synthesizer.speakers,
            "languages": list(infer.LANGUAGES),
            "default_language": state.default_language,
            "sampling_rate": state.synthesizer.sampling_rate,
        }

    @app.get("/voice")
    def voice_get(request: Request) -> Response:
        content, media_type = synthesize_request(state, request.query_params)
        return Response(content=content, media_type=media_type)

    @app.post("/voice")
    async def voice_post(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ClientError(400, f"the request body is not valid JSON: {error}") from error
        if not isinstance(body, dict):
            raise ClientError(400, "the request body must be a JSON object")
        content, media_type = await run_in_threadpool(synthesize_request, state, body)
        return Response(content=content, media_type=media_type)

    return app


# --------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Bert-VITS2 2.3 TTS server")
    parser.add_argument("-m", "--model", help="G_*.pth or export .safetensors (default: config.yml server.models)")
    parser.add_argument("-c", "--config", help="model config.json (optional for an export file)")
    parser.add_argument("--yml", default=None, help="global settings file (default: $BV2_CONFIG or config.yml)")
    parser.add_argument("--model-index", type=int, default=0, help="which entry of server.models to serve")
    parser.add_argument("--bert-dir", action="append", default=[], help="LANG=PATH BERT folder; repeatable")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: yml or cpu)")
    parser.add_argument("--language", default=None, help="default language ZH, JP or EN (default: yml or ZH)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: yml server.port, else 5000")
    parser.add_argument("--max-text-length", type=int, default=DEFAULT_MAX_TEXT_LENGTH)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


@dataclass
class ServeSettings:
    model: str
    config: str | None
    device: str
    language: str
    port: int
    presets: dict[str, dict[str, float]]


def resolve_settings(args: argparse.Namespace) -> ServeSettings:
    """Merge the command line with config.yml's server section (the command line wins)."""
    import config as global_config

    server = None
    if args.model is None or args.port is None or args.device is None or args.language is None:
        yml = global_config.config_path_from_env(args.yml)
        if args.model is not None and args.yml is None and not _exists(yml):
            server = None  # everything essential is on the command line; the yml is optional then
        else:
            server = global_config.load_config(yml).server
    entry = None
    if args.model is None:
        if server is None or not server.models:
            raise ValueError(
                "no model to serve: pass --model (and --config), or add one under server.models in config.yml"
            )
        if not 0 <= args.model_index < len(server.models):
            raise ValueError(f"--model-index {args.model_index}: config.yml lists {len(server.models)} model(s)")
        entry = server.models[args.model_index]
    device = args.device or (entry.device if entry else None) or (server.device if server else "cpu")
    language = args.language or (entry.language if entry else None) or (server.language if server else "ZH")
    presets = {
        preset.speaker: {
            "sdp_ratio": preset.sdp_ratio,
            "noise_scale": preset.noise_scale,
            "noise_scale_w": preset.noise_scale_w,
            "length_scale": preset.length_scale,
        }
        for preset in (entry.speakers if entry else ())
    }
    return ServeSettings(
        model=args.model or entry.model,
        config=args.config or (entry.config if entry else None),
        device=global_config.resolve_device(device),
        language=infer.check_language(language),
        port=args.port or (server.port if server else 5000),
        presets=presets,
    )


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_file()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    import uvicorn

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings = resolve_settings(args)
        synthesizer = infer.load_synthesizer(
            settings.model,
            settings.config,
            device=settings.device,
            bert_dirs=infer.parse_bert_dirs(args.bert_dir),
        )
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    state = ServerState(
        synthesizer,
        default_language=settings.language,
        max_text_length=args.max_text_length,
        presets=settings.presets,
    )
    logger.info(
        "serving %s (%d speakers, %d Hz) on http://%s:%d",
        settings.model,
        len(synthesizer.speakers),
        synthesizer.sampling_rate,
        args.host,
        settings.port,
    )
    uvicorn.run(create_app(state), host=args.host, port=settings.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
