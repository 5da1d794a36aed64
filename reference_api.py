"""Bert-VITS2 2.3's own HTTP API (the routes of its `hiyoriUI.py`), served by server.py beside its routes.

Tools written against the reference's server call `/voice?model_id=0&speaker_name=...` and `/models/info`;
`mount` adds those routes, with the reference's parameter names, defaults and response shapes, to our app. They
run on the server's engine: the same loaded models, synthesis queue and size limits. Where we differ:

* A refused request gets a 4xx HTTP status (the reference answers 200) with the reference's JSON
  `{"status": <code>, "detail": ...}`; conditions the reference has no code for answer `{"detail": ...}`.
* Paths (`/models/add`, `root_dir`, `/tools/get_audio`) must lie under the folders the server was configured
  with (config.yml's `dataset_path`, the folders of the served models): anything else is 403.
* No online translation: `auto_translate=true` and `/tools/translate` answer 501.
* `/voice` is the reference's only for requests that name `model_id` or post a form; the others reach our own.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.datastructures import Headers, QueryParams
from starlette.routing import Match
from starlette.types import Message, Scope

import infer
from synthesis_params import SynthesisParams
from synthesis_plan import Utterance, split_sentences
from voice_registry import LoadedModel, ModelRegistry, ModelSpec

logger = logging.getLogger(__name__)

LANGUAGES = ("ZH", "JP", "EN")
MIX = "MIX"
AUTO = "AUTO"
PIECE_SEPARATOR = "||"  # the reference's manual cut between generator passes
DEFAULT_ROOT_DIR = "Data"  # the reference's default `root_dir`
EXAMPLE_LISTS = ("train.list", "val.list")
LIST_FIELDS = 7  # wav|speaker|language|text|phones|tones|word2ph: a cleaned list line
EXPORT_SUFFIXES = (".safetensors", ".onnx")  # model files that carry their own config
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_GENERATOR_FILE = re.compile(r"^G_(\d+)\.pth$")

Submit = Callable[[Callable[[], Any]], Awaitable[Any]]
ReadBody = Callable[[Request, int], Awaitable[bytes]]


class ServedState(Protocol):
    """What these routes read of server.py's ServerState."""

    registry: ModelRegistry
    max_text_length: int
    max_body_size: int
    allowed_roots: tuple[Path, ...]


class Code(IntEnum):
    """The reference's `status` codes."""

    MODEL_NOT_LOADED = 10
    NO_SPEAKER = 11
    UNKNOWN_SPEAKER_ID = 12
    UNKNOWN_SPEAKER_NAME = 13
    DELETE_UNKNOWN_MODEL = 14
    NO_CONFIG = 15
    LOAD_FAILED = 16
    NO_EXAMPLES = 17
    AUDIO_NOT_FOUND = 18
    NOT_WAV = 19
    TRANSLATE_WITH_MIX_OR_AUTO = 20
    MIX_SYNTAX = 21


# The HTTP status each code is answered with.
HTTP_STATUS = {
    Code.MODEL_NOT_LOADED: 404,
    Code.NO_SPEAKER: 400,
    Code.UNKNOWN_SPEAKER_ID: 404,
    Code.UNKNOWN_SPEAKER_NAME: 404,
    Code.DELETE_UNKNOWN_MODEL: 404,
    Code.NO_CONFIG: 404,
    Code.LOAD_FAILED: 422,
    Code.NO_EXAMPLES: 404,
    Code.AUDIO_NOT_FOUND: 404,
    Code.NOT_WAV: 415,
    Code.TRANSLATE_WITH_MIX_OR_AUTO: 400,
    Code.MIX_SYNTAX: 400,
}


class Refusal(Exception):
    """A refused reference-API request: `http_status` and `{"status": code, "detail": detail}` (no code: none)."""

    def __init__(self, http_status: int, detail: Any, code: Code | None = None) -> None:
        super().__init__(str(detail))
        self.http_status = http_status
        self.detail = detail
        self.code = code

    @classmethod
    def coded(cls, code: Code, detail: str) -> Refusal:
        return cls(HTTP_STATUS[code], detail, code)

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"detail": self.detail}
        if self.code is not None:
            body = {"status": int(self.code), **body}
        return JSONResponse(body, status_code=self.http_status)


