"""HTTP text-to-speech server for one or more Bert-VITS2 2.3 generators (FastAPI + uvicorn).

    python server.py -m voice-a=Data/a/G_8000.pth -c Data/a/config.json \\
        -m voice-b=Data/b/G_6000.pth -c Data/b/config.json \\
        --bert-dir ZH=bert/chinese-roberta-wwm-ext-large --port 5000

Without `-m`, every entry of `server.models` in config.yml is served (with its device, default language and
speaker presets); host, port, queue size and limits come from the same section, the command line wins.
`-m [NAME=]PATH` is repeatable; `-c` is given once per `-m` (in the same order), once for all, or not at all
(export files carry their config). Endpoints:

* `GET /voice?text=&speaker=&model=&language=&...&format=` and `POST /voice` with the same fields as JSON:
  the audio (`format` wav, flac, ogg or mp3). `model` is an index (0, 1, ...) or a name, default the first;
  `speaker_name` is accepted for `speaker` and `model_id` for `model` in a JSON POST; a GET naming `model_id`
  or a form POST is the Bert-VITS2 API's /voice (below). Parameters left out take the speaker's preset from
  config.yml, else the defaults.
* `GET /models`: every model with its speakers, languages, sampling rate and formats.
  `GET /speakers?model=`: one model's. `GET /health`: liveness and queue state.
* Bert-VITS2 2.3's own API (`/voice?model_id=`, `/models/info`, `/models/add`, ...): see reference_api.py.

Every refused request is answered with a 4xx/5xx status and a JSON body `{"error": "..."}` (the Bert-VITS2 API's
routes: `{"status": code, "detail": "..."}`). Synthesis runs on a
fixed number of worker threads behind a bounded queue: when `queue_size` requests are already admitted, the
next one is answered at once with `503` and `Retry-After`, so a flood never piles up threads or waiting work.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import functools
import io
import json
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

import config as global_config
import reference_api
import stream_api
import synthesis_params
from synthesis_params import DEFAULT_PARAMS, SynthesisParams, brief
from synthesis_plan import MIX, REQUEST_LANGUAGES, parse_mix
from text.bert_features import add_bert_dir_argument, parse_bert_dirs
from voice_registry import (
    LoadedModel,
    ModelRegistry,
    ModelSpec,
    command_line_specs,
    load_models,
    normalize_language,
    specs_from_section,
    with_overrides,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioFormat:
    container: str  # soundfile format
    subtype: str
    media_type: str
    # Sampling rates the codec can carry; None: any.
    sampling_rates: frozenset[int] | None = None
    # libsndfile's quality knob for the lossy codecs, 0 (best) to 1 (smallest); None for lossless ones.
    compression_level: float | None = None


# MPEG audio (layer III) is written by libsndfile >= 1.1 itself (soundfile's wheels bundle 1.2, with LAME and
# mpg123), so mp3 needs no further encoder; the format is offered only when the installed libsndfile has it (see
# `available_formats`). The lossy levels trade size for fidelity: mp3 at 0 is LAME's best VBR (~80 kbit/s for
# 22 kHz mono speech), vorbis at 0.2 about quality 8; libsndfile's defaults audibly smear consonants.
MPEG_SAMPLING_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})
AUDIO_FORMATS = {
    "wav": AudioFormat("WAV", "PCM_16", "audio/wav"),
    "flac": AudioFormat("FLAC", "PCM_16", "audio/flac"),
    "ogg": AudioFormat("OGG", "VORBIS", "audio/ogg", compression_level=0.2),
    "mp3": AudioFormat("MP3", "MPEG_LAYER_III", "audio/mpeg", MPEG_SAMPLING_RATES, compression_level=0.0),
}
# Without a yml: the server section's defaults, declared once in config.py (host: loopback, no authentication).
_YML_DEFAULTS = global_config.ServerConfig()
DEFAULT_MAX_TEXT_LENGTH = _YML_DEFAULTS.max_text_length
DEFAULT_MAX_BODY_SIZE = _YML_DEFAULTS.max_body_size
DEFAULT_QUEUE_SIZE = _YML_DEFAULTS.queue_size
DEFAULT_HOST = _YML_DEFAULTS.host
DEFAULT_PORT = _YML_DEFAULTS.port


def available_formats(sampling_rate: int) -> list[str]:
    """The output formats this installation can write at `sampling_rate`."""
    return list(_formats_at(sampling_rate))


@functools.cache  # libsndfile's format list does not change while the process runs
def _formats_at(sampling_rate: int) -> tuple[str, ...]:
    import soundfile

    containers = soundfile.available_formats()
    return tuple(
        name
        for name, fmt in AUDIO_FORMATS.items()
        if fmt.container in containers and (fmt.sampling_rates is None or sampling_rate in fmt.sampling_rates)
    )


def describe_model(model: LoadedModel) -> dict[str, Any]:
    """What a client may ask a model for (no server paths)."""
    return {
        "id": model.index,
        "name": model.name,
        "speakers": model.synthesizer.speakers,
        "languages": model.languages,
        "default_language": model.spec.language,
        "sampling_rate": model.synthesizer.sampling_rate,
        "formats": available_formats(model.synthesizer.sampling_rate),
        "presets": {speaker: params.model_dump() for speaker, params in model.spec.presets.items()},
    }


# --------------------------------------------------------------------------------------------------------------
# Requests


class VoiceRequest(BaseModel):
    """What GET /voice (query) or POST /voice (JSON body) asks for besides the synthesis parameters."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    text: str
    speaker: str = Field(validation_alias=AliasChoices("speaker", "speaker_name"))
    model: str | int | None = Field(None, validation_alias=AliasChoices("model", "model_id"))
    language: str | None = None
    format: str = "wav"
    # The `SynthesisParams` fields the client gave (validated, unset ones absent), over the speaker's preset.
    params: SynthesisParams = Field(default_factory=SynthesisParams)


