"""The voices a server or web UI offers: which model files to load, loaded in order, looked up by index or name.

Both `server.py` and `webui.py` take their models the same way: `-m [NAME=]PATH` (repeatable) with one `-c`
per model, one for all or none (export files carry their config), else the `models` list of config.yml's
section. Each model gets a unique name, a device, a default language and per-speaker synthesis presets.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import infer
from synthesis_params import SynthesisParams, brief
from synthesis_plan import REQUEST_LANGUAGES

logger = logging.getLogger(__name__)

# `NAME=PATH` in `-m`: a plain name before the first "=", nothing path-like.
_NAMED_MODEL = re.compile(r"^([A-Za-z_][\w.-]*)=(.+)$")
# What a config.yml speaker preset sets (the reference's four); the rest keep their defaults.
PRESET_FIELDS = ("sdp_ratio", "noise_scale", "noise_scale_w", "length_scale")


@dataclass(frozen=True)
class ModelSpec:
    """One model to offer: where it is and how requests use it."""

    name: str
    model: str
    config: str | None
    device: str
    language: str
    # Per speaker: the synthesis parameters a request starts from (the defaults for speakers not listed).
    presets: Mapping[str, SynthesisParams] = field(default_factory=dict)


@dataclass
class LoadedModel:
    index: int
    spec: ModelSpec
    synthesizer: infer.Synthesizer
    # One synthesis per model at a time: the generator and the BERT models are not made for concurrent calls.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def languages(self) -> list[str]:
        """What the synthesizer takes as `language` ("ZH", "JP", "EN", "mix", "auto")."""
        return list(self.synthesizer.languages)


class ModelRegistry:
    """The loaded models, in order; looked up by index or name."""

    def __init__(self, models: Sequence[LoadedModel]) -> None:
        if not models:
            raise ValueError("no model to serve")
        self.models = list(models)
        self._by_name = {model.name: model for model in self.models}

    def __len__(self) -> int:
        return len(self.models)

    @property
    def names(self) -> list[str]:
        return [model.name for model in self.models]

    def get(self, key: str | int | None = None) -> LoadedModel:
        """The model named `key`, or with index `key`; the first when `key` is None. Raises KeyError."""
        if key is None or key == "":
            return self.models[0]
        if isinstance(key, str) and key in self._by_name:
            return self._by_name[key]
        text = str(key).strip()
        if text.isdigit() and int(text) < len(self.models):
            return self.models[int(text)]
        known = ", ".join(f"{model.index} ({model.name})" for model in self.models)
        raise KeyError(f"unknown model {brief(key)}; known models: {known}")


def normalize_language(language: str) -> str:
    """The canonical spelling of a language code ("zh" -> "ZH", "MIX" -> "mix"); unknown codes stay as given."""
    for code in REQUEST_LANGUAGES:
        if str(language).lower() == code.lower():
            return code
    return str(language)


def default_model_name(model_path: str) -> str:
    return Path(model_path).stem or "model"


def unique_names(specs: Sequence[ModelSpec]) -> list[ModelSpec]:
    """Specs whose names are unique: a derived duplicate gets `-<index>`; two equal given names are an error."""
    seen: set[str] = set()
    result = []
    for index, spec in enumerate(specs):
        name = spec.name or default_model_name(spec.model)
        if name in seen:
            if spec.name:
                raise ValueError(f"two models are named {name!r}; model names must be unique")
            name = f"{name}-{index}"
        seen.add(name)
        result.append(replace(spec, name=name))
    return result


def specs_from_section(section: Any) -> list[ModelSpec]:
    """The models of a config.yml section with a `models` list (`server` or `webui`)."""
    return unique_names(
        [
            ModelSpec(
                name=entry.name,
                model=entry.model,
                config=entry.config or None,
                device=entry.device,
                language=normalize_language(entry.language),
                presets={preset.speaker: preset_params(preset) for preset in entry.speakers},
            )
            for entry in section.models
        ]
    )


def preset_params(preset: Any) -> SynthesisParams:
    """The synthesis parameters of one config.yml speaker preset."""
    return SynthesisParams.checked({key: getattr(preset, key) for key in PRESET_FIELDS})


def command_line_specs(models: Sequence[str], configs: Sequence[str], device: str, language: str) -> list[ModelSpec]:
    """The models of repeated `-m [NAME=]PATH` with `-c` given once per model, once for all, or not at all."""
    if len(configs) > 1 and len(configs) != len(models):
        raise ValueError(
            f"{len(models)} --model but {len(configs)} --config: give one --config per --model, or one for all"
        )
    specs = []
    for index, item in enumerate(models):
        named = _NAMED_MODEL.match(item)
        name, path = (named.group(1), named.group(2)) if named and not Path(item).exists() else ("", item)
        config_path = configs[index] if len(configs) > 1 else (configs[0] if configs else None)
        specs.append(ModelSpec(name, path, config_path, device, normalize_language(language)))
    return unique_names(specs)


def with_overrides(specs: Sequence[ModelSpec], device: str | None, language: str | None) -> list[ModelSpec]:
    """`specs` with the command line's `--device` / `--language` (when given) for every model."""
    return [
        replace(
            spec,
            device=device or spec.device,
            language=normalize_language(language) if language else spec.language,
        )
        for spec in specs
    ]


def load_models(specs: Sequence[ModelSpec], bert_dirs: Mapping[str, str | Path] | None = None) -> ModelRegistry:
    """Load every model of `specs` (in order) and check its default language and presets against it."""
    import config as global_config

    models = []
    for index, spec in enumerate(unique_names(specs)):
        synthesizer = infer.load_synthesizer(
            spec.model, spec.config, device=global_config.resolve_device(spec.device), bert_dirs=bert_dirs
        )
        loaded = LoadedModel(index, spec, synthesizer)
        if spec.language not in loaded.languages:
            raise ValueError(
                f"model {spec.name!r}: default language {spec.language!r} is not one of {', '.join(loaded.languages)}"
            )
        unknown = [speaker for speaker in spec.presets if speaker not in synthesizer.speaker_ids]
        if unknown:
            raise ValueError(
                f"model {spec.name!r}: presets for unknown speaker(s) {', '.join(unknown)}; "
                f"known speakers: {', '.join(synthesizer.speakers)}"
            )
        logger.info(
            "model %d %r: %s (%d speakers, %d Hz, %s)",
            index,
            spec.name,
            spec.model,
            len(synthesizer.speakers),
            synthesizer.sampling_rate,
            synthesizer.device,
        )
        models.append(loaded)
    return ModelRegistry(models)