# --------------------------------------------------------------------------------------------------------------
# Query parameters, with the reference's names and defaults


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, protected_namespaces=())


class VoiceQuery(_Query):
    text: str
    model_id: int
    speaker_name: str | None = None
    speaker_id: int | None = None
    sdp_ratio: float = 0.2
    noise: float = 0.2
    noisew: float = 0.9
    length: float = 1.0
    language: str | None = None
    auto_translate: bool = False
    auto_split: bool = False
    emotion: int | str | None = None  # for 2.1/2.2 models; 2.3 models ignore it, as the reference's do
    style_text: str | None = None
    style_weight: float = 0.7


class AddQuery(_Query):
    model_path: str
    config_path: str | None = None
    device: str = "auto"  # the reference's is "cuda", which a CPU-only server cannot take
    language: str = "ZH"


class ModelIdQuery(_Query):
    model_id: int


class RootQuery(_Query):
    root_dir: str = DEFAULT_ROOT_DIR


class ExampleQuery(RootQuery):
    language: str | None = None


class AudioQuery(_Query):
    path: str


def parse_query(model: type[_Query], data: Mapping[str, Any]) -> Any:
    """`data` checked against `model`; refused as FastAPI refuses bad parameters (422, a list in `detail`)."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as error:
        details = error.errors(include_url=False, include_context=False, include_input=False)
        for item in details:
            item["loc"] = ["query", *item["loc"]]
        raise Refusal(422, jsonable_encoder(details)) from error


# --------------------------------------------------------------------------------------------------------------
# The model table: the reference's model ids


@dataclass
class TableEntry:
    """A loaded model as the reference describes it. Ids that name the same file share one entry (and weights)."""

    model_path: str
    config_path: str
    device: str
    language: str  # ZH, JP, EN, MIX or AUTO
    synthesizer: infer.Synthesizer
    lock: threading.Lock  # shared with the server's routes for a served model: one synthesis at a time
    file: Path  # the resolved model file

    def describe(self) -> dict[str, Any]:
        speaker_ids = dict(self.synthesizer.speaker_ids)
        return {
            "config_path": self.config_path,
            "model_path": self.model_path,
            "device": self.device,
            "language": self.language,
            "spk2id": speaker_ids,
            "id2spk": {str(index): name for name, index in speaker_ids.items()},
            "version": self.synthesizer.config.version,
        }


class ModelTable:
    """Model ids as the reference hands them out: counting up from 0, never reused after a delete."""

    def __init__(self) -> None:
        self.entries: dict[int, TableEntry] = {}
        self._next_id = 0

    def add(self, entry: TableEntry) -> int:
        model_id = self._next_id
        self.entries[model_id] = entry
        self._next_id += 1
        return model_id

    def get(self, model_id: int) -> TableEntry:
        if model_id not in self.entries:
            raise Refusal.coded(Code.MODEL_NOT_LOADED, f"model_id={model_id} is not loaded; {self._known()}")
        return self.entries[model_id]

    def remove(self, model_id: int) -> None:
        if self.entries.pop(model_id, None) is None:
            raise Refusal.coded(Code.DELETE_UNKNOWN_MODEL, f"model_id={model_id} does not exist; {self._known()}")

    def sharing(self, file: Path) -> TableEntry | None:
        """The entry already holding `file`'s weights, if any."""
        return next((entry for entry in self.entries.values() if entry.file == file), None)

    def loaded_files(self) -> set[Path]:
        return {entry.file for entry in self.entries.values()}

    def _known(self) -> str:
        return f"loaded model ids: {', '.join(map(str, self.entries)) or 'none'}"


def reference_language(language: str) -> str:
    return str(language).strip().upper()


def entry_of_served_model(model: LoadedModel) -> TableEntry:
    """A table entry for one of the server's loaded models: same weights, same lock."""
    spec = model.spec
    return TableEntry(
        model_path=os.path.normpath(spec.model),
        config_path=os.path.normpath(spec.config) if spec.config else "",
        device=str(model.synthesizer.device),
        language=reference_language(spec.language),
        synthesizer=model.synthesizer,
        lock=model.lock,
        file=Path(spec.model).resolve(),
    )


# --------------------------------------------------------------------------------------------------------------
# Which paths may be read