# The reference server's names of synthesis parameters, accepted besides the fields' own names.
PARAMETER_ALIASES = {"noise": "noise_scale", "noisew": "noise_scale_w", "length": "length_scale", "auto_split": "split"}


class ClientError(Exception):
    """A request the server refuses; becomes `status` with a JSON `{"error": message}` body."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Job:
    """A checked request: which model says what, how, and the output format."""

    model: LoadedModel
    text: str
    speaker: str
    language: str
    params: SynthesisParams
    audio_format: str


def _describe_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]) or "body"
        if item["type"] == "missing":
            parts.append(f"missing parameter '{name}'")
        else:
            parts.append(f"parameter '{name}': {item['msg']}")
    return "; ".join(parts)


def _given_params(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The synthesis parameters in a request, by field name, and how the client spelled each."""
    given: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in data.items():
        name = PARAMETER_ALIASES.get(key, key)
        if name in synthesis_params.FIELDS:
            given[name] = value
            spelled[name] = key
    return given, spelled


def _request_names() -> list[str]:
    """Every field name /voice takes, the reference server's spellings included."""
    names = [*synthesis_params.FIELDS, *PARAMETER_ALIASES]
    for name, field in VoiceRequest.model_fields.items():
        if name != "params":
            aliases = field.validation_alias.choices if isinstance(field.validation_alias, AliasChoices) else [name]
            names.extend(str(alias) for alias in aliases)
    return names


def _unknown_fields(data: Mapping[str, Any]) -> list[str]:
    """One problem per field the request names that /voice does not take, with the nearest valid name."""
    known = _request_names()
    problems = []
    for key in data:
        if key not in known:
            nearest = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {nearest[0]!r}?)" if nearest else f"; known: {', '.join(known)}"
            problems.append(f"unknown parameter {brief(key)}{hint}")
    return problems


def parse_voice_request(data: Mapping[str, Any]) -> VoiceRequest:
    """The request's fields, each checked; every problem (unknown fields too) is named in one 422 answer."""
    given, spelled = _given_params(data)
    problems = _unknown_fields(data)
    rest = {key: value for key, value in data.items() if key not in spelled.values()}
    request = None
    try:
        request = VoiceRequest.model_validate(rest)
    except ValidationError as error:
        problems.append(_describe_validation_error(error))
    try:
        params = SynthesisParams.checked(given, spelled=spelled)
    except ValueError as error:
        problems.append(str(error))
    if problems or request is None:
        raise ClientError(422, "; ".join(problems))
    return request.model_copy(update={"params": params})


