"""Every setting, validated: the global pipeline settings (``config.yml``, ``load_config``) and the model config
(Bert-VITS2's ``config.json``, ``load_model_config``) as pydantic models, plus the one device rule of every script
(``resolve_device``). Each setting is declared once: type, default, range and a one-line doc. How sections check,
read as HParams and word their errors is settings_base.py's. The yml is ``load_config``'s argument, else
``$BV2_CONFIG``, else ``./config.yml``; the paths of its resample, preprocess_text, bert_gen and train_ms sections
(and the web UI's single model) are joined onto ``dataset_path`` as the reference joins them. Nothing happens at
import.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
from pydantic import ConfigDict, Field, model_validator

import atomic_io
import settings_base
from metrics import METRICS
from settings_base import Expect, NonEmpty, Number, Settings, Text, check_distinct, invalid, must, unset, when_null
from synthesis_params import SynthesisParams
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
MODEL_CONFIG_VERSION = "2.3"
MODEL_REFERENCE = "configs/config.json"  # what messages say to check a model config's spellings against
# data.unused_bert: what the two BERT slots of a training item that its language does not use hold. "randn" is
# the reference's fresh noise at every load; "zeros" makes items deterministic.
UNUSED_BERT_CHOICES = ("randn", "zeros")


def _under_dataset(path: str, info: pydantic.ValidationInfo) -> str:
    """As the reference joins dataset-relative paths: os.path.join, so an absolute path wins; empty stays empty."""
    dataset_path = (info.context or {}).get("dataset_path")
    return os.path.join(dataset_path if isinstance(dataset_path, str) else "", path) if path else path


InDataset = Annotated[str, Field(min_length=1), pydantic.AfterValidator(_under_dataset)]
InDatasetOrEmpty = Annotated[Text, pydantic.AfterValidator(_under_dataset)]
Device = Annotated[str, Field(pattern=DEVICE_PATTERN.pattern), Expect("'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")]
Language = Literal[SERVER_LANGUAGES]
# train.freeze: generator parts that can be kept fixed while fine-tuning (models.freezable_parts maps them).
FREEZE_PARTS = (
    "text_encoder",
    "duration_predictors",
    "flow",
    "decoder",
    "posterior_encoder",
    "speaker_embedding",
    "bert_projections",
)
# The validation metrics that can pick the best checkpoints (metrics.py knows which way each is better).
BEST_METRICS = tuple(METRICS)
Sizes = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1), Expect("a non-empty list of integers >= 1")]
SizeLists = Annotated[list[Sizes], Field(min_length=1), Expect("a non-empty list of non-empty lists of integers >= 1")]
Beta = Annotated[Number, Field(ge=0, lt=1)]
Betas = Annotated[list[Beta], Field(min_length=2, max_length=2), Expect("a list of two numbers in [0, 1)")]
# "version": 2.3 written as a number reads as the string "2.3".
_as_text = pydantic.BeforeValidator(lambda v: str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
Version = Annotated[str, _as_text, Expect("a string such as '2.3'")]
SpeakerIds = Annotated[
    dict[str, Annotated[int, Field(ge=0)]], when_null({}), Expect("a mapping of speaker names to ids >= 0")
]


class _YmlSection(Settings):
    """A section of config.yml: read-only once loaded; defaults are validated too (so dataset paths get joined)."""

    model_config = ConfigDict(frozen=True, validate_default=True)


# config.yml ===================================================================================================


class ResampleConfig(_YmlSection):
    sampling_rate: int = Field(44100, ge=1, description="target sample rate (Hz); equals data.sampling_rate")
    in_dir: InDataset = Field("audios/raw", description="folder of the raw .wav files")
    out_dir: InDataset = Field("audios/wavs", description="folder the resampled mono .wav files go to")


class PreprocessTextConfig(_YmlSection):
    transcription_path: InDataset = Field("filelists/transcription.list", description="{wav}|{speaker}|{lang}|{text}")
    cleaned_path: InDatasetOrEmpty = Field("", description="the cleaned list; empty: <transcription_path>.cleaned")
    train_path: InDataset = Field("filelists/train.list", description="training list written by the split")
    val_path: InDataset = Field("filelists/val.list", description="validation list written by the split")
    config_path: InDataset = Field("config.json", description="model config whose speaker table and lists are set")
    val_per_lang: int = Field(4, ge=0, description="validation utterances per speaker")
    max_val_total: int = Field(12, ge=0, description="upper bound on the validation set")
    clean: bool = Field(True, description="run the text cleaner; false re-uses the cleaned list")

    @pydantic.field_validator("cleaned_path")
    @classmethod
    def _cleaned_beside_transcription(cls, path: str, info: pydantic.ValidationInfo) -> str:
        return path or info.data.get("transcription_path", "") + ".cleaned"  # as the reference's preprocessing


class BertGenConfig(_YmlSection):
    config_path: InDataset = Field("config.json", description="model config naming the lists")
    num_processes: int = Field(2, ge=1, description="worker processes")
    device: Device = Field("auto", description="device of the BERT models")
    use_multi_device: bool = Field(False, description="spread the workers over every visible GPU")


class TrainEnvConfig(_YmlSection):
    """torch.distributed rendezvous defaults for a run started without torchrun (variables already set win)."""

    MASTER_ADDR: NonEmpty = Field("localhost", description="rendezvous host")
    MASTER_PORT: int = Field(10086, ge=1, le=65535, description="rendezvous port")
    WORLD_SIZE: int = Field(1, ge=1, description="processes in the run")
    LOCAL_RANK: int = Field(0, ge=0, description="this process's GPU on its machine")
    RANK: int = Field(0, ge=0, description="this process's rank")
    extra: dict[str, str] = Field({}, description="any further variables, as strings")

    @model_validator(mode="before")
    @classmethod
    def _collect_extra(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        extra = {name: value for name, value in data.items() if name not in cls.model_fields or name == "extra"}
        for name, value in extra.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(name)):
                raise invalid(str(name), "is not a valid variable name")
            if isinstance(value, (dict, list, type(None))):
                raise must(name, "a string or a number", value)
        as_text = {name: str(value).lower() if isinstance(value, bool) else str(value) for name, value in extra.items()}
        return {**{name: value for name, value in data.items() if name not in extra}, "extra": as_text}

    @model_validator(mode="after")
    def _rank_in_world(self) -> TrainEnvConfig:
        if self.RANK >= self.WORLD_SIZE:
            raise must("RANK", f"smaller than WORLD_SIZE ({self.WORLD_SIZE})", self.RANK)
        return self

    def as_environ(self) -> dict[str, str]:
        """All variables as strings, ready for ``os.environ``."""
        return {**{name: str(self[name]) for name in self if name != "extra"}, **self.extra}


class BaseModelConfig(_YmlSection):
    use_base_model: bool = Field(False, description="start from the base checkpoints in model_dir")
    model_dir: InDatasetOrEmpty = Field("base_model", description="local folder with G_0.pth, D_0.pth (DUR_, WD_)")

    @model_validator(mode="before")
    @classmethod
    def _local_only(cls, data: Any, info: pydantic.ValidationInfo) -> Any:
        """Nothing is downloaded: the reference's hub keys are refused for a base model in use, else ignored."""
        if not isinstance(data, Mapping):
            return data
        in_use, hub = data.get("use_base_model") is True, [key for key in ("repo_id", "model_image") if key in data]
        if in_use and not data.get("model_dir", cls.model_fields["model_dir"].default):
            raise must("model_dir", "a non-empty string", data["model_dir"])
        for key in hub:
            if in_use:
                raise invalid(
                    key,
                    "is not supported: nothing is downloaded. Put the base checkpoints (G_0.pth, "
                    "D_0.pth, ...) in a local folder and set 'train_ms.base.model_dir' to it",
                )
            source = (info.context or {}).get("source")
            logger.warning("%s: ignoring 'train_ms.base.%s' (base models are read from model_dir)", source, key)
        return {key: value for key, value in data.items() if key not in hub}