def configured_roots(yml: str | None, specs: Iterable[ModelSpec]) -> tuple[Path, ...]:
    """The folders the reference routes may read: `dataset_path` of config.yml (when there is one and it is not
    empty: empty would open the whole working folder) and the folders of the served models and their configs."""
    import config as global_config

    yml_path = Path(global_config.config_path_from_env(yml))
    folders = [global_config.load_config(yml_path).dataset_path] if yml_path.is_file() else []
    return resolved_roots([folder for folder in folders if folder] + model_folders(specs))


def model_folders(specs: Iterable[ModelSpec]) -> list[str]:
    """The folders of the models and of their configs."""
    paths = [path for spec in specs for path in (spec.model, spec.config) if path]
    return [str(Path(path).parent) for path in paths]


def resolved_roots(folders: Iterable[str | Path]) -> tuple[Path, ...]:
    roots: list[Path] = []
    for folder in folders:
        root = Path(folder).resolve()
        if root not in roots:
            roots.append(root)
    return tuple(roots)


def inside_roots(path: str | Path, roots: Sequence[Path], what: str) -> Path:
    """`path` resolved (links followed), when it lies under one of `roots`; else a 403 naming the roots."""
    try:
        resolved = Path(path).resolve()
    except (OSError, ValueError) as error:  # a NUL byte, a loop of links, ...
        raise Refusal(400, f"{what} {str(path)!r} is not a usable path: {error}") from error
    if is_under(resolved, roots):
        return resolved
    allowed = ", ".join(str(root) for root in roots) or "none"
    raise Refusal(403, f"{what} {str(path)!r} is outside the folders this server serves ({allowed})")


# --------------------------------------------------------------------------------------------------------------
# /voice: cutting the text as the reference does, speaking it on the server's engine


@dataclass(frozen=True)
class Piece:
    """One generator pass."""

    text: str
    language: str  # ZH, JP or EN
    speaker: str


def _mix_syntax_error(chunk: str, why: str) -> Refusal:
    return Refusal.coded(
        Code.MIX_SYNTAX, f"MIX syntax error in {chunk!r}: {why}; write [speaker]<ZH>text<EN>text[speaker]<JP>text"
    )


def parse_mix(chunk: str) -> list[Piece]:
    """The reference's MIX form: `[speaker]` blocks, each a run of `<lang>text` parts (lang ZH, JP or EN)."""
    pieces = []
    for block in chunk.split("["):
        if not block:
            continue
        speaker, closed, rest = block.partition("]")
        if not closed or "]" in rest:
            raise _mix_syntax_error(chunk, f"{block!r} needs exactly one ']' after the speaker")
        for part in rest.split("<"):
            if not part:
                continue
            tag, closed, text = part.partition(">")
            if not closed or ">" in text:
                raise _mix_syntax_error(chunk, f"{part!r} needs exactly one '>' after the language")
            language = tag.strip().upper()
            if language not in LANGUAGES:
                raise _mix_syntax_error(chunk, f"unknown language <{tag}> (use ZH, JP or EN)")
            pieces.append(Piece(text, language, speaker.strip()))
    return pieces


def plan_pieces(text: str, language: str, speaker: str, auto_split: bool) -> list[Piece]:
    """The generator passes of a request, in the reference's order of cuts: `||` first, then MIX tags or AUTO
    identification, then (with `auto_split`) sentences. Line breaks are dropped, as the reference drops them."""
    from text.language_id import split_by_language

    chunks = [chunk for chunk in text.replace("\n", "").lstrip().split(PIECE_SEPARATOR) if chunk]
    if language == MIX:
        pieces = [piece for chunk in chunks for piece in parse_mix(chunk)]
    elif language == AUTO:
        pieces = [Piece(part, code, speaker) for chunk in chunks for part, code in split_by_language(chunk)]
    else:
        pieces = [Piece(chunk, language, speaker) for chunk in chunks]
    if auto_split:
        pieces = [
            Piece(sentence, piece.language, piece.speaker)
            for piece in pieces
            for sentence in split_sentences(piece.text)
        ]
    return [piece for piece in pieces if piece.text.strip()]


def full_scale_pcm(audio: Any) -> Any:
    """16-bit samples scaled so the loudest one is full scale, as the reference's WAV writer scales them."""
    import numpy as np

    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak == 0.0:
        return np.zeros(audio.shape, dtype=np.int16)
    return (audio.astype(np.float64) * (32767.0 / peak)).astype(np.int16)