def _check_speaker(model: LoadedModel, speaker: str) -> None:
    if speaker not in model.synthesizer.speaker_ids:
        known = ", ".join(model.synthesizer.speakers)
        raise ClientError(404, f"unknown speaker {brief(speaker)} of model {model.name!r}; known speakers: {known}")


def _find_model(registry: ModelRegistry, key: str | int | None) -> LoadedModel:
    try:
        return registry.get(key)
    except KeyError as error:
        raise ClientError(404, str(error.args[0])) from error


def resolve_job(registry: ModelRegistry, request: VoiceRequest, max_text_length: int) -> Job:
    """Check the request against its model; cheap, so it runs before the request takes a place in the queue."""
    model = _find_model(registry, request.model)
    synthesizer = model.synthesizer
    text = request.text.strip()
    if not text:
        raise ClientError(422, "parameter 'text' is empty")
    for name, value in (("text", text), ("style_text", request.params.style_text or "")):
        if len(value) > max_text_length:
            raise ClientError(422, f"{name} is {len(value)} characters long; the limit is {max_text_length}")
    _check_speaker(model, request.speaker)
    language = normalize_language(request.language or model.spec.language)
    if language not in model.languages:
        raise ClientError(
            400,
            f"unknown language {brief(request.language)} for model {model.name!r}; "
            f"use one of {', '.join(model.languages)}",
        )
    if language == MIX:  # its syntax and speakers are checked here, before the request takes a place in the queue
        try:
            pieces = parse_mix(text, request.speaker)
        except ValueError as error:
            raise ClientError(400, str(error)) from error
        for piece in pieces:
            _check_speaker(model, piece.speaker)
    audio_format = request.format.lower()
    formats = _formats_at(synthesizer.sampling_rate)
    if audio_format not in formats:
        why = (
            f"not available for model {model.name!r} ({synthesizer.sampling_rate} Hz, this libsndfile)"
            if audio_format in AUDIO_FORMATS
            else "unknown"
        )
        raise ClientError(400, f"format {brief(request.format)} is {why}; use one of {', '.join(formats)}")
    preset = model.spec.presets.get(request.speaker, DEFAULT_PARAMS)
    given = request.params
    params = preset.model_copy(update={name: getattr(given, name) for name in given.model_fields_set})
    return Job(model, text, request.speaker, language, params, audio_format)


def encode_audio(audio: Any, sampling_rate: int, audio_format: str) -> tuple[bytes, str]:
    """The waveform in `audio_format` (16-bit for the lossless ones) and its media type."""
    import numpy as np
    import soundfile

    fmt = AUDIO_FORMATS[audio_format]
    # Quantized here, once: libsndfile's float -> 16-bit conversion rounds differently per container (its WAV
    # and FLAC writers differ by one step on half the samples), and every format should carry the same samples.
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    buffer = io.BytesIO()
    soundfile.write(
        buffer,
        pcm,
        sampling_rate,
        format=fmt.container,
        subtype=fmt.subtype,
        compression_level=fmt.compression_level,
    )
    return buffer.getvalue(), fmt.media_type


def run_job(job: Job) -> tuple[bytes, str]:
    """Synthesize and encode one checked request (on a worker thread). Raises ClientError."""
    start = time.perf_counter()
    try:
        with job.model.lock:
            sampling_rate, audio = job.model.synthesizer.synthesize(job.text, job.speaker, job.language, job.params)
    except FileNotFoundError as error:  # a BERT folder (or another resource) this server lacks
        raise ClientError(503, str(error)) from error
    except ValueError as error:  # text the front end cannot read, nothing to pronounce, ...
        raise ClientError(422, str(error)) from error
    logger.info(
        "%s/%s/%s: %d chars -> %.2f s of audio in %.2f s",
        job.model.name,
        job.speaker,
        job.language,
        len(job.text),
        audio.size / sampling_rate,
        time.perf_counter() - start,
    )
    return encode_audio(audio, sampling_rate, job.audio_format)


