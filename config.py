"""Settings as typed, validated dataclasses: the global pipeline settings (``config.yml``) and the model config
(Bert-VITS2's ``config.json``), plus the one device rule of every script (``resolve_device``).

The model config: ``load_model_config(path)`` (or ``model_config_from_dict`` / ``model_config_from_json`` /
``as_model_config`` for parsed data) returns a ``ModelConfig`` that every script reads; see its section below.

``load_config()`` reads the file named by its argument, else by the ``BV2_CONFIG`` environment variable, else
``config.yml`` in the working directory. Paths of the resample, preprocess_text, bert_gen and train_ms
sections are joined onto ``dataset_path`` the way the reference does (an absolute path stays as it is); server
paths are left relative to the working directory. Every invalid value raises ``ValueError`` naming the setting
and the file, so the message says what to change and where.

Nothing happens at import: no argv parsing, no file access, no environment writes.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import yaml

import atomic_io
from text.symbols import LANGUAGES

logger = logging.getLogger(__name__)

CONFIG_ENV_VAR = "BV2_CONFIG"
DEFAULT_CONFIG_PATH = "config.yml"

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# A request may also name "mix" (tagged parts) or "auto" (detected per part) besides one language.
SERVER_LANGUAGES = (*LANGUAGES, "mix", "auto")
# Sections of the reference's config.yml that this package does not use; they are ignored with a warning so a
# reference file still loads. Anything else unknown is most likely a typo and is an error.
IGNORED_REFERENCE_SECTIONS = ("mirror", "openi_token", "emo_gen", "translate")

T = TypeVar("T")


class _Section:
    """Reads and checks the values of one mapping in the yml; errors name ``<file>: setting '<dotted.key>'``."""

    def __init__(self, data: Any, name: str, source: str) -> None:
        self.name = name
        self.source = source
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            what = f"setting '{name}'" if name else "the file"
            raise ValueError(f"{source}: {what} must be a mapping of settings, got {_describe(data)}")
        self.data: Mapping[str, Any] = data
        self._read: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def error(self, key: str, expected: str, value: Any) -> ValueError:
        return ValueError(f"{self.source}: setting '{self.key(key)}' must be {expected}, got {_describe(value)}")

    def raw(self, key: str, default: Any) -> Any:
        self._read.add(key)
        return self.data.get(key, default)

    def string(self, key: str, default: str, allow_empty: bool = True) -> str:
        value = self.raw(key, default)
        if value is None and allow_empty:
            return ""
        if not isinstance(value, str) or (not allow_empty and not value):
            raise self.error(key, "a string" if allow_empty else "a non-empty string", value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def integer(self, key: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.raw(key, default)
        # bool is an int subclass; `keep_ckpts: true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, _int_range_text(minimum, maximum), value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.error(key, _int_range_text(minimum, maximum), value)
        return value

    def number(self, key: str, default: float, positive: bool = False) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value <= 0):
            raise self.error(key, "a positive number" if positive else "a number", value)
        return float(value)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(key, default)
        if value not in choices:
            raise self.error(key, "one of " + ", ".join(repr(c) for c in choices), value)
        return value

    def device(self, key: str, default: str) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or not DEVICE_PATTERN.match(value):
            raise self.error(key, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", value)
        return value

    def section(self, key: str) -> _Section:
        return _Section(self.raw(key, None), self.key(key), self.source)

    def list_of(self, key: str) -> list[Any]:
        value = self.raw(key, [])
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, "a list", value)
        return value

    def reject_unknown(self, reference: str = "config.yml") -> None:
        """Every key nobody read is a typo or a setting this package does not have: name it and its nearest."""
        unknown = sorted(str(k) for k in self.data if k not in self._read)
        if not unknown:
            return
        where = f"in section '{self.name}'" if self.name else "at the top level"
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(self._read), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else "valid: " + ", ".join(sorted(self._read))
            hints.append(f"'{self.key(key)}' ({hint})")
        raise ValueError(
            f"{self.source}: unknown setting(s) {'; '.join(hints)} {where}; check the spelling against {reference}"
        )


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _int_range_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"an integer >= {minimum}"
    return "an integer"


def _under_dataset(dataset_path: str, path: str) -> str:
    """The reference joins dataset-relative paths with os.path.join, so an absolute path wins unchanged."""
    return os.path.join(dataset_path, path)


@dataclass(frozen=True)
class ResampleConfig:
    sampling_rate: int
    in_dir: str
    out_dir: str

    @classmethod
    def from_section(cls, section: _Section, dataset_path: str) -> ResampleConfig:
        config = cls(
            sampling_rate=section.integer("sampling_rate", 44100, minimum=1),
            in_dir=_under_dataset(dataset_path, section.string("in_dir", "audios/raw", allow_empty=False)),
            out_dir=_under_dataset(dataset_path, section.string("out_dir", "audios/wavs", allow_empty=False)),
        )
        section.reject_unknown()
        return config


@dataclass(frozen=True)
class PreprocessTextConfig:
    transcription_path: str
    # Resolved: an empty setting becomes "<transcription_path>.cleaned", as the reference's preprocessing does.
    cleaned_path: str
    train_path: str
    val_path: str
    config_path: str
    val_per_lang: int
    max_val_total: int
    clean: bool

    @classmethod
    def from_section(cls, section: _Section, dataset_path: str) -> PreprocessTextConfig:
        transcription = _under_dataset(
            dataset_path, section.string("transcription_path", "filelists/transcription.list", allow_empty=False)
        )
        cleaned = section.string("cleaned_path", "")
        config = cls(
            transcription_path=transcription,
            cleaned_path=_under_dataset(dataset_path, cleaned) if cleaned else transcription + ".cleaned",
            train_path=_under_dataset(dataset_path, section.string("train_path", "filelists/train.list", False)),
            val_path=_under_dataset(dataset_path, section.string("val_path", "filelists/val.list", False)),
            config_path=_under_dataset(dataset_path, section.string("config_path", "config.json", False)),
            val_per_lang=section.integer("val_per_lang", 4, minimum=0),
            max_val_total=section.integer("max_val_total", 12, minimum=0),
            clean=section.boolean("clean", True),
        )
        section.reject_unknown()
        return config


@dataclass(frozen=True)
class BertGenConfig:
    config_path: str
    num_processes: int
    device: str
    use_multi_device: bool

    @classmethod
    def from_section(cls, section: _Section, dataset_path: str) -> BertGenConfig:
        config = cls(
            config_path=_under_dataset(dataset_path, section.string("config_path", "config.json", False)),
            num_processes=section.integer("num_processes", 2, minimum=1),
            device=section.device("device", "auto"),
            use_multi_device=section.boolean("use_multi_device", False),
        )
        section.reject_unknown()
        return config


@dataclass(frozen=True)
class TrainEnvConfig:
    """torch.distributed rendezvous defaults for a run started without torchrun."""

    MASTER_ADDR: str
    MASTER_PORT: int
    WORLD_SIZE: int
    LOCAL_RANK: int
    RANK: int
    # Any further variables the user listed, as strings.
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_section(cls, section: _Section) -> TrainEnvConfig:
        env = cls(
            MASTER_ADDR=section.string("MASTER_ADDR", "localhost", allow_empty=False),
            MASTER_PORT=section.integer("MASTER_PORT", 10086, minimum=1, maximum=65535),
            WORLD_SIZE=section.integer("WORLD_SIZE", 1, minimum=1),
            LOCAL_RANK=section.integer("LOCAL_RANK", 0, minimum=0),
            RANK=section.integer("RANK", 0, minimum=0),
            extra=_extra_env(section),
        )
        if env.RANK >= env.WORLD_SIZE:
            raise section.error("RANK", f"smaller than WORLD_SIZE ({env.WORLD_SIZE})", env.RANK)
        return env

    def as_environ(self) -> dict[str, str]:
        """All variables as strings, ready for ``os.environ``."""
        values = {
            "MASTER_ADDR": self.MASTER_ADDR,
            "MASTER_PORT": str(self.MASTER_PORT),
            "WORLD_SIZE": str(self.WORLD_SIZE),
            "LOCAL_RANK": str(self.LOCAL_RANK),
            "RANK": str(self.RANK),
        }
        values.update(self.extra)
        return values

    def missing_from(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The variables ``environ`` lacks; values already set (e.g. by torchrun) take precedence."""
        return {name: value for name, value in self.as_environ().items() if name not in environ}


