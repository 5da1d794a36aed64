"""Global pipeline settings from ``config.yml`` as typed, validated dataclasses.

``load_config()`` reads the file named by its argument, else by the ``BV2_CONFIG`` environment variable, else
``config.yml`` in the working directory. Paths of the resample, preprocess_text, bert_gen and train_ms
sections are joined onto ``dataset_path`` the way the reference does (an absolute path stays as it is); server
paths are left relative to the working directory. Every invalid value raises ``ValueError`` naming the setting
and the file, so the message says what to change and where.

Nothing happens at import: no argv parsing, no file access, no environment writes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

logger = logging.getLogger(__name__)

CONFIG_ENV_VAR = "BV2_CONFIG"
DEFAULT_CONFIG_PATH = "config.yml"

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
SERVER_LANGUAGES = ("ZH", "JP", "EN", "mix", "auto")
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

    def reject_unknown(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self._read)
        if unknown:
            names = ", ".join(repr(self.key(k)) for k in unknown)
            raise ValueError(f"{self.source}: unknown setting(s) {names}; check the spelling against config.yml")


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


def resolve_device(device: str) -> str:
    """Turn a configured device ("auto", "cuda", ...) into a concrete torch device string."""
    if device != "auto":
        return device
    import torch  # deferred: reading the settings must not require loading torch

    return "cuda" if torch.cuda.is_available() else "cpu"