class SynthesisQueue:
    """A fixed pool of worker threads behind a bounded count of admitted requests.

    `submit` never waits for room: when `size` requests are admitted (queued or running) it raises a 503
    ClientError with a Retry-After estimate. A place is given back when the work is done, not when the client
    stops waiting, so work of clients that went away still counts. Used from the event loop thread only.
    """

    def __init__(self, size: int, workers: int = 1) -> None:
        if size < 1 or workers < 1:
            raise ValueError(f"queue size and workers must be >= 1, got {size} and {workers}")
        self.size = size
        self.workers = workers
        self.admitted = 0
        self.served = 0
        self.refused = 0
        self._seconds_per_job = 1.0  # running mean of the work time, for Retry-After
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthesis")

    def retry_after(self) -> int:
        return max(1, math.ceil(self._seconds_per_job * self.admitted / self.workers))

    async def submit(self, work: Callable[[], Any]) -> Any:
        if self.admitted >= self.size:
            self.refused += 1
            seconds = self.retry_after()
            raise ClientError(
                503,
                f"the server is busy ({self.admitted} requests admitted, queue size {self.size}); retry in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
        loop = asyncio.get_running_loop()
        future: Future = self._executor.submit(self._timed, work)
        self.admitted += 1  # given back by the done callback, which the loop runs after this method's sync part
        future.add_done_callback(lambda _done: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(future)

    def _timed(self, work: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return work()
        finally:
            elapsed = time.perf_counter() - start
            self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * elapsed

    def _release(self) -> None:
        self.admitted -= 1
        self.served += 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, int]:
        return {"size": self.size, "admitted": self.admitted, "served": self.served, "refused": self.refused}


@dataclass
class ServerState:
    registry: ModelRegistry
    max_text_length: int = DEFAULT_MAX_TEXT_LENGTH
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    queue_size: int = DEFAULT_QUEUE_SIZE
    workers: int = 1
    # Folders the reference API's routes may read (reference_api.configured_roots); empty: the models' folders.
    allowed_roots: tuple[Path, ...] = ()


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ClientError(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise ClientError(413, f"the request body is {int(declared)} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ClientError(413, f"the request body exceeds the limit of {limit} bytes")
    return bytes(body)


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI application serving `state`'s models. Every route is async: no thread per request."""
    queue_holder: dict[str, SynthesisQueue] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        queue_holder["queue"] = SynthesisQueue(state.queue_size, state.workers)
        try:
            yield
        finally:
            queue_holder.pop("queue").shutdown()

    # No docs, no OpenAPI schema, no static files: the routes below are all there is.
    app = FastAPI(title="Bert-VITS2 2.3 TTS", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    registry = state.registry
    reference_api.mount(app, state, lambda work: queue_holder["queue"].submit(work), read_limited_body)
    stream_api.mount(app, state, lambda work: queue_holder["queue"].submit(work), read_limited_body)

    def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=dict(headers or {}))

    @app.exception_handler(ClientError)
    async def client_error(_request: Request, error: ClientError) -> JSONResponse:
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail))  # unknown path, wrong method, ...

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, error: Exception) -> JSONResponse:
        logger.exception("request failed")
        return error_response(500, f"internal error: {type(error).__name__}: {error}")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        queue = queue_holder.get("queue")
        return {"status": "ok", "models": len(registry), "queue": queue.describe() if queue else None}

    @app.get("/models")
    async def models() -> dict[str, Any]:
        return {"models": [describe_model(model) for model in registry.models]}

    @app.get("/speakers")
    async def speakers(request: Request) -> dict[str, Any]:
        return describe_model(_find_model(registry, request.query_params.get("model")))

    async def answer(data: Mapping[str, Any]) -> Response:
        job = resolve_job(registry, parse_voice_request(data), state.max_text_length)
        content, media_type = await queue_holder["queue"].submit(lambda: run_job(job))
        return Response(content=content, media_type=media_type)

    @app.get("/voice")
    async def voice_get(request: Request) -> Response:
        if len(request.url.query) > state.max_body_size:
            raise ClientError(414, f"the query string exceeds the limit of {state.max_body_size} bytes")
        return await answer(request.query_params)

    @app.post("/voice")
    async def voice_post(request: Request) -> Response:
        raw = await read_limited_body(request, state.max_body_size)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ClientError(400, f"the request body is not valid JSON: {error}") from error
        if not isinstance(body, dict):
            raise ClientError(400, "the request body must be a JSON object")
        return await answer(body)

    return app


# --------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Bert-VITS2 2.3 TTS server")
    parser.add_argument(
        "-m",
        "--model",
        action="append",
        default=[],
        help="[NAME=]PATH of a G_*.pth, export .safetensors or .onnx; repeatable (default: config.yml server.models)",
    )
    parser.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        help="model config.json: one per --model in the same order, or one for all (not needed for export files)",
    )
    parser.add_argument("--yml", default=None, help="global settings file (default: $BV2_CONFIG or config.yml)")
    add_bert_dir_argument(parser)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto, for every model (default: yml)")
    parser.add_argument("--language", default=None, help="default language ZH, JP, EN, mix or auto, for every model")
    parser.add_argument("--host", default=None, help=f"address to bind (default: yml server.host, else {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=None, help=f"default: yml server.port, else {DEFAULT_PORT}")
    parser.add_argument("--queue-size", type=int, default=None, help="requests admitted at once; more get 503")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="synthesis threads; above 1, models on different devices run at once, but a `seed` is only "
        "reproducible with 1 (torch's random generator is process-wide)",
    )
    parser.add_argument("--max-text-length", type=int, default=None, help="characters of text a request may carry")
    parser.add_argument("--max-body-size", type=int, default=None, help="bytes of request body or query string")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