class TrainMsConfig(_YmlSection):
    env: TrainEnvConfig = Field(default_factory=dict, description="torch.distributed variables")
    base: BaseModelConfig = Field(default_factory=dict, description="the base model to start from")
    model: InDataset = Field("models", description="folder of checkpoints, train.log and TensorBoard events")
    config_path: InDataset = Field("config.json", description="the model config")
    num_workers: int = Field(2, ge=0, description="DataLoader workers")
    spec_cache: bool = Field(True, description="cache linear spectrograms as .spec.pt beside the audio")
    keep_ckpts: int = Field(8, ge=0, description="checkpoints kept per net prefix; 0 keeps all")
    eval_metrics: bool = Field(True, description="voice-quality metrics (metrics.py) at every eval_interval")
    eval_whisper: Text = Field(
        "", description="local Whisper folder for val/cer_zh and val/cer_jp (empty: none; nothing downloads)"
    )
    keep_best: int = Field(3, ge=0, description="best checkpoints (by best_metric) keep_ckpts never deletes; 0: none")
    best_metric: Literal[BEST_METRICS] = Field(
        "val/dnsmos_ovrl", description="validation metric that picks the best checkpoints (metrics.py)"
    )
    all_in_mem: bool = Field(False, description="keep every decoded training item in memory")
    process_group_timeout: float = Field(
        1800, ge=1, description="seconds a rank waits for the others in one operation before it stops with an error"
    )
    model_dir = property(lambda self: self.model)


