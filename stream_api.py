"""The server's streaming and timing routes (mounted by server.create_app):

* `GET /voice/stream?...` and `POST /voice/stream` (JSON) with every `/voice` field: the audio as a chunked
  response whose first bytes leave when the first chunk is decoded. `format=wav` (default) sends a WAV header
  whose sizes say "unknown length" (0xFFFFFFFF, as streaming encoders write it) and then 16-bit samples;
  `format=pcm` sends the bare samples (signed 16-bit little-endian, mono), with the rate in the
  `X-Sampling-Rate` header. `chunk_frames` (default streaming.DEFAULT_CHUNK_FRAMES) sets the decoder's window.
* `GET/POST /voice/timings` with every `/voice` field: JSON `{"sampling_rate", "duration", "phones", "words",
  "format", "audio"}`, the audio base64-encoded in `format`; `audio=false` leaves the audio out.

The request is checked (fields, model, speaker, language, text length) before it takes a place in the queue;
the queue's 503 and the errors of `/voice` apply. A stream's synthesis holds one queue place until it ends; a
client that goes away stops it at the next chunk and gives the place back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

import streaming

logger = logging.getLogger(__name__)

STREAM_FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm"}
UNKNOWN_SIZE = 0xFFFFFFFF
Submit = Callable[[Callable[[], Any]], Awaitable[Any]]
ReadBody = Callable[[Request, int], Awaitable[bytes]]


def streaming_wav_header(sampling_rate: int) -> bytes:
    """A 44-byte mono 16-bit PCM WAV header whose RIFF and data sizes say "unknown length"."""
    fmt = struct.pack("<HHIIHH", 1, 1, sampling_rate, sampling_rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", UNKNOWN_SIZE)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", UNKNOWN_SIZE)
    )


def pcm16(audio: np.ndarray) -> bytes:
    """Float samples as signed 16-bit little-endian, quantized as server.encode_audio does."""
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _pop_flag(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.pop(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    from server import ClientError

    raise ClientError(422, f"parameter '{name}': expected true or false, got {value!r}")


def _pop_chunk_frames(data: dict[str, Any]) -> int:
    from server import ClientError

    value = data.pop("chunk_frames", streaming.DEFAULT_CHUNK_FRAMES)
    try:
        frames = int(value)
    except (TypeError, ValueError):
        frames = 0
    if frames < 1 or str(value).strip() != str(frames):
        raise ClientError(422, f"parameter 'chunk_frames': expected a whole number >= 1, got {value!r}")
    return frames


def _synthesis_errors(work: Callable[[], Any]) -> Any:
    """Run `work`, turning the synthesizer's refusals into the answers /voice gives for them."""
    from server import ClientError

    try:
        return work()
    except FileNotFoundError as error:  # a BERT folder (or another resource) this server lacks
        raise ClientError(503, str(error)) from error
    except ValueError as error:  # text the front end cannot read, nothing to pronounce, ...
        raise ClientError(422, str(error)) from error


class _Stream:
    """One streamed synthesis: a worker fills `messages` with ("chunk", audio), then ("end", None) or
    ("error", exception); `cancelled` stops it at the next chunk."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.messages: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.chunks = 0
        self.worker: asyncio.Task | None = None

    def produce(self, job: Any, chunk_frames: int) -> None:
        synth = job.model.synthesizer
        with job.model.lock:
            chunks = streaming.stream(synth, job.text, job.speaker, job.language, job.params, chunk_frames)
            try:
                for chunk in chunks:
                    if self.cancelled.is_set():
                        logger.info("stream stopped after %d chunks: the client went away", self.chunks)
                        return
                    self.chunks += 1
                    self.loop.call_soon_threadsafe(self.messages.put_nowait, ("chunk", chunk))
            finally:
                chunks.close()  # leaves the seeded RNG block now, under the lock

    async def run(self, submit: Submit, job: Any, chunk_frames: int) -> None:
        try:
            await submit(lambda: _synthesis_errors(lambda: self.produce(job, chunk_frames)))
        except Exception as error:  # noqa: BLE001 - handed to the response, which answers or aborts with it
            self.messages.put_nowait(("error", error))
        else:
            self.messages.put_nowait(("end", None))


async def _read_request(request: Request, read_body: ReadBody, max_body_size: int) -> dict[str, Any]:
    """The fields of a GET query or a POST JSON object, under the server's size limits."""
    from server import ClientError

    if request.method == "GET":
        if len(request.url.query) > max_body_size:
            raise ClientError(414, f"the query string exceeds the limit of {max_body_size} bytes")
        return dict(request.query_params)
    raw = await read_body(request, max_body_size)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ClientError(400, f"the request body is not valid JSON: {error}") from error
    if not isinstance(body, dict):
        raise ClientError(400, "the request body must be a JSON object")
    return body