@dataclass
class ServeSettings:
    models: list[ModelSpec]
    host: str
    port: int
    queue_size: int
    max_text_length: int
    max_body_size: int


def resolve_settings(args: argparse.Namespace) -> ServeSettings:
    """Merge the command line with config.yml's server section (the command line wins)."""
    yml = global_config.config_path_from_env(args.yml)
    # With models on the command line the yml is optional, unless named explicitly.
    server = (
        None if (args.model and args.yml is None and not Path(yml).is_file()) else global_config.load_config(yml).server
    )
    if args.config and not args.model:
        raise ValueError("--config needs --model (the models of config.yml name their configs themselves)")
    if args.model:
        specs = command_line_specs(
            args.model,
            args.config,
            args.device or (server.device if server else "cpu"),
            args.language or (server.language if server else "ZH"),
        )
    else:
        if server is None or not server.models:
            raise ValueError(f"no model to serve: pass --model (and --config), or add one under server.models in {yml}")
        specs = with_overrides(specs_from_section(server), args.device, args.language)
    for spec in specs:
        if spec.language not in REQUEST_LANGUAGES:
            raise ValueError(
                f"model {spec.name!r}: unknown language {spec.language!r}; use one of {', '.join(REQUEST_LANGUAGES)}"
            )
        if not global_config.DEVICE_PATTERN.match(spec.device):
            raise ValueError(f"model {spec.name!r}: unknown device {spec.device!r}; use auto, cpu, cuda, cuda:N or mps")

    def pick(given: int | None, setting: str, default: int) -> int:
        value = given if given is not None else (getattr(server, setting) if server else default)
        if value < 1:
            raise ValueError(f"--{setting.replace('_', '-')} must be >= 1, got {value}")
        return value

    return ServeSettings(
        models=specs,
        host=args.host or (server.host if server else DEFAULT_HOST),
        port=pick(args.port, "port", DEFAULT_PORT),
        queue_size=pick(args.queue_size, "queue_size", DEFAULT_QUEUE_SIZE),
        max_text_length=pick(args.max_text_length, "max_text_length", DEFAULT_MAX_TEXT_LENGTH),
        max_body_size=pick(args.max_body_size, "max_body_size", DEFAULT_MAX_BODY_SIZE),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    import uvicorn

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        settings = resolve_settings(args)
        registry = load_models(settings.models, bert_dirs=parse_bert_dirs(args.bert_dir))
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    state = ServerState(
        registry,
        max_text_length=settings.max_text_length,
        max_body_size=settings.max_body_size,
        queue_size=settings.queue_size,
        workers=args.workers,
        allowed_roots=reference_api.configured_roots(args.yml, settings.models),
    )
    if settings.host not in ("127.0.0.1", "::1", "localhost"):
        logger.warning("listening on %s: the server has no authentication", settings.host)
    logger.info(
        "serving %d model(s) on http://%s:%d (queue %d)",
        len(registry),
        settings.host,
        settings.port,
        settings.queue_size,
    )
    # limit_concurrency bounds open connections and tasks far above the queue, so a flood of connections is
    # refused by uvicorn too instead of growing without end.
    uvicorn.run(
        create_app(state),
        host=settings.host,
        port=settings.port,
        log_level="info",
        limit_concurrency=max(256, 4 * settings.queue_size),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