class SpeakerPreset(_YmlSection):
    speaker: NonEmpty = Field(description="speaker name the preset applies to")
    # Declared once, in synthesis_params.py: the same default, range and meaning as on every other surface.
    sdp_ratio: float = SynthesisParams.model_fields["sdp_ratio"]
    noise_scale: float = SynthesisParams.model_fields["noise_scale"]
    noise_scale_w: float = SynthesisParams.model_fields["noise_scale_w"]
    length_scale: float = SynthesisParams.model_fields["length_scale"]


class ServerModelConfig(_YmlSection):
    model: NonEmpty = Field(description="G_*.pth, export .safetensors or .onnx")
    config: Text = Field("", description="its model config; empty for an export file (it carries its own)")
    device: Device = Field("auto", description="default: the section's device")
    language: Language = Field("ZH", description="default: the section's language")
    speakers: tuple[SpeakerPreset, ...] = Field((), strict=False, description="per-speaker inference presets")
    # Empty or not all digits (`^$|\D`): a number would be read as a model index in requests.
    name: Annotated[Text, Field(pattern=r"^$|\D"), Expect("a name that is not a number")] = Field(
        "", description="how requests name the model besides its index; empty: the model file's name"
    )

    @model_validator(mode="after")
    def _speakers_once(self) -> ServerModelConfig:
        check_distinct("speakers", [preset.speaker for preset in self.speakers], "a list naming each speaker once")
        return self


class _Serving(_YmlSection):
    """A section that serves models: its device and language are the defaults of its models."""

    host: NonEmpty = Field("127.0.0.1", description="address to bind; loopback: there is no authentication")
    device: Device = Field("auto", description="default device of the models")
    language: Language = Field("ZH", description="default language of the models")
    models: tuple[ServerModelConfig, ...] = Field((), strict=False, description="models served, in this order")

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not isinstance(data.get("models"), list):
            return data
        defaults = {name: data.get(name, cls.model_fields[name].default) for name in ("device", "language")}
        models = [{**defaults, **item} if isinstance(item, Mapping) else item for item in data["models"]]
        return {**data, "models": models}

    @model_validator(mode="after")
    def _distinct_names(self) -> _Serving:
        check_distinct("models", [model.name for model in self.models if model.name], "models with distinct names")
        return self


class ServerConfig(_Serving):
    port: int = Field(5000, ge=1, le=65535, description="port to listen on")
    queue_size: int = Field(8, ge=1, description="requests admitted at once; more get 503 + Retry-After")
    max_text_length: int = Field(500, ge=1, description="longest text (characters) of a request")
    max_body_size: int = Field(65536, ge=1024, description="largest request body (bytes)")


class WebuiConfig(_Serving):
    """``models`` come from ``webui.models``, and the reference's single ``model``/``config_path`` pair."""

    port: int = Field(7860, ge=1, le=65535, description="port to bind")
    model: InDatasetOrEmpty = Field("", description="the reference's single model (dataset-relative)")
    config_path: InDataset = Field("config.json", description="its model config (dataset-relative)")
    # A public share link would need the network (a tunnel); this UI only serves the address it binds.
    share: Annotated[Literal[False], Expect("false (public share links are not supported; bind a host instead)")] = (
        Field(False, description="the reference's Gradio share link: refused")
    )
    debug: bool = Field(False, description="the reference's key; accepted, not used")
    language_identification_library: Text = Field("", description="the reference's key; accepted, not used")

    @model_validator(mode="after")
    def _single_model(self) -> WebuiConfig:
        if self.model:
            single = {"model": self.model, "config": self.config_path, "device": self.device, "language": self.language}
            self.__dict__["models"] = (*self.models, ServerModelConfig(**single))  # frozen only once validated
        return self