_ENV_TYPED_KEYS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK", "RANK")


def _extra_env(section: _Section) -> dict[str, str]:
    extra: dict[str, str] = {}
    for name in section.data:
        if name in _ENV_TYPED_KEYS:
            continue
        value = section.raw(name, None)
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ValueError(f"{section.source}: setting '{section.key(str(name))}' is not a valid variable name")
        if isinstance(value, (dict, list)) or value is None:
            raise section.error(name, "a string or a number", value)
        extra[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return extra


@dataclass(frozen=True)
class BaseModelConfig:
    use_base_model: bool
    # Local folder with the base checkpoints (G_0.pth, D_0.pth, optionally DUR_0.pth / WD_0.pth).
    model_dir: str

    @classmethod
    def from_section(cls, section: _Section, dataset_path: str) -> BaseModelConfig:
        use_base_model = section.boolean("use_base_model", False)
        for hub_key in ("repo_id", "model_image"):
            if hub_key in section.data:
                section.raw(hub_key, None)
                if use_base_model:
                    raise ValueError(
                        f"{section.source}: setting '{section.key(hub_key)}' is not supported: nothing is downloaded. "
                        f"Put the base checkpoints (G_0.pth, D_0.pth, ...) in a local folder and set "
                        f"'{section.key('model_dir')}' to it"
                    )
                logger.warning(
                    "%s: ignoring '%s' (base models are read from model_dir)", section.source, section.key(hub_key)
                )
        model_dir = section.string("model_dir", "base_model", allow_empty=not use_base_model)
        resolved = _under_dataset(dataset_path, model_dir) if model_dir else ""
        return cls(use_base_model=use_base_model, model_dir=resolved)


@dataclass(frozen=True)
class TrainMsConfig:
    env: TrainEnvConfig
    base: BaseModelConfig
    # Resolved model folder (dataset_path/model): checkpoints, train.log, TensorBoard events.
    model: str
    config_path: str
    num_workers: int
    spec_cache: bool
    # Checkpoints kept per net prefix; 0 keeps all (the reference only cleans when this is > 0).
    keep_ckpts: int
    all_in_mem: bool

    @property
    def model_dir(self) -> str:
        return self.model

    @classmethod
    def from_section(cls, section: _Section, dataset_path: str) -> TrainMsConfig:
        env_section = section.section("env")
        base_section = section.section("base")
        config = cls(
            env=TrainEnvConfig.from_section(env_section),
            base=BaseModelConfig.from_section(base_section, dataset_path),
            model=_under_dataset(dataset_path, section.string("model", "models", allow_empty=False)),
            config_path=_under_dataset(dataset_path, section.string("config_path", "config.json", False)),
            num_workers=section.integer("num_workers", 2, minimum=0),
            spec_cache=section.boolean("spec_cache", True),
            keep_ckpts=section.integer("keep_ckpts", 8, minimum=0),
            all_in_mem=section.boolean("all_in_mem", False),
        )
        base_section.reject_unknown()
        section.reject_unknown()
        return config


@dataclass(frozen=True)
class SpeakerPreset:
    speaker: str
    sdp_ratio: float = 0.2
    noise_scale: float = 0.6
    noise_scale_w: float = 0.8
    length_scale: float = 1.0

    @classmethod
    def from_section(cls, section: _Section) -> SpeakerPreset:
        preset = cls(
            speaker=section.string("speaker", "", allow_empty=False),
            sdp_ratio=section.number("sdp_ratio", 0.2),
            noise_scale=section.number("noise_scale", 0.6),
            noise_scale_w=section.number("noise_scale_w", 0.8),
            length_scale=section.number("length_scale", 1.0, positive=True),
        )
        if not 0.0 <= preset.sdp_ratio <= 1.0:
            raise section.error("sdp_ratio", "a number in [0, 1]", preset.sdp_ratio)
        section.reject_unknown()
        return preset


@dataclass(frozen=True)
class ServerModelConfig:
    model: str
    # Empty for an export file (.safetensors, .onnx), which carries its own config.
    config: str
    device: str
    language: str
    speakers: tuple[SpeakerPreset, ...] = ()
    # How requests name the model besides its index; empty: derived from the model file's name.
    name: str = ""

    @classmethod
    def from_section(cls, section: _Section, default_device: str, default_language: str) -> ServerModelConfig:
        speakers = _sections_of(section, "speakers", SpeakerPreset.from_section)
        model = cls(
            model=section.string("model", "", allow_empty=False),
            config=section.string("config", ""),
            device=section.device("device", default_device),
            language=section.choice("language", default_language, SERVER_LANGUAGES),
            speakers=tuple(speakers),
            name=section.string("name", ""),
        )
        if model.name.isdigit():
            # A number would be read as a model index in requests.
            raise section.error("name", "a name that is not a number", model.name)
        names = [preset.speaker for preset in model.speakers]
        if len(set(names)) != len(names):
            raise section.error("speakers", "a list naming each speaker once", names)
        section.reject_unknown()
        return model


@dataclass(frozen=True)
class ServerConfig:
    port: int
    device: str
    language: str
    models: tuple[ServerModelConfig, ...] = ()
    # Loopback unless told otherwise: the server has no authentication.
    host: str = "127.0.0.1"
    # Requests admitted at once (waiting + being synthesized); beyond it the server answers 503 + Retry-After.
    queue_size: int = 8
    max_text_length: int = 500
    max_body_size: int = 65536

    @classmethod
    def from_section(cls, section: _Section) -> ServerConfig:
        port = section.integer("port", 5000, minimum=1, maximum=65535)
        device = section.device("device", "auto")
        language = section.choice("language", "ZH", SERVER_LANGUAGES)
        models = _sections_of(section, "models", lambda item: ServerModelConfig.from_section(item, device, language))
        names = [model.name for model in models if model.name]
        if len(set(names)) != len(names):
            raise section.error("models", "models with distinct names", names)
        config = cls(
            port=port,
            device=device,
            language=language,
            models=tuple(models),
            host=section.string("host", "127.0.0.1", allow_empty=False),
            queue_size=section.integer("queue_size", 8, minimum=1),
            max_text_length=section.integer("max_text_length", 500, minimum=1),
            max_body_size=section.integer("max_body_size", 65536, minimum=1024),
        )
        section.reject_unknown()
        return config


@dataclass(frozen=True)
class WebuiConfig:
    """The web UI (webui.py). ``models`` come from ``webui.models``, else the reference's single
    ``webui.model``/``webui.config_path`` pair (dataset-relative, as the reference joins them)."""

    host: str
    port: int
    device: str
    language: str
    models: tuple[ServerModelConfig, ...] = ()

    @classmethod
    def from_section(cls, section: _Section, dataset_path: str) -> WebuiConfig:
        host = section.string("host", "127.0.0.1", allow_empty=False)
        port = section.integer("port", 7860, minimum=1, maximum=65535)
        device = section.device("device", "auto")
        language = section.choice("language", "ZH", SERVER_LANGUAGES)
        models = _sections_of(section, "models", lambda item: ServerModelConfig.from_section(item, device, language))
        names = [model.name for model in models if model.name]
        if len(set(names)) != len(names):
            raise section.error("models", "models with distinct names", names)
        single_model = section.string("model", "")
        if single_model:
            single_config = section.string("config_path", "config.json", allow_empty=False)
            models.append(
                ServerModelConfig(
                    model=_under_dataset(dataset_path, single_model),
                    config=_under_dataset(dataset_path, single_config),
                    device=device,
                    language=language,
                )
            )
        else:
            section.raw("config_path", None)
        # A public share link would need the network (a tunnel); this UI only serves the address it binds.
        if section.boolean("share", False):
            raise section.error("share", "false (public share links are not supported; bind a host instead)", True)
        section.boolean("debug", False)  # the reference's key; accepted, not used
        section.string("language_identification_library", "")  # the reference's key; accepted, not used
        section.reject_unknown()
        return cls(host=host, port=port, device=device, language=language, models=tuple(models))


def _sections_of(section: _Section, key: str, build: Callable[[_Section], T]) -> list[T]:
    return [
        build(_Section(item, f"{section.key(key)}[{i}]", section.source)) for i, item in enumerate(section.list_of(key))
    ]


@dataclass(frozen=True)
class Config:
    """All global settings; ``source`` is the yml file they came from."""

    source: str
    dataset_path: str
    resample: ResampleConfig
    preprocess_text: PreprocessTextConfig
    bert_gen: BertGenConfig
    train_ms: TrainMsConfig
    server: ServerConfig
    webui: WebuiConfig

    # The reference's attribute names, so reference-style call sites keep working.
    @property
    def resample_config(self) -> ResampleConfig:
        return self.resample

    @property
    def preprocess_text_config(self) -> PreprocessTextConfig:
        return self.preprocess_text

    @property
    def bert_gen_config(self) -> BertGenConfig:
        return self.bert_gen

    @property
    def train_ms_config(self) -> TrainMsConfig:
        return self.train_ms

    @property
    def server_config(self) -> ServerConfig:
        return self.server

    @property
    def webui_config(self) -> WebuiConfig:
        return self.webui


def config_path_from_env(path: str | os.PathLike[str] | None = None) -> str:
    """The yml to read: ``path`` if given, else ``$BV2_CONFIG``, else ``config.yml``."""
    if path is not None:
        return os.fspath(path)
    return os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the global settings (see the module docstring for how the file is chosen)."""
    source = config_path_from_env(path)
    data = _read_yaml(source)
    return config_from_dict(data, source)


def config_from_dict(data: Any, source: str = "<dict>") -> Config:
    """Validate an already parsed yml mapping; ``source`` names it in error messages."""
    root = _Section(data, "", source)
    dataset_path = root.string("dataset_path", "")
    config = Config(
        source=source,
        dataset_path=dataset_path,
        resample=ResampleConfig.from_section(root.section("resample"), dataset_path),
        preprocess_text=PreprocessTextConfig.from_section(root.section("preprocess_text"), dataset_path),
        bert_gen=BertGenConfig.from_section(root.section("bert_gen"), dataset_path),
        train_ms=TrainMsConfig.from_section(root.section("train_ms"), dataset_path),
        server=ServerConfig.from_section(root.section("server")),
        webui=WebuiConfig.from_section(root.section("webui"), dataset_path),
    )
    for name in IGNORED_REFERENCE_SECTIONS:
        if name in root.data:
            root.raw(name, None)
            logger.warning("%s: ignoring section '%s' (not used by this package)", source, name)
    root.reject_unknown()
    return config


def _read_yaml(source: str) -> Any:
    if not os.path.isfile(source):
        raise FileNotFoundError(
            f"config file not found: {source!r} (copy config.yml from the repository root, or point "
            f"{CONFIG_ENV_VAR} at your yml)"
        )
    with open(source, encoding="utf-8") as handle:
        try:
            return yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ValueError(f"{source}: invalid YAML{where}: {problem}") from exc


def resolve_device(device: str, local_rank: int | None = None) -> str:
    """The one device rule of every script: a configured device ("auto", "cpu", "cuda", "cuda:N", "mps") as a
    concrete torch device string.

    "auto" is CUDA when available, else the CPU. With ``local_rank`` (a torchrun process) "auto" and "cuda" mean
    that rank's GPU. Asking for a GPU that is not there is an error naming the setting, not a late CUDA crash.
    """
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise ValueError(f"device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if device in ("cpu", "mps"):
        return device
    import torch  # deferred: reading the settings must not require loading torch

    if not torch.cuda.is_available():
        if device == "auto":
            return "cpu"
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    if device in ("auto", "cuda"):
        return "cuda" if local_rank is None else f"cuda:{local_rank}"
    return device


# ==============================================================================================================
# The model config: Bert-VITS2's config.json (sections train / data / model, plus version)
#
# Every script reads it through `load_model_config` (or `as_model_config` for an already parsed mapping), so a
# misspelled key is an error naming the key, its section, the file and the nearest valid key, instead of being
# swallowed by `SynthesizerTrn(**kwargs)`. The sections are dataclasses that also behave as read-only-style
# mappings (`cfg.train.learning_rate`, `cfg.train["learning_rate"]`, `cfg.model.get(...)`, `**cfg.model`), so
# code written against the reference's HParams keeps working. It is the only config object: there is no
# utils.HParams / utils.get_hparams_from_file (tests and benchmarks build theirs with model_config_from_dict).

MODEL_CONFIG_VERSION = "2.3"
# data.unused_bert: what the two BERT slots of a training item that its language does not use hold. "randn" is
# the reference's fresh noise at every load; "zeros" makes items deterministic.
UNUSED_BERT_CHOICES = ("randn", "zeros")
_MODEL_CONFIG_REFERENCE = "configs/config.json"


def _nearest_hint(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else "valid: " + ", ".join(valid)


class _Settings(Mapping[str, Any]):
    """Attribute and mapping access to one settings dataclass (``s.key``, ``s["key"]``, ``s.get``, ``**s``).

    Assigning a name that is not a setting raises, naming the nearest setting: ``cfg.train.learnig_rate = 1``
    must not silently do nothing.
    """

    # Dataclass fields that are bookkeeping, not settings: no mapping key, not written by to_dict.
    _INTERNAL: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name not in cls._INTERNAL)  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        if key not in self.setting_names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.setting_names())

    def __len__(self) -> int:
        return len(self.setting_names())

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        names = self.setting_names()
        if name not in names and name not in self._INTERNAL:
            raise AttributeError(f"{type(self).__name__} has no setting '{name}' ({_nearest_hint(name, names)})")
        object.__setattr__(self, name, value)

    def setdefault(self, key: str, default: Any) -> Any:
        """Give an unset (None) setting ``default``; returns the value the setting has afterwards."""
        if self[key] is None:
            self[key] = default
        return self[key]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; optional settings that are unset are left out."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self._INTERNAL or (value is None and f.metadata.get("omit_none")):
                continue
            out[f.name] = _to_plain(value)
        return out


def _to_plain(value: Any) -> Any:
    """Nested dicts/lists of JSON values from settings objects, mappings, objects with ``to_dict`` or namespaces."""
    if isinstance(value, _Settings):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {key: _to_plain(item) for key, item in value.items()}
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return _to_plain(value.to_dict())
    if isinstance(value, (list, tuple)):
        return [_to_plain(item) for item in value]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return _to_plain(vars(value))
    return value


_OMIT_NONE = {"omit_none": True}


def _int_list(section: _Section, key: str, default: list[int] | None = None, minimum: int = 1) -> list[int]:
    value = section.raw(key, default)
    expected = f"a non-empty list of integers >= {minimum}"
    if not isinstance(value, list) or not value:
        raise section.error(key, expected, value)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
        raise section.error(key, expected, value)
    return list(value)


def _int_lists(section: _Section, key: str) -> list[list[int]]:
    value = section.raw(key, None)
    expected = "a non-empty list of non-empty lists of integers >= 1"
    if not isinstance(value, list) or not value:
        raise section.error(key, expected, value)
    for item in value:
        if not isinstance(item, list) or not item:
            raise section.error(key, expected, value)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in item):
            raise section.error(key, expected, value)
    return [list(item) for item in value]


def _required(section: _Section, key: str) -> None:
    if key not in section.data:
        raise ValueError(f"{section.source}: setting '{section.key(key)}' is missing")


def _number_in(
    section: _Section, key: str, default: float, low: float, high: float | None = None, *, open_low: bool = False
) -> float:
    """A number in [low, high] ((low, high] with ``open_low``); the JSON value is kept (45 stays 45)."""
    value = section.raw(key, default)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    below = is_number and (value <= low if open_low else value < low)
    if not is_number or below or (high is not None and value > high):
        bracket = "(" if open_low else "["
        where = f"in {bracket}{low}, {high}]" if high is not None else (f"> {low}" if open_low else f">= {low}")
        raise section.error(key, f"a number {where}", value)
    return value


@dataclass(eq=True)
class TrainConfig(_Settings):
    """The ``train`` section; defaults are the official v2.3 values (configs/config.json)."""

    log_interval: int = 200
    eval_interval: int = 1000
    seed: int = 42
    epochs: int = 1000
    learning_rate: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    eps: float = 1e-9
    batch_size: int = 16
    bf16_run: bool = False
    fp16_run: bool = False
    lr_decay: float = 0.99995
    segment_size: int = 16384
    init_lr_ratio: float = 1
    warmup_epochs: int = 0
    c_mel: float = 45
    c_kl: float = 1.0
    c_commit: float = 100
    # The reference skips loading optimizer states when the key is absent.
    skip_optimizer: bool = True
    freeze_ZH_bert: bool = False
    freeze_JP_bert: bool = False
    freeze_EN_bert: bool = False
    freeze_emo: bool = False
    # Not in the reference's configs (unset = the reference's behaviour, and left out of saved configs):
    # allow_tf32 false gives a strict-fp32 CUDA run (no TF32 in matmuls and convolutions); fused_adamw true uses
    # torch's fused AdamW kernel (same update within rounding, fewer kernel launches).
    allow_tf32: bool | None = field(default=None, metadata=_OMIT_NONE)
    fused_adamw: bool | None = field(default=None, metadata=_OMIT_NONE)

    @classmethod
    def from_section(cls, s: _Section) -> TrainConfig:
        d = cls()
        betas = s.raw("betas", d.betas)
        if (
            not isinstance(betas, list)
            or len(betas) != 2
            or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1 for b in betas)
        ):
            raise s.error("betas", "a list of two numbers in [0, 1)", betas)
        config = cls(
            log_interval=s.integer("log_interval", d.log_interval, minimum=1),
            eval_interval=s.integer("eval_interval", d.eval_interval, minimum=1),
            seed=s.integer("seed", d.seed),
            epochs=s.integer("epochs", d.epochs, minimum=1),
            learning_rate=_number_in(s, "learning_rate", d.learning_rate, 0.0, open_low=True),
            betas=list(betas),
            eps=_number_in(s, "eps", d.eps, 0.0, open_low=True),
            batch_size=s.integer("batch_size", d.batch_size, minimum=1),
            bf16_run=s.boolean("bf16_run", d.bf16_run),
            fp16_run=s.boolean("fp16_run", d.fp16_run),
            lr_decay=_number_in(s, "lr_decay", d.lr_decay, 0.0, 1.0, open_low=True),
            segment_size=s.integer("segment_size", d.segment_size, minimum=1),
            init_lr_ratio=_number_in(s, "init_lr_ratio", d.init_lr_ratio, 0.0, open_low=True),
            warmup_epochs=s.integer("warmup_epochs", d.warmup_epochs, minimum=0),
            c_mel=_number_in(s, "c_mel", d.c_mel, 0.0),
            c_kl=_number_in(s, "c_kl", d.c_kl, 0.0),
            c_commit=_number_in(s, "c_commit", d.c_commit, 0.0),
            skip_optimizer=s.boolean("skip_optimizer", d.skip_optimizer),
            freeze_ZH_bert=s.boolean("freeze_ZH_bert", False),
            freeze_JP_bert=s.boolean("freeze_JP_bert", False),
            freeze_EN_bert=s.boolean("freeze_EN_bert", False),
            freeze_emo=s.boolean("freeze_emo", False),
            allow_tf32=_optional_bool(s, "allow_tf32"),
            fused_adamw=_optional_bool(s, "fused_adamw"),
        )
        if config.bf16_run and config.fp16_run:
            raise ValueError(f"{s.source}: train.bf16_run and train.fp16_run are both true; set at most one of them")
        s.reject_unknown(_MODEL_CONFIG_REFERENCE)
        return config


@dataclass(eq=True)
class DataConfig(_Settings):
    """The ``data`` section: filelists, audio and spectrogram settings, the speaker table."""

    sampling_rate: int
    filter_length: int
    hop_length: int
    win_length: int
    training_files: str = ""
    validation_files: str = ""
    max_wav_value: float = 32768.0
    n_mel_channels: int = 80
    mel_fmin: float = 0.0
    mel_fmax: float | None = None  # None: half the sampling rate
    add_blank: bool = True
    # 0 means no speaker table (the generator's reference encoder); default: the size of spk2id.
    n_speakers: int = 0
    cleaned_text: bool = True
    spk2id: dict[str, int] = field(default_factory=dict)
    min_text_len: int = 1
    max_text_len: int = 384
    unused_bert: str = "randn"
    # The reference's training script copies model.use_mel_posterior_encoder here for the data loader.
    use_mel_posterior_encoder: bool = False
    # Set from config.yml (train_ms.spec_cache / all_in_mem) at run time; unset in a config file.
    spec_cache: bool | None = field(default=None, metadata=_OMIT_NONE)
    all_in_mem: bool | None = field(default=None, metadata=_OMIT_NONE)

    @classmethod
    def from_section(cls, s: _Section) -> DataConfig:
        for key in ("sampling_rate", "filter_length", "hop_length", "win_length"):
            _required(s, key)
        spk2id = s.raw("spk2id", {}) or {}
        if not isinstance(spk2id, Mapping) or any(
            not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or v < 0 for k, v in spk2id.items()
        ):
            raise s.error("spk2id", "a mapping of speaker names to ids >= 0", spk2id)
        mel_fmax = s.raw("mel_fmax", None)
        mel_fmin = _number_in(s, "mel_fmin", 0.0, 0.0)
        if mel_fmax is not None and (
            isinstance(mel_fmax, bool) or not isinstance(mel_fmax, (int, float)) or mel_fmax <= mel_fmin
        ):
            raise s.error("mel_fmax", f"null or a number > data.mel_fmin ({mel_fmin})", mel_fmax)
        config = cls(
            sampling_rate=s.integer("sampling_rate", 0, minimum=1),
            filter_length=s.integer("filter_length", 0, minimum=1),
            hop_length=s.integer("hop_length", 0, minimum=1),
            win_length=s.integer("win_length", 0, minimum=1),
            training_files=s.string("training_files", ""),
            validation_files=s.string("validation_files", ""),
            max_wav_value=_number_in(s, "max_wav_value", 32768.0, 0.0, open_low=True),
            n_mel_channels=s.integer("n_mel_channels", 80, minimum=1),
            mel_fmin=mel_fmin,
            mel_fmax=mel_fmax,
            add_blank=s.boolean("add_blank", True),
            n_speakers=s.integer("n_speakers", len(spk2id), minimum=0),
            cleaned_text=s.boolean("cleaned_text", True),
            spk2id={str(k): int(v) for k, v in spk2id.items()},
            min_text_len=s.integer("min_text_len", 1, minimum=0),
            max_text_len=s.integer("max_text_len", 384, minimum=1),
            unused_bert=s.choice("unused_bert", "randn", UNUSED_BERT_CHOICES),
            use_mel_posterior_encoder=s.boolean("use_mel_posterior_encoder", False),
            spec_cache=_optional_bool(s, "spec_cache"),
            all_in_mem=_optional_bool(s, "all_in_mem"),
        )
        if config.win_length > config.filter_length:
            raise s.error("win_length", f"at most data.filter_length ({config.filter_length})", config.win_length)
        if config.max_text_len < config.min_text_len:
            raise s.error("max_text_len", f"at least data.min_text_len ({config.min_text_len})", config.max_text_len)
        if config.n_speakers > 0:
            outside = sorted(name for name, sid in config.spk2id.items() if sid >= config.n_speakers)
            if outside:
                raise ValueError(
                    f"{s.source}: setting 'data.spk2id' gives {', '.join(map(repr, outside[:3]))} an id >= "
                    f"data.n_speakers ({config.n_speakers})"
                )
        s.reject_unknown(_MODEL_CONFIG_REFERENCE)
        return config


def _optional_bool(section: _Section, key: str) -> bool | None:
    value = section.raw(key, None)
    if value is not None and not isinstance(value, bool):
        raise section.error(key, "true, false or null", value)
    return value


@dataclass(eq=True)
class SlmConfig(_Settings):
    """``model.slm``: the WavLM of the training losses and the WavLM discriminator's shape."""

    model: str
    sr: int = 16000
    hidden: int = 768
    nlayers: int = 13
    initial_channel: int = 64

    @classmethod
    def from_section(cls, s: _Section) -> SlmConfig:
        config = cls(
            model=s.string("model", "", allow_empty=False),
            sr=s.integer("sr", 16000, minimum=1),
            hidden=s.integer("hidden", 768, minimum=1),
            nlayers=s.integer("nlayers", 13, minimum=1),
            initial_channel=s.integer("initial_channel", 64, minimum=1),
        )
        s.reject_unknown(_MODEL_CONFIG_REFERENCE)
        return config


@dataclass(eq=True)
class NetConfig(_Settings):
    """The ``model`` section: the generator's and discriminators' shapes (SynthesizerTrn's keyword names)."""

    inter_channels: int
    hidden_channels: int
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    p_dropout: float
    resblock: str
    resblock_kernel_sizes: list[int]
    resblock_dilation_sizes: list[list[int]]
    upsample_rates: list[int]
    upsample_initial_channel: int
    upsample_kernel_sizes: list[int]
    use_spk_conditioned_encoder: bool = True
    use_noise_scaled_mas: bool = False
    use_mel_posterior_encoder: bool = False
    use_duration_discriminator: bool = False
    n_layers_q: int = 3
    use_spectral_norm: bool = False
    gin_channels: int = 256
    # SynthesizerTrn keywords the official config leaves at their defaults.
    use_sdp: bool = True
    n_flow_layer: int = 4
    n_layers_trans_flow: int = 4
    flow_share_parameter: bool = False
    use_transformer_flow: bool = True
    # Required for training (the WavLM losses); an inference-only config may leave it out.
    slm: SlmConfig | None = field(default=None, metadata=_OMIT_NONE)

    @classmethod
    def from_section(cls, s: _Section) -> NetConfig:
        for key in (f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING):
            _required(s, key)
        slm = s.raw("slm", None)
        config = cls(
            inter_channels=s.integer("inter_channels", 0, minimum=1),
            hidden_channels=s.integer("hidden_channels", 0, minimum=1),
            filter_channels=s.integer("filter_channels", 0, minimum=1),
            n_heads=s.integer("n_heads", 0, minimum=1),
            n_layers=s.integer("n_layers", 0, minimum=1),
            kernel_size=s.integer("kernel_size", 0, minimum=1),
            p_dropout=_number_in(s, "p_dropout", 0.1, 0.0, 1.0),
            # A string as in the reference, which compares with "1": an integer 1 would pick ResBlock2 there.
            resblock=s.choice("resblock", "1", ("1", "2")),
            resblock_kernel_sizes=_int_list(s, "resblock_kernel_sizes"),
            resblock_dilation_sizes=_int_lists(s, "resblock_dilation_sizes"),
            upsample_rates=_int_list(s, "upsample_rates"),
            upsample_initial_channel=s.integer("upsample_initial_channel", 0, minimum=1),
            upsample_kernel_sizes=_int_list(s, "upsample_kernel_sizes"),
            use_spk_conditioned_encoder=s.boolean("use_spk_conditioned_encoder", True),
            use_noise_scaled_mas=s.boolean("use_noise_scaled_mas", False),
            use_mel_posterior_encoder=s.boolean("use_mel_posterior_encoder", False),
            use_duration_discriminator=s.boolean("use_duration_discriminator", False),
            n_layers_q=s.integer("n_layers_q", 3, minimum=1),
            use_spectral_norm=s.boolean("use_spectral_norm", False),
            gin_channels=s.integer("gin_channels", 256, minimum=0),
            use_sdp=s.boolean("use_sdp", True),
            n_flow_layer=s.integer("n_flow_layer", 4, minimum=1),
            n_layers_trans_flow=s.integer("n_layers_trans_flow", 4, minimum=1),
            flow_share_parameter=s.boolean("flow_share_parameter", False),
            use_transformer_flow=s.boolean("use_transformer_flow", True),
            slm=SlmConfig.from_section(s.section("slm")) if slm is not None else None,
        )
        if config.hidden_channels % config.n_heads:
            raise s.error("n_heads", f"a divisor of model.hidden_channels ({config.hidden_channels})", config.n_heads)
        if len(config.resblock_dilation_sizes) != len(config.resblock_kernel_sizes):
            raise s.error(
                "resblock_dilation_sizes",
                f"one list per model.resblock_kernel_sizes entry ({len(config.resblock_kernel_sizes)})",
                config.resblock_dilation_sizes,
            )
        if len(config.upsample_kernel_sizes) != len(config.upsample_rates):
            raise s.error(
                "upsample_kernel_sizes",
                f"as long as model.upsample_rates ({len(config.upsample_rates)} entries)",
                config.upsample_kernel_sizes,
            )
        s.reject_unknown(_MODEL_CONFIG_REFERENCE)
        return config


@dataclass(eq=True)
class ModelConfig(_Settings):
    """A whole model config file, validated. ``source`` names the file in messages; it is not a setting."""

    train: TrainConfig
    data: DataConfig
    model: NetConfig
    version: str = MODEL_CONFIG_VERSION
    # The run's model folder: set by train_ms at run time (and found in configs saved beside checkpoints).
    model_dir: str | None = field(default=None, metadata=_OMIT_NONE)
    source: str = field(default="<dict>", compare=False)

    _INTERNAL: ClassVar[tuple[str, ...]] = ("source",)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the resolved config as JSON, atomically (a crash leaves the old file or the new one)."""
        atomic_io.atomic_write_text(path, self.to_json())


def model_config_from_dict(data: Any, source: str = "<dict>") -> ModelConfig:
    """Validate an already parsed model config; ``source`` names it in error messages."""
    root = _Section(data, "", source)
    for key in ("train", "data", "model"):
        _required(root, key)
    version = root.raw("version", MODEL_CONFIG_VERSION)
    if isinstance(version, (int, float)) and not isinstance(version, bool):
        version = str(version)  # "version": 2.3 written as a number
    if not isinstance(version, str):
        raise root.error("version", "a string such as '2.3'", version)
    model_dir = root.raw("model_dir", None)
    if model_dir is not None and not isinstance(model_dir, str):
        raise root.error("model_dir", "a string", model_dir)
    config = ModelConfig(
        train=TrainConfig.from_section(root.section("train")),
        data=DataConfig.from_section(root.section("data")),
        model=NetConfig.from_section(root.section("model")),
        version=version,
        model_dir=model_dir,
        source=source,
    )
    root.reject_unknown(_MODEL_CONFIG_REFERENCE)
    _check_consistency(config)
    # As the reference's training script does: the data loader makes mel spectrograms for a mel posterior encoder.
    config.data.use_mel_posterior_encoder = (
        config.data.use_mel_posterior_encoder or config.model.use_mel_posterior_encoder
    )
    return config


def _check_consistency(config: ModelConfig) -> None:
    """Checks across sections; each names both settings."""
    train, data, model, source = config.train, config.data, config.model, config.source
    if train.segment_size % data.hop_length:
        raise ValueError(
            f"{source}: setting train.segment_size ({train.segment_size}) must be a multiple of "
            f"data.hop_length ({data.hop_length})"
        )
    upsampling = 1
    for rate in model.upsample_rates:
        upsampling *= rate
    if upsampling != data.hop_length:
        raise ValueError(
            f"{source}: setting model.upsample_rates {model.upsample_rates} multiplies to {upsampling}, but the "
            f"decoder must upsample by data.hop_length ({data.hop_length})"
        )


def load_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Read and validate a model config JSON file (ours, the reference's, or one saved beside checkpoints)."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"model config not found: {source} (the config.json the model is trained with)")
    with open(source, encoding="utf-8") as handle:
        text = handle.read()
    return model_config_from_json(text, source)


def model_config_from_json(text: str, source: str = "<json>") -> ModelConfig:
    """Parse and validate model config JSON text (e.g. the config stored in an export file's metadata)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    return model_config_from_dict(data, source)


def as_model_config(config: Any, source: str = "<model config>") -> ModelConfig:
    """A ModelConfig from a ModelConfig (as is) or a parsed mapping such as a checkpoint's stored config (validated)."""
    if isinstance(config, ModelConfig):
        return config
    return model_config_from_dict(_to_plain(config), getattr(config, "source", None) or source)


def as_data_config(config: Any, source: str = "<data settings>") -> DataConfig:
    """The ``data`` section from a ModelConfig, a DataConfig, or a whole config / data section as a mapping."""
    if isinstance(config, DataConfig):
        return config
    if isinstance(config, ModelConfig):
        return config.data
    plain = _to_plain(config)
    if isinstance(plain, Mapping) and isinstance(plain.get("data"), Mapping):
        plain = plain["data"]
    return DataConfig.from_section(_Section(plain, "data", source))


def check_trainable(config: ModelConfig) -> None:
    """Raise ValueError naming the setting to change when a (valid) model config cannot train."""
    source = config.source
    if config.model.slm is None:
        raise ValueError(
            f"{source}: setting 'model.slm' is missing (the WavLM settings: model, sr, hidden, nlayers, "
            "initial_channel)"
        )
    if config.model.use_spk_conditioned_encoder and config.data.n_speakers == 0:
        raise ValueError(f"{source}: 'data.n_speakers' must be > 0 when 'model.use_spk_conditioned_encoder' is true")
    if not config.data.training_files:
        raise ValueError(f"{source}: setting 'data.training_files' is empty (run preprocess_text.py)")


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and key != "spk2id":  # the speaker table is one setting
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def changed_settings(old: ModelConfig | Mapping[str, Any], new: ModelConfig) -> list[tuple[str, Any, Any]]:
    """``(dotted setting, old value, new value)`` for every setting that differs, in file order.

    ``old`` may be the plain dict a checkpoint stored; it is validated first, so defaults compare as defaults
    (an old config without ``data.unused_bert`` equals one that spells out "randn"). ``model_dir`` is left out:
    it says where a run lives, not how it trains.
    """
    before = _flatten(as_model_config(old, "the stored config").to_dict())
    after = _flatten(new.to_dict())
    names = list(after) + [name for name in before if name not in after]
    return [
        (name, before.get(name), after.get(name))
        for name in names
        if name != "model_dir" and before.get(name) != after.get(name)
    ]