# How the reference's /voice spells the SynthesisParams fields it takes.
SPELLED = {"noise_scale": "noise", "noise_scale_w": "noisew", "length_scale": "length"}


def synthesis_params(query: VoiceQuery) -> SynthesisParams:
    """The request's parameters, checked against our ranges (422 naming the parameter as the client spelled it).
    The pieces are spoken back to back, as the reference joins them: no sentence splitting, no pauses."""
    values = {
        "sdp_ratio": query.sdp_ratio,
        "noise_scale": query.noise,
        "noise_scale_w": query.noisew,
        "length_scale": query.length,
        "style_text": query.style_text,
        "style_weight": query.style_weight,
        "split": False,
        "sentence_pause": 0.0,
        "paragraph_pause": 0.0,
    }
    try:
        return SynthesisParams.checked(values, spelled=SPELLED)
    except ValueError as error:
        raise Refusal(422, str(error)) from error


def speak(entry: TableEntry, pieces: Sequence[Piece], params: SynthesisParams) -> bytes:
    """The pieces spoken one after another, as a 16-bit WAV (on a worker thread)."""
    import soundfile

    plan = [[Utterance(piece.speaker, ((piece.text, piece.language),)) for piece in pieces]]
    try:
        with entry.lock:
            sampling_rate, audio = entry.synthesizer.render(plan, params)
    except FileNotFoundError as error:  # a BERT folder this server lacks
        raise Refusal(503, str(error)) from error
    except ValueError as error:  # text with nothing to pronounce, ...
        raise Refusal(422, str(error)) from error
    buffer = io.BytesIO()
    soundfile.write(buffer, full_scale_pcm(audio), sampling_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def is_reference_voice_call(scope: Scope) -> bool:
    """Whether a /voice request is the reference's: it names `model_id` (the reference requires it, our own /voice
    calls it `model`) or posts a form (our own POST takes JSON)."""
    if "model_id" in QueryParams(scope.get("query_string", b"")):
        return True
    content_type = Headers(scope=scope).get("content-type", "").split(";")[0].strip().lower()
    return scope.get("method") == "POST" and content_type in FORM_TYPES


class ReferenceVoiceRoute(APIRoute):
    """A /voice route that matches reference calls only, so the others go on to the server's own /voice."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE and not is_reference_voice_call(scope):
            return Match.NONE, {}
        return match, child_scope


# --------------------------------------------------------------------------------------------------------------
# Local files: checkpoints and example lines


def step_order(name: str) -> tuple[int, str]:
    """Sort key of a `G_<step>.pth` name: by step, names without one last."""
    found = _GENERATOR_FILE.match(name)
    return (int(found.group(1)) if found else 10**10, name)


def is_under(path: Path, roots: Sequence[Path]) -> bool:
    """Whether `path`, links followed, lies under one of `roots`."""
    resolved = path.resolve()
    return any(resolved.is_relative_to(root) for root in roots)


def generator_files(folder: Path, prefix: str, skip: set[Path], roots: Sequence[Path]) -> list[str]:
    """`prefix` + the names of the `G_*.pth` files in `folder` (under `roots`, not in `skip`), by step."""
    if not folder.is_dir():
        return []
    names = [
        child.name
        for child in folder.iterdir()
        if child.name.startswith("G_") and child.name.endswith(".pth") and child.is_file()
        if is_under(child, roots) and child.resolve() not in skip
    ]
    return [prefix + name for name in sorted(names, key=step_order)]


def local_generators(root: Path, skip: set[Path], roots: Sequence[Path]) -> dict[str, list[str]]:
    """Per folder of `root` (and `root` itself, as "."): its `G_*.pth` files, then those of its `models/`.
    Folders and files that links take outside `roots` are left out."""
    folders = sorted(child.name for child in root.iterdir() if child.is_dir() and is_under(child, roots)) + ["."]
    listing = {}
    for name in folders:
        found = generator_files(root / name, "", skip, roots)
        found += generator_files(root / name / "models", "models/", skip, roots)
        if found:
            listing[name] = found
    return listing


def list_examples(root: Path, roots: Sequence[Path]) -> dict[str, list[dict[str, str]]]:
    """The lines of every train.list / val.list under `root` whose audio exists under `roots`, by language."""
    examples: dict[str, list[dict[str, str]]] = {language: [] for language in LANGUAGES}
    for folder, _dirs, files in os.walk(root):
        for name in sorted(set(files) & set(EXAMPLE_LISTS)):
            list_path = Path(folder) / name
            for line in list_path.read_text(encoding="utf-8", errors="replace").splitlines():
                fields = line.split("|")
                if len(fields) != LIST_FIELDS or fields[2] not in examples:
                    continue
                audio = Path(fields[0])
                if audio.is_file() and is_under(audio, roots):
                    examples[fields[2]].append({"text": fields[3], "audio": fields[0], "speaker": fields[1]})
    return examples


def _nvml_errors() -> tuple[type[Exception], ...]:
    """What torch.cuda.utilization raises where NVML cannot tell: no pynvml, no driver, a MIG slice, ..."""
    try:
        from pynvml import NVMLError
    except ImportError:
        return (ModuleNotFoundError, RuntimeError)
    return (ModuleNotFoundError, RuntimeError, NVMLError)


def gpu_load(index: int) -> float | None:
    """The GPU's recent load (0 to 1, as the reference's GPUtil reports it); None where NVML cannot tell."""
    import torch

    try:
        return torch.cuda.utilization(index) / 100.0
    except _nvml_errors():
        return None


# --------------------------------------------------------------------------------------------------------------
# The routes


class ReferenceApi:
    """The reference's routes over the server's models, queue and limits (`state` is the server's ServerState)."""

    def __init__(self, state: ServedState, submit: Submit, read_body: ReadBody) -> None:
        import psutil

        self.state = state
        self.submit = submit
        self.read_body = read_body
        self.table = ModelTable()
        for model in state.registry.models:
            self.table.add(entry_of_served_model(model))
        specs = [model.spec for model in state.registry.models]
        self.roots = tuple(state.allowed_roots) or resolved_roots(model_folders(specs))
        # Models added later read their BERT folders from the same place as the served ones.
        self.bert_dirs = dict(state.registry.models[0].synthesizer.bert_dirs)
        self.examples: dict[Path, dict[str, list[dict[str, str]]]] = {}  # per root_dir, read once as the reference
        self.random = random.Random()
        psutil.cpu_percent(interval=None)  # starts the CPU meter: /status reports the use since the last call
        self.router = APIRouter()
        self.router.add_api_route(
            "/voice", self.voice, methods=["GET", "POST"], route_class_override=ReferenceVoiceRoute
        )
        routes: dict[str, Callable[[Request], Awaitable[Any]]] = {
            "/models/info": self.models_info,
            "/models/add": self.add_model,
            "/models/delete": self.delete_model,
            "/models/get_unloaded": self.unloaded_models,
            "/models/get_local": self.local_models,
            "/status": self.status,
            "/tools/translate": self.translate,
            "/tools/random_example": self.random_example,
            "/tools/get_audio": self.get_audio,
        }
        for path, endpoint in routes.items():
            self.router.add_api_route(path, endpoint, methods=["GET"])

    async def _form_fields(self, request: Request) -> dict[str, str]:
        """The text fields of a posted form (uploads, the reference's `reference_audio`, are ignored), read under
        the server's body limit."""
        body = await self.read_body(request, self.state.max_body_size)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async with Request(request.scope, replay).form() as form:
            return {name: value for name, value in form.items() if isinstance(value, str)}

    def _speaker(self, entry: TableEntry, query: VoiceQuery) -> str:
        """The speaker's name, from `speaker_name` or else `speaker_id` (codes 11, 12, 13 as the reference)."""
        speakers = entry.synthesizer.speaker_ids
        if query.speaker_name is None:
            if query.speaker_id is None:
                raise Refusal.coded(Code.NO_SPEAKER, "give speaker_name or speaker_id")
            names = {index: name for name, index in speakers.items()}
            if query.speaker_id not in names:
                raise Refusal.coded(
                    Code.UNKNOWN_SPEAKER_ID,
                    f"speaker_id={query.speaker_id} does not exist; speaker ids: {', '.join(map(str, sorted(names)))}",
                )
            return names[query.speaker_id]
        self._check_speaker(entry, query.speaker_name)
        return query.speaker_name

    @staticmethod
    def _check_speaker(entry: TableEntry, name: str) -> None:
        if name not in entry.synthesizer.speaker_ids:
            known = ", ".join(entry.synthesizer.speakers)
            raise Refusal.coded(Code.UNKNOWN_SPEAKER_NAME, f"speaker_name={name} does not exist; speakers: {known}")

    def _language(self, entry: TableEntry, query: VoiceQuery) -> str:
        language = reference_language(query.language) if query.language is not None else entry.language
        if language not in (*LANGUAGES, MIX, AUTO):
            raise Refusal(400, f"unknown language {query.language!r}; use ZH, JP, EN, MIX or AUTO")
        if query.auto_translate:
            if language in (MIX, AUTO):
                raise Refusal.coded(
                    Code.TRANSLATE_WITH_MIX_OR_AUTO, f"auto_translate cannot be used with language={language}"
                )
            raise Refusal(501, "auto_translate is not offered: this server works offline; send the text translated")
        return language

    def _check_lengths(self, query: VoiceQuery) -> None:
        limit = self.state.max_text_length
        for name, value in (("text", query.text), ("style_text", query.style_text or "")):
            if len(value) > limit:
                raise Refusal(422, f"{name} is {len(value)} characters long; the limit is {limit}")

    async def voice(self, request: Request) -> Response:
        if len(request.url.query) > self.state.max_body_size:
            raise Refusal(414, f"the query string exceeds the limit of {self.state.max_body_size} bytes")
        data: dict[str, Any] = dict(request.query_params)
        if request.method == "POST":
            data.update(await self._form_fields(request))  # text and style_text come as form fields
        query = parse_query(VoiceQuery, data)
        entry = self.table.get(query.model_id)
        speaker = self._speaker(entry, query)
        language = self._language(entry, query)
        self._check_lengths(query)
        params = synthesis_params(query)
        pieces = plan_pieces(query.text, language, speaker, query.auto_split)
        for name in {piece.speaker for piece in pieces}:
            self._check_speaker(entry, name)
        if not pieces:
            raise Refusal(422, "the text has nothing to speak")
        logger.info("reference /voice: model %d, %s, %s, %d piece(s)", query.model_id, speaker, language, len(pieces))
        content = await self.submit(lambda: speak(entry, pieces, params))
        return Response(content=content, media_type="audio/wav")

    async def models_info(self, _request: Request) -> dict[str, Any]:
        return {str(model_id): entry.describe() for model_id, entry in self.table.entries.items()}

    def _config_of(self, query: AddQuery, model_file: Path) -> Path | None:
        """The config to load the model with: the given one, else config.json beside the model or one folder up
        (export files carry theirs)."""
        if query.config_path is not None:
            return inside_roots(query.config_path, self.roots, "config_path")
        if model_file.suffix in EXPORT_SUFFIXES:
            return None
        folder = Path(query.model_path).parent
        for candidate in (folder / "config.json", folder.parent / "config.json"):
            if candidate.is_file():
                return inside_roots(candidate, self.roots, "config_path")
        raise Refusal.coded(
            Code.NO_CONFIG, f"no config_path given and no config.json in {str(folder)!r} or the folder above"
        )

    def _load(self, query: AddQuery, model_file: Path, config_file: Path | None, language: str) -> TableEntry:
        """A newly loaded table entry (on a worker thread); failures answer code 16 naming the problem."""
        import config as global_config

        try:
            device = global_config.resolve_device(query.device)
            synthesizer = infer.load_synthesizer(model_file, config_file, device=device, bert_dirs=self.bert_dirs)
        except (ValueError, OSError, RuntimeError, KeyError) as error:
            raise Refusal.coded(Code.LOAD_FAILED, f"cannot load {query.model_path}: {error}") from error
        return TableEntry(
            model_path=os.path.normpath(query.model_path),
            config_path=os.path.normpath(config_file) if config_file else "",
            device=str(synthesizer.device),
            language=language,
            synthesizer=synthesizer,
            lock=threading.Lock(),
            file=model_file,
        )

    async def add_model(self, request: Request) -> dict[str, Any]:
        query = parse_query(AddQuery, request.query_params)
        model_file = inside_roots(query.model_path, self.roots, "model_path")
        if not model_file.is_file():
            raise Refusal(404, f"model file {query.model_path!r} does not exist", Code.LOAD_FAILED)
        language = reference_language(query.language)
        if language not in (*LANGUAGES, MIX, AUTO):
            raise Refusal(400, f"unknown language {query.language!r}; use ZH, JP, EN, MIX or AUTO")
        config_file = self._config_of(query, model_file)  # checked even for a loaded file, as the reference does
        entry = self.table.sharing(model_file)
        if entry is None:
            entry = await self.submit(lambda: self._load(query, model_file, config_file, language))
            entry = self.table.sharing(model_file) or entry  # an add of the same file that finished first wins
        model_id = self.table.add(entry)
        logger.info("reference /models/add: model %d is %s", model_id, entry.file)
        return {"status": 0, "detail": "model added", "Data": {"model_id": model_id, "model_info": entry.describe()}}

    async def delete_model(self, request: Request) -> dict[str, Any]:
        query = parse_query(ModelIdQuery, request.query_params)
        self.table.remove(query.model_id)
        return {"status": 0, "detail": "model deleted"}

    def _root(self, request: Request) -> Path:
        root = inside_roots(parse_query(RootQuery, request.query_params).root_dir, self.roots, "root_dir")
        if not root.is_dir():
            raise Refusal(404, f"root_dir {str(root)!r} is not a folder")
        return root

    async def local_models(self, request: Request) -> dict[str, list[str]]:
        return local_generators(self._root(request), set(), self.roots)

    async def unloaded_models(self, request: Request) -> dict[str, list[str]]:
        return local_generators(self._root(request), self.table.loaded_files(), self.roots)

    async def status(self, _request: Request) -> dict[str, Any]:
        import psutil
        import torch

        memory = psutil.virtual_memory()
        gpus = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            mib = 1024 * 1024
            memory_mib = {"total": total / mib, "used": (total - free) / mib, "free": free / mib}
            gpus.append({"gpu_id": index, "gpu_load": gpu_load(index), "gpu_memory": memory_mib})
        return {
            "devices": ["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())],
            "cpu_percent": psutil.cpu_percent(interval=None),
            "memory_total": memory.total,
            "memory_available": memory.available,
            "memory_used": memory.used,
            "memory_percent": memory.percent,
            "gpu": gpus,
        }

    async def translate(self, _request: Request) -> dict[str, Any]:
        raise Refusal(501, "/tools/translate is not offered: this server works offline, without a translation service")

    async def random_example(self, request: Request) -> dict[str, Any]:
        query = parse_query(ExampleQuery, request.query_params)
        root = self._root(request)
        if root not in self.examples:
            self.examples[root] = list_examples(root, self.roots)
        examples = self.examples[root]
        if query.language is None:
            pool = [example for language in LANGUAGES for example in examples[language]]
        else:
            language = reference_language(query.language)
            if language not in LANGUAGES:
                raise Refusal(400, f"unknown language {query.language!r}; use ZH, JP or EN")
            pool = examples[language]
        if not pool:
            which = f"{query.language} " if query.language else ""
            raise Refusal.coded(Code.NO_EXAMPLES, f"no {which}examples in the train/val lists under {root}")
        return {"status": 0, "Data": self.random.choice(pool)}

    async def get_audio(self, request: Request) -> FileResponse:
        query = parse_query(AudioQuery, request.query_params)
        path = inside_roots(query.path, self.roots, "path")
        if not path.is_file():
            raise Refusal.coded(Code.AUDIO_NOT_FOUND, f"audio {query.path!r} does not exist")
        if path.suffix.lower() != ".wav":
            raise Refusal.coded(Code.NOT_WAV, f"{query.path!r} is not a .wav file")
        return FileResponse(path, media_type="audio/wav")


def mount(app: FastAPI, state: ServedState, submit: Submit, read_body: ReadBody) -> ReferenceApi:
    """Add the reference's routes to the server's `app`. `submit` runs work on the server's synthesis queue,
    `read_body(request, limit)` reads a body under the server's size limit."""
    api = ReferenceApi(state, submit, read_body)
    routes = app.router.routes
    before = len(routes)
    app.include_router(api.router)
    # Ahead of the server's own routes, whose /voice would answer every /voice request.
    routes[:] = routes[before:] + routes[:before]

    async def refused(_request: Request, refusal: Any) -> JSONResponse:
        return refusal.response()

    app.add_exception_handler(Refusal, refused)
    app.state.reference_api = api
    return api