class Config(_YmlSection):
    dataset_path: Text = Field("", description="folder of the dataset; the sections' paths are under it")
    resample: ResampleConfig = Field(default_factory=dict, description="resample.py")
    preprocess_text: PreprocessTextConfig = Field(default_factory=dict, description="preprocess_text.py")
    bert_gen: BertGenConfig = Field(default_factory=dict, description="bert_gen.py")
    train_ms: TrainMsConfig = Field(default_factory=dict, description="train_ms.py")
    server: ServerConfig = Field(default_factory=dict, description="server.py")
    webui: WebuiConfig = Field(default_factory=dict, description="webui.py")
    # The reference's attribute names, so reference-style call sites keep working.
    resample_config = property(lambda self: self.resample)
    preprocess_text_config = property(lambda self: self.preprocess_text)
    bert_gen_config = property(lambda self: self.bert_gen)
    train_ms_config = property(lambda self: self.train_ms)
    server_config = property(lambda self: self.server)
    webui_config = property(lambda self: self.webui)


def config_path_from_env(path: str | os.PathLike[str] | None = None) -> str:
    """The yml to read: ``path`` if given, else ``$BV2_CONFIG``, else ``config.yml``."""
    return os.fspath(path) if path is not None else os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the global settings (see the module docstring for how the file is chosen)."""
    source = config_path_from_env(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(
            f"config file not found: {source!r} (copy config.yml from the repository root, or point "
            f"{CONFIG_ENV_VAR} at your yml)"
        )
    with open(source, encoding="utf-8") as handle:
        return config_from_dict(settings_base.parse_yaml(handle.read(), source), source)


def config_from_dict(data: Any, source: str = "<dict>") -> Config:
    """Validate an already parsed yml mapping; ``source`` names it in error messages."""
    if isinstance(data, Mapping):
        for name in IGNORED_REFERENCE_SECTIONS:
            if name in data:
                logger.warning("%s: ignoring section '%s' (not used by this package)", source, name)
        data = {key: value for key, value in data.items() if key not in IGNORED_REFERENCE_SECTIONS}
    dataset_path = data.get("dataset_path") if isinstance(data, Mapping) else None
    return settings_base.validate(Config, data, source, "config.yml", dataset_path=dataset_path)


def resolve_device(device: str, local_rank: int | None = None) -> str:
    """The one device rule of every script: a configured device as a concrete torch device string. "auto" is CUDA
    when available, else the CPU; with ``local_rank`` (a torchrun process) "auto" and "cuda" mean that rank's GPU.
    A GPU that is not there is an error naming the setting, not a late CUDA crash."""
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


# The model config: Bert-VITS2's config.json (train / data / model, version) ====================================


class TrainConfig(Settings):
    """The ``train`` section; defaults are the official v2.3 values (configs/config.json)."""

    log_interval: int = Field(200, ge=1, description="steps between logged losses")
    eval_interval: int = Field(1000, ge=1, description="steps between evaluations and checkpoints")
    seed: int = Field(42, description="random seed")
    epochs: int = Field(1000, ge=1, description="epochs to train")
    learning_rate: Number = Field(2e-4, gt=0.0, description="AdamW learning rate")
    betas: Betas = Field([0.8, 0.99], description="AdamW betas")
    eps: Number = Field(1e-9, gt=0.0, description="AdamW epsilon")
    batch_size: int = Field(16, ge=1, description="items per batch and process")
    bf16_run: bool = Field(False, description="bfloat16 autocast on CUDA")
    fp16_run: bool = Field(False, description="float16 autocast with a GradScaler on CUDA")
    lr_decay: Number = Field(0.99995, gt=0.0, le=1.0, description="learning rate factor per epoch")
    segment_size: int = Field(16384, ge=1, description="audio samples of the decoded training slice")
    init_lr_ratio: Number = Field(1, gt=0.0, description="the reference's key; not used")
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear learning rate warm-up")
    c_mel: Number = Field(45, ge=0.0, description="weight of the mel reconstruction loss")
    c_kl: Number = Field(1.0, ge=0.0, description="weight of the KL loss")
    c_commit: Number = Field(100, ge=0.0, description="the reference's key; not used in 2.3")
    skip_optimizer: bool = Field(True, description="resuming reference checkpoints: skip their optimizer states")
    freeze_ZH_bert: bool = Field(False, description="keep the ZH BERT projection fixed")
    freeze_JP_bert: bool = Field(False, description="keep the JP BERT projection fixed")
    freeze_EN_bert: bool = Field(False, description="keep the EN BERT projection fixed")
    freeze_emo: bool = Field(False, description="the reference's key; not used in 2.3")
    allow_tf32: bool | None = unset("false: strict-fp32 CUDA matmuls and convolutions; unset: TF32 allowed")
    fused_adamw: bool | None = unset("true: torch's fused AdamW kernel (same update within rounding)")
    # Fine-tuning on a small GPU (unset = the reference's behaviour; left out of saved configs then).
    grad_accum_steps: int | None = unset("micro-batches of batch_size per optimizer update (unset: 1)", ge=1)
    activation_checkpointing: bool | None = unset("true: recompute decoder/flow/discriminator activations")
    freeze: Annotated[
        list[Literal[FREEZE_PARTS]] | None, Expect("null or a list of part names from " + ", ".join(FREEZE_PARTS))
    ] = unset("generator parts kept fixed (no gradient, no optimizer state)")

    @property
    def accumulation(self) -> int:
        return self.grad_accum_steps or 1

    @model_validator(mode="after")
    def _one_precision(self) -> TrainConfig:
        if self.bf16_run and self.fp16_run:
            raise invalid("", "train.bf16_run and train.fp16_run are both true; set at most one of them")
        return self


class DataConfig(Settings):
    sampling_rate: int = Field(ge=1, description="sample rate of the training audio (Hz)")
    filter_length: int = Field(ge=1, description="STFT size")
    hop_length: int = Field(ge=1, description="STFT hop; samples per spectrogram frame")
    win_length: int = Field(ge=1, description="STFT window, at most filter_length")
    training_files: Text = Field("", description="training filelist (written by preprocess_text.py)")
    validation_files: Text = Field("", description="validation filelist")
    max_wav_value: Number = Field(32768.0, gt=0.0, description="16-bit samples are divided by it")
    n_mel_channels: int = Field(80, ge=1, description="mel bands")
    mel_fmin: Number = Field(0.0, ge=0.0, description="lowest mel frequency (Hz)")
    mel_fmax: Annotated[Number | None, Expect("null or a number > data.mel_fmin")] = Field(
        None, description="highest mel frequency (Hz); null: half the sampling rate"
    )
    add_blank: bool = Field(True, description="interleave blank tokens between phones")
    n_speakers: int = Field(0, ge=0, description="speaker table size; 0: none (reference encoder); default: spk2id")
    cleaned_text: bool = Field(True, description="filelists hold cleaned phones")
    spk2id: SpeakerIds = Field({}, description="speaker name -> id")
    min_text_len: int = Field(1, ge=0, description="training items with fewer phones are skipped")
    max_text_len: int = Field(384, ge=1, description="training items with more phones are skipped")
    unused_bert: Literal[UNUSED_BERT_CHOICES] = Field("randn", description="the BERT slots a language does not use")
    use_mel_posterior_encoder: bool = Field(False, description="mel input (copied from model.*, as the reference)")
    spec_cache: bool | None = unset("train_ms.spec_cache of config.yml, set at run time")
    all_in_mem: bool | None = unset("train_ms.all_in_mem of config.yml, set at run time")

    @model_validator(mode="before")
    @classmethod
    def _speakers_from_table(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "n_speakers" not in data and isinstance(data.get("spk2id"), Mapping):
            return {**data, "n_speakers": len(data["spk2id"])}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.mel_fmax is not None and self.mel_fmax <= self.mel_fmin:
            raise must("mel_fmax", f"null or a number > data.mel_fmin ({self.mel_fmin})", self.mel_fmax)
        if self.win_length > self.filter_length:
            raise must("win_length", f"at most data.filter_length ({self.filter_length})", self.win_length)
        if self.max_text_len < self.min_text_len:
            raise must("max_text_len", f"at least data.min_text_len ({self.min_text_len})", self.max_text_len)
        outside = sorted(name for name, sid in self.spk2id.items() if self.n_speakers and sid >= self.n_speakers)
        if outside:
            names = ", ".join(map(repr, outside[:3]))
            raise invalid("spk2id", f"gives {names} an id >= data.n_speakers ({self.n_speakers})")
        return self


class SlmConfig(Settings):
    """``model.slm``: the WavLM of the training losses and the WavLM discriminator's shape."""

    model: NonEmpty = Field(description="local folder of the WavLM model")
    sr: int = Field(16000, ge=1, description="its sample rate (Hz)")
    hidden: int = Field(768, ge=1, description="its hidden size")
    nlayers: int = Field(13, ge=1, description="its hidden states (layers + embeddings)")
    initial_channel: int = Field(64, ge=1, description="the WavLM discriminator's first channels")