def mount(app: FastAPI, state: Any, submit: Submit, read_body: ReadBody) -> None:
    """Add /voice/stream and /voice/timings to the server's `app`; `submit` runs work on its queue."""
    import server

    def resolve(data: Mapping[str, Any], audio_format: str = "wav") -> Any:
        fields = {**data, "format": audio_format}
        return server.resolve_job(state.registry, server.parse_voice_request(fields), state.max_text_length)

    async def voice_stream(request: Request) -> StreamingResponse:
        data = await _read_request(request, read_body, state.max_body_size)
        audio_format = str(data.pop("format", "wav")).lower()
        if audio_format not in STREAM_FORMATS:
            raise server.ClientError(400, f"format {audio_format!r} cannot be streamed; use wav or pcm")
        chunk_frames = _pop_chunk_frames(data)
        job = resolve(data)
        stream = _Stream()
        stream.worker = asyncio.create_task(stream.run(submit, job, chunk_frames))  # the loop holds tasks weakly
        kind, first = await stream.messages.get()
        if kind == "error":
            raise first  # refused before any byte left: the status and JSON body of /voice
        rate = job.model.synthesizer.sampling_rate

        async def body() -> AsyncIterator[bytes]:
            try:
                yield (streaming_wav_header(rate) if audio_format == "wav" else b"") + pcm16(first)
                if kind == "end":
                    return
                while True:
                    kind_next, value = await stream.messages.get()
                    if kind_next == "end":
                        return
                    if kind_next == "error":
                        # The status line has left: abort the connection, so the client sees a broken stream.
                        logger.error("stream failed after %d chunks: %s", stream.chunks, value)
                        raise RuntimeError(f"synthesis failed mid-stream: {value}")
                    yield pcm16(value)
            finally:
                # A client that went away cancels this body: the worker stops at its next chunk, and its place in
                # the queue is given back when it returns.
                stream.cancelled.set()

        headers = {"X-Sampling-Rate": str(rate), "X-Sample-Format": "s16le", "X-Channels": "1"}
        return StreamingResponse(body(), media_type=STREAM_FORMATS[audio_format], headers=headers)

    async def voice_timings(request: Request) -> JSONResponse:
        data = await _read_request(request, read_body, state.max_body_size)
        with_audio = _pop_flag(data, "audio", True)
        job = resolve(data, str(data.pop("format", "wav")))

        def work() -> dict[str, Any]:
            with job.model.lock:
                rate, audio, timings = streaming.synthesize_with_timings(
                    job.model.synthesizer, job.text, job.speaker, job.language, job.params
                )
            answer = {**timings.as_dict(), "format": job.audio_format if with_audio else None, "audio": None}
            if with_audio:
                content, _media_type = server.encode_audio(audio, rate, job.audio_format)
                answer["audio"] = base64.b64encode(content).decode("ascii")
            return answer

        return JSONResponse(await submit(lambda: _synthesis_errors(work)))

    for path, route in (("/voice/stream", voice_stream), ("/voice/timings", voice_timings)):
        app.add_api_route(path, route, methods=["GET", "POST"])
