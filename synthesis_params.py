"""The synthesis parameters: one declaration each, with its default, range and meaning, for every surface.

`infer.py` (command line and `Synthesizer`), `server.py`, `webui.py` and the per-speaker presets of config.yml
all take these fields; a value outside its range is refused with the same one-line message everywhere.

Defaults are the reference Bert-VITS2 2.3 web UI's (`webui.py` sliders and its sentence/paragraph pauses): the
reference's `infer.py` has none, its `server_fastapi.py` uses another set (0.2 / 0.2 / 0.9 / 1) for its
`/voice` query only, and the per-speaker entries in its `config.yml` are examples its server never applied.
The ranges hold every value the reference web UI's sliders offer.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SEED_LIMIT = 2**63  # torch.manual_seed takes a signed 64-bit value


class SynthesisParams(BaseModel):
    """How an utterance is spoken: durations, noise, speed, style, sentence splitting and pauses, seed."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    sdp_ratio: float = Field(
        0.5, ge=0.0, le=1.0, description="share of the stochastic duration predictor in the durations (0: none)"
    )
    noise_scale: float = Field(0.6, ge=0.0, le=2.0, description="noise of the prior: variation of the voice")
    noise_scale_w: float = Field(0.9, ge=0.0, le=2.0, description="noise of the stochastic durations")
    length_scale: float = Field(1.0, ge=0.1, le=3.0, description="duration factor: above 1 slower, below 1 faster")
    style_text: str | None = Field(None, description="text whose mean BERT feature colours the speech")
    style_weight: float = Field(0.7, ge=0.0, le=1.0, description="weight of the style text (0: none, 1: only it)")
    split: bool = Field(True, description="speak long text sentence by sentence, with pauses")
    sentence_pause: float = Field(0.2, ge=0.0, le=10.0, description="seconds of silence between sentences")
    paragraph_pause: float = Field(1.0, ge=0.0, le=10.0, description="seconds of silence between paragraphs (lines)")
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="seed of the noise, for a reproducible result")

    @field_validator("style_text")
    @classmethod
    def _blank_style_is_none(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return value.strip() or None  # an empty style text means none

    @classmethod
    def checked(
        cls, values: Mapping[str, Any], base: SynthesisParams | None = None, spelled: Mapping[str, str] | None = None
    ) -> SynthesisParams:
        """`base` (default: the defaults) with `values` over it, validated.

        A bad or unknown value raises ValueError, one line per problem naming the parameter as the caller wrote
        it (`spelled` maps a field to that spelling, e.g. the server's `noisew`).
        """
        merged = {**(dict(base) if base is not None else {}), **values}
        try:
            return cls.model_validate(merged)
        except ValidationError as error:
            raise ValueError(describe_errors(error, spelled)) from error


DEFAULT_PARAMS = SynthesisParams()
FIELDS = tuple(SynthesisParams.model_fields)


def value_range(name: str) -> tuple[float, float]:
    """(lowest, highest) value of a numeric field."""
    low, high = -math.inf, math.inf
    for rule in SynthesisParams.model_fields[name].metadata:  # annotated_types' Ge / Gt / Le / Lt
        low = float(getattr(rule, "ge", getattr(rule, "gt", low)))
        high = float(getattr(rule, "le", high))
        if hasattr(rule, "lt"):
            high = float(rule.lt - 1 if isinstance(rule.lt, int) else rule.lt)
    return low, high


def _expected(name: str) -> str:
    if name == "style_text":
        return "text"
    if name == "split":
        return "true or false"
    if name == "seed":
        return "a whole number within [0, 2**63)"
    low, high = value_range(name)
    return f"a number within [{low:g}, {high:g}]"


def brief(value: Any, limit: int = 40) -> str:
    """`repr(value)`, cut to about `limit` characters: what an error message may echo of a client's input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_errors(error: ValidationError, spelled: Mapping[str, str] | None = None) -> str:
    """One line per problem of a SynthesisParams validation, naming the parameter as the caller spelled it."""
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        name = (spelled or {}).get(field, field)
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown parameter {name!r}")
        elif field in SynthesisParams.model_fields:
            problems.append(f"{name} must be {_expected(field)}, got {brief(item['input'])}")
        else:
            problems.append(f"{name}: {item['msg']}")
    return "; ".join(problems)


# --------------------------------------------------------------------------------------------------------------
# Command-line options (infer.py)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per parameter, with its default and range in the help."""
    group = parser.add_argument_group("synthesis parameters")
    for name, field in SynthesisParams.model_fields.items():
        if name == "split":
            group.add_argument("--no-split", dest="split", action="store_false", help="do not " + field.description)
            continue
        flags = ["--" + name.replace("_", "-")] + (["--pause"] if name == "sentence_pause" else [])
        kind = str if name == "style_text" else int if name == "seed" else float
        about = field.description if name == "style_text" else f"{field.description}; {_expected(name)}"
        default = "" if field.default is None else f" (default {field.default})"
        group.add_argument(*flags, dest=name, type=kind, default=field.default, help=about + default)


def from_arguments(args: argparse.Namespace) -> SynthesisParams:
    """The parameters of parsed `add_arguments` options; a bad value raises ValueError naming its option."""
    spelled = {name: "--" + name.replace("_", "-") for name in FIELDS}
    spelled["split"] = "--no-split"
    return SynthesisParams.checked({name: getattr(args, name) for name in FIELDS}, spelled=spelled)