class NetConfig(Settings):
    """The ``model`` section: the generator's and discriminators' shapes (SynthesizerTrn's keyword names)."""

    inter_channels: int = Field(ge=1, description="latent channels")
    hidden_channels: int = Field(ge=1, description="text encoder and flow channels")
    filter_channels: int = Field(ge=1, description="transformer feed-forward channels")
    n_heads: int = Field(ge=1, description="attention heads; divides hidden_channels")
    n_layers: int = Field(ge=1, description="text encoder layers")
    kernel_size: int = Field(ge=1, description="feed-forward convolution kernel")
    p_dropout: Number = Field(0.1, ge=0.0, le=1.0, description="dropout")
    # A string as in the reference, which compares with "1": an integer 1 would pick ResBlock2 there.
    resblock: Literal["1", "2"] = Field("1", description="HiFi-GAN residual block type")
    resblock_kernel_sizes: Sizes = Field(description="kernels of the residual blocks")
    resblock_dilation_sizes: SizeLists = Field(description="dilations, one list per residual block kernel")
    upsample_rates: Sizes = Field(description="decoder upsampling factors; multiply to data.hop_length")
    upsample_initial_channel: int = Field(ge=1, description="decoder input channels")
    upsample_kernel_sizes: Sizes = Field(description="decoder upsampling kernels, one per rate")
    use_spk_conditioned_encoder: bool = Field(True, description="speaker embedding into the text encoder")
    use_noise_scaled_mas: bool = Field(False, description="noise in monotonic alignment search, decaying")
    use_mel_posterior_encoder: bool = Field(False, description="posterior encoder on mel instead of linear")
    use_duration_discriminator: bool = Field(False, description="train the duration discriminator")
    n_layers_q: int = Field(3, ge=1, description="the reference's key (posterior encoder layers); not used")
    use_spectral_norm: bool = Field(False, description="spectral norm in the period discriminators")
    gin_channels: int = Field(256, ge=0, description="speaker embedding channels")
    use_sdp: bool = Field(True, description="stochastic duration predictor")
    n_flow_layer: int = Field(4, ge=1, description="flow layers")
    n_layers_trans_flow: int = Field(4, ge=1, description="transformer layers per flow")
    flow_share_parameter: bool = Field(False, description="flows share parameters")
    use_transformer_flow: bool = Field(True, description="transformer coupling flows")
    slm: SlmConfig | None = unset("the WavLM settings; required to train, not to infer")

    @model_validator(mode="after")
    def _consistent(self) -> NetConfig:
        if self.hidden_channels % self.n_heads:
            raise must("n_heads", f"a divisor of model.hidden_channels ({self.hidden_channels})", self.n_heads)
        if len(self.resblock_dilation_sizes) != len(self.resblock_kernel_sizes):
            expected = f"one list per model.resblock_kernel_sizes entry ({len(self.resblock_kernel_sizes)})"
            raise must("resblock_dilation_sizes", expected, self.resblock_dilation_sizes)
        if len(self.upsample_kernel_sizes) != len(self.upsample_rates):
            expected = f"as long as model.upsample_rates ({len(self.upsample_rates)} entries)"
            raise must("upsample_kernel_sizes", expected, self.upsample_kernel_sizes)
        return self


class ModelConfig(Settings):
    train: TrainConfig = Field(description="training schedule and losses")
    data: DataConfig = Field(description="audio, spectrograms, lists and speakers")
    model: NetConfig = Field(description="the nets' shapes")
    version: Version = Field(MODEL_CONFIG_VERSION, description="Bert-VITS2 version of the config")
    model_dir: str | None = unset("the run's model folder, set by train_ms (in configs saved beside checkpoints)")

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        data, model, hop, size = self.data, self.model, self.data.hop_length, self.train.segment_size
        if size % hop:
            raise invalid("", f"setting train.segment_size ({size}) must be a multiple of data.hop_length ({hop})")
        if (upsampling := math.prod(model.upsample_rates)) != hop:
            rates = f"setting model.upsample_rates {model.upsample_rates} multiplies to {upsampling}"
            raise invalid("", f"{rates}, but the decoder must upsample by data.hop_length ({hop})")
        # As the reference's training script does: the loader makes mel spectrograms for a mel posterior encoder.
        data.use_mel_posterior_encoder = data.use_mel_posterior_encoder or model.use_mel_posterior_encoder
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the resolved config as JSON, atomically (a crash leaves the old file or the new one)."""
        atomic_io.atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")


def model_config_from_dict(data: Any, source: str = "<dict>") -> ModelConfig:
    """Validate an already parsed model config; ``source`` names it in error messages."""
    return settings_base.validate(ModelConfig, data, source, MODEL_REFERENCE)


def load_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Read and validate a model config JSON file (ours, the reference's, or one saved beside checkpoints)."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"model config not found: {source} (the config.json the model is trained with)")
    with open(source, encoding="utf-8") as handle:
        return model_config_from_json(handle.read(), source)


def model_config_from_json(text: str, source: str = "<json>") -> ModelConfig:
    """Parse and validate model config JSON text (e.g. the config stored in an export file's metadata)."""
    return model_config_from_dict(settings_base.parse_json(text, source), source)


def as_model_config(config: Any, source: str = "<model config>") -> ModelConfig:
    """A ModelConfig from a ModelConfig (as is) or a parsed mapping such as a checkpoint's stored config (validated)."""
    if isinstance(config, ModelConfig):
        return config
    return model_config_from_dict(settings_base.to_plain(config), getattr(config, "source", None) or source)


def as_data_config(config: Any, source: str = "<data settings>") -> DataConfig:
    """The ``data`` section from a ModelConfig, a DataConfig, or a whole config / data section as a mapping."""
    if isinstance(config, DataConfig):
        return config
    if isinstance(config, ModelConfig):
        return config.data
    plain = settings_base.to_plain(config)
    if isinstance(plain, Mapping) and isinstance(plain.get("data"), Mapping):
        plain = plain["data"]
    return settings_base.validate(DataConfig, plain, source, MODEL_REFERENCE, prefix="data")


def check_trainable(config: ModelConfig) -> None:
    """Raise ValueError naming the setting to change when a (valid) model config cannot train."""
    source = config.source
    if config.model.slm is None:
        raise ValueError(
            f"{source}: setting 'model.slm' is missing (the WavLM settings: {', '.join(SlmConfig.model_fields)})"
        )
    if config.model.use_spk_conditioned_encoder and config.data.n_speakers == 0:
        raise ValueError(f"{source}: 'data.n_speakers' must be > 0 when 'model.use_spk_conditioned_encoder' is true")
    if not config.data.training_files:
        raise ValueError(f"{source}: setting 'data.training_files' is empty (run preprocess_text.py)")


def changed_settings(old: ModelConfig | Mapping[str, Any], new: ModelConfig) -> list[tuple[str, Any, Any]]:
    """``(dotted setting, old value, new value)`` for every setting that differs, in file order. ``old`` may be the
    plain dict a checkpoint stored: validated first, defaults compare as defaults (no ``data.unused_bert`` equals
    "randn"). ``model_dir`` is left out."""
    before = settings_base.flatten(as_model_config(old, "the stored config"))
    after = settings_base.flatten(new)
    del before["model_dir"], after["model_dir"]  # where a run lives, not how it trains
    names = list(after) + [name for name in before if name not in after]
    return [(name, before.get(name), after.get(name)) for name in names if before.get(name) != after.get(name)]
