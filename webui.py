"""Web UI for Bert-VITS2 2.3 text-to-speech (Gradio), served on this machine only by default.

    python3 webui.py                                   # models, host and port from config.yml (webui section)
    python3 webui.py -m Data/models/G_8000.pth -c Data/config.json --bert-dir ZH=bert/chinese-roberta-wwm-ext-large

The page has the reference web UI's controls: text, model, speaker, language (ZH, JP, EN, mix, auto), the
sdp ratio / noise / noise_w / length sliders, style text and its weight, splitting long text into sentences
with pauses, and the audio player; ranges and defaults are `synthesis_params.SynthesisParams`'. Choosing a
speaker sets the four sliders to its preset from config.yml (`speakers:` of its model entry), else to the
defaults. "Generate" makes the whole file; "Stream" plays the audio while it is synthesized
(`Synthesizer.stream`: sentence by sentence, and decoder windows within a sentence), through Gradio's streaming
audio player, which encodes each chunk with ffmpeg (without ffmpeg on the PATH the button is left out). The same
calls are API endpoints for `gradio_client`: `/tts`, `/tts_stream` and `/preset`.

Nothing is fetched from the network: analytics and the version check are off, no share link is made, and the
theme uses the system's fonts instead of web fonts.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import queue
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

import config as global_config
import streaming
from synthesis_params import DEFAULT_PARAMS, FIELDS, SynthesisParams, value_range
from synthesis_plan import REQUEST_LANGUAGES
from text.bert_features import add_bert_dir_argument, parse_bert_dirs
from voice_registry import (
    PRESET_FIELDS,
    LoadedModel,
    ModelRegistry,
    ModelSpec,
    command_line_specs,
    load_models,
    specs_from_section,
    with_overrides,
)

logger = logging.getLogger(__name__)

# The sliders: a label for each numeric synthesis parameter; range and default come from SynthesisParams.
SLIDER_LABELS = {
    "sdp_ratio": "SDP ratio",
    "noise_scale": "Noise",
    "noise_scale_w": "Noise_W",
    "length_scale": "Length",
    "style_weight": "Style weight",
    "sentence_pause": "Pause between sentences (s)",
    "paragraph_pause": "Pause between paragraphs (s)",
}
SLIDER_STEP = 0.1  # the reference web UI's
DEFAULT_MAX_TEXT_LENGTH = 2000
# Requests waiting for the model at most; more are refused ("queue full") instead of piling up without bound.
DEFAULT_QUEUE_SIZE = 16
# System font stacks: the default theme would load its fonts from Google's servers.
SANS_FONTS = ("ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")


class VoiceService:
    """The loaded models and the one synthesis call behind the page and the API."""

    def __init__(self, registry: ModelRegistry, max_text_length: int = DEFAULT_MAX_TEXT_LENGTH) -> None:
        self.registry = registry
        self.max_text_length = max_text_length

    @property
    def model_names(self) -> list[str]:
        return self.registry.names

    def model(self, name: str) -> LoadedModel:
        try:
            return self.registry.get(name)
        except KeyError as error:
            raise ValueError(error.args[0]) from error

    def preset(self, model: str, speaker: str) -> SynthesisParams:
        """The parameters `speaker` of `model` starts from: its config.yml preset, else the defaults."""
        return self.model(model).spec.presets.get(speaker, DEFAULT_PARAMS)

    def _checked(self, text: str, model: str) -> tuple[str, LoadedModel]:
        """The stripped text and the model, or ValueError. Speaker and language are the synthesizer's to check."""
        text = (text or "").strip()
        if not text:
            raise ValueError("the text is empty: type something to say")
        if len(text) > self.max_text_length:
            raise ValueError(f"the text is {len(text)} characters long; the limit is {self.max_text_length}")
        return text, self.model(model)

    def synthesize(
        self, text: str, model: str, speaker: str, language: str, params: SynthesisParams
    ) -> tuple[int, np.ndarray]:
        """Check the request and speak it: (sampling rate, int16 samples). Bad input raises ValueError."""
        text, loaded = self._checked(text, model)
        with loaded.lock:
            sampling_rate, audio = loaded.synthesizer.synthesize(text, speaker, language, params)
        # 16-bit PCM is what the browser gets anyway; converting here keeps Gradio from warning about floats.
        return sampling_rate, to_int16(audio)

    def stream(
        self,
        text: str,
        model: str,
        speaker: str,
        language: str,
        params: SynthesisParams,
        chunk_frames: int = streaming.DEFAULT_CHUNK_FRAMES,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Check the request (ValueError at the call) and yield (sampling rate, int16 chunk) as each is decoded.

        The synthesis runs in a thread of its own that holds the model's lock until it ends, so a stream whose
        reader goes away never leaves the model locked: closing the iterator stops it at the next chunk, and
        one that is dropped unclosed still runs out. The reader meanwhile encodes the chunk before.
        """
        text, loaded = self._checked(text, model)
        synth = loaded.synthesizer
        chunks = synth.stream(text, speaker, language, params, chunk_frames=chunk_frames)  # checks speaker, text
        messages: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                with loaded.lock:
                    try:
                        for chunk in chunks:
                            if stop.is_set():
                                return
                            messages.put(("chunk", to_int16(chunk)))
                    finally:
                        chunks.close()  # leaves the stream's seeded-RNG block now, under the lock
                messages.put(("end", None))
            except Exception as error:  # handed to the reader, which raises it
                messages.put(("error", error))

        threading.Thread(target=produce, name="webui-stream", daemon=True).start()
        return _read_stream(messages, stop, synth.sampling_rate)


def _read_stream(messages: queue.Queue, stop: threading.Event, sampling_rate: int) -> Iterator[tuple[int, np.ndarray]]:
    try:
        while True:
            kind, value = messages.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield sampling_rate, value
    finally:
        stop.set()


def wav_bytes(sampling_rate: int, samples: np.ndarray) -> bytes:
    """16-bit mono WAV file contents."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sampling_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def can_stream_audio() -> bool:
    """Whether Gradio's streaming audio player can work here: it encodes every chunk with ffmpeg."""
    return shutil.which("ffmpeg") is not None


def to_int16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def audio_player_html(sampling_rate: int, samples: np.ndarray) -> str:
    """An <audio> element that carries the audio itself (a WAV data URI), so it plays without another request."""
    source = "data:audio/wav;base64," + base64.b64encode(wav_bytes(sampling_rate, samples)).decode("ascii")
    return f'<audio controls preload="metadata" style="width: 100%" src="{source}"></audio>'


# --------------------------------------------------------------------------------------------------------------
# Models: chosen and loaded the way server.py does it (voice_registry.py)


def model_specs(args: argparse.Namespace, settings: global_config.Config) -> list[ModelSpec]:
    """The command line's `--model [NAME=]PATH` (as server.py reads them), else `webui.models`, else
    `server.models`; `--device`/`--language` apply to every model."""
    if args.config and not args.model:
        raise ValueError("--config needs --model (the models of config.yml name their configs themselves)")
    if args.model:
        device = args.device or settings.webui.device
        specs = command_line_specs(args.model, args.config, device, args.language or settings.webui.language)
    else:
        section = settings.webui if settings.webui.models else settings.server
        specs = with_overrides(specs_from_section(section), args.device, args.language)
    if not specs:
        raise ValueError(
            f"no model to serve: pass --model (and --config), or list models under webui.models in {settings.source}"
        )
    return specs


# --------------------------------------------------------------------------------------------------------------
# The page


def _slider(gr: Any, name: str, value: float) -> Any:
    minimum, maximum = value_range(name)
    label = SLIDER_LABELS[name]
    return gr.Slider(minimum=minimum, maximum=maximum, step=SLIDER_STEP, value=value, label=label, elem_id=name)


def _params_from_controls(values: Sequence[Any]) -> SynthesisParams:
    """The parameters from the page's controls, in `SynthesisParams` field order (seed -1 or empty: random)."""
    given = dict(zip(FIELDS, values, strict=True))
    seed = given["seed"]
    given["seed"] = None if seed is None or seed < 0 else int(seed)
    return SynthesisParams.checked(given)


def build_app(service: VoiceService, default_language: str | None = None, stream_audio: bool | None = None) -> Any:
    """The Gradio Blocks app; `launch` it or mount it. `stream_audio`: offer the streamed player (default: when
    ffmpeg is found)."""
    import gradio as gr

    if stream_audio is None:
        stream_audio = can_stream_audio()
        if not stream_audio:
            logger.warning("ffmpeg not found: the page has no streamed player (Gradio encodes its chunks with it)")

    first = service.model(service.model_names[0])
    language = default_language or first.spec.language
    if language.lower() not in {choice.lower() for choice in REQUEST_LANGUAGES}:
        raise ValueError(f"unknown default language {language!r}; use one of {', '.join(REQUEST_LANGUAGES)}")
    language = next(choice for choice in REQUEST_LANGUAGES if choice.lower() == language.lower())
    speakers = first.synthesizer.speakers
    start = service.preset(first.name, speakers[0]) if speakers else DEFAULT_PARAMS  # what the page opens with

    def generate(text: str, model: str, speaker: str, language: str, *values: Any) -> tuple[Any, str]:
        """The audio for the API and the player for the page; `values` are the parameter controls'."""
        try:
            params = _params_from_controls(values)
            sampling_rate, samples = service.synthesize(text, model, speaker, language, params)
        except (ValueError, FileNotFoundError) as error:
            # gr.Error shows the message on the page and hands it to API clients; other errors stay generic.
            raise gr.Error(str(error)) from error
        return (sampling_rate, samples), audio_player_html(sampling_rate, samples)

    def generate_stream(text: str, model: str, speaker: str, language: str, *values: Any) -> Iterator[bytes]:
        """The audio as WAV chunks, each as soon as it is decoded, for the streaming player."""
        try:
            params = _params_from_controls(values)
            for sampling_rate, chunk in service.stream(text, model, speaker, language, params):
                yield wav_bytes(sampling_rate, chunk)
        except (ValueError, FileNotFoundError) as error:
            raise gr.Error(str(error)) from error

    def speaker_chosen(model: str, speaker: str) -> list[float]:
        """The speaker's preset (config.yml), else the defaults, for the preset sliders."""
        preset = service.preset(model, speaker) if speaker else DEFAULT_PARAMS
        return [getattr(preset, name) for name in PRESET_FIELDS]

    def model_chosen(model: str) -> tuple[Any, Any]:
        """The chosen model's speakers, and its default language."""
        loaded = service.model(model)
        speakers = loaded.synthesizer.speakers
        return gr.Dropdown(choices=speakers, value=speakers[0] if speakers else None), gr.Dropdown(
            value=loaded.spec.language
        )

    with gr.Blocks(title="Bert-VITS2 2.3", analytics_enabled=False) as app:
        gr.Markdown("## Bert-VITS2 2.3 text to speech")
        with gr.Row():
            with gr.Column():
                text = gr.TextArea(label="Text", placeholder="Text to say", lines=5, elem_id="text")
                model = gr.Dropdown(
                    choices=service.model_names, value=service.model_names[0], label="Model", elem_id="model"
                )
                speaker = gr.Dropdown(
                    choices=speakers,
                    value=speakers[0] if speakers else None,
                    label="Speaker",
                    elem_id="speaker",
                    # The choices follow the model on the page; an API call names any model's speaker, and
                    # the synthesizer answers an unknown one with the list of known speakers.
                    allow_custom_value=True,
                )
                language_box = gr.Dropdown(
                    choices=list(REQUEST_LANGUAGES),
                    value=language,
                    label="Language",
                    info="mix: tagged text, [speaker]<zh>你好<en>hello|<jp>こんにちは; auto: identified per piece",
                    elem_id="language",
                )
                controls = {name: _slider(gr, name, getattr(start, name)) for name in PRESET_FIELDS}
            with gr.Column():
                controls["style_text"] = gr.Textbox(
                    label="Style text",
                    placeholder="Optional: text whose style (BERT features) is mixed into the voice",
                    elem_id="style_text",
                )
                controls["style_weight"] = _slider(gr, "style_weight", start.style_weight)
                controls["split"] = gr.Checkbox(value=start.split, label="Split by sentence", elem_id="split")
                for name in ("sentence_pause", "paragraph_pause"):
                    controls[name] = _slider(gr, name, getattr(start, name))
                controls["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="seed")
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                    # Gradio's streaming player needs ffmpeg; without it the button is left out (see can_stream_audio).
                    stream_button = gr.Button("Stream", elem_id="stream_button", visible=stream_audio)
                streamed = gr.Audio(
                    label="Streamed audio (plays while it is synthesized)",
                    streaming=True,
                    autoplay=True,
                    interactive=False,
                    elem_id="streamed",
                    visible=stream_audio,
                )
                # The page plays the result in the browser's own <audio> element (Gradio 6's audio component
                # leaves that element without a source unless it draws a waveform); the audio component,
                # hidden, is what API clients get: a WAV file.
                player = gr.HTML(label="Audio", elem_id="audio")
                audio = gr.Audio(label="Audio file", type="numpy", interactive=False, visible=False)
        model.change(model_chosen, inputs=model, outputs=[speaker, language_box], api_name="speakers")
        preset_controls = [controls[name] for name in PRESET_FIELDS]
        speaker.change(speaker_chosen, inputs=[model, speaker], outputs=preset_controls, api_name="preset")
        inputs = [text, model, speaker, language_box, *(controls[name] for name in FIELDS)]
        button.click(generate, inputs=inputs, outputs=[audio, player], api_name="tts", concurrency_limit=1)
        if stream_audio:
            stream_button.click(
                generate_stream, inputs=inputs, outputs=streamed, api_name="tts_stream", concurrency_limit=1
            )
    return app


# --------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Bert-VITS2 2.3 web UI (Gradio)")
    parser.add_argument(
        "-m",
        "--model",
        action="append",
        default=[],
        help="[NAME=]PATH of a G_*.pth, export .safetensors or .onnx; repeatable (default: config.yml webui.models)",
    )
    parser.add_argument(
        "-c", "--config", action="append", default=[], help="its config.json; one per --model, or one for all"
    )
    add_bert_dir_argument(parser)
    parser.add_argument("--yml", default=None, help="global settings file (default $BV2_CONFIG or config.yml)")
    parser.add_argument("--host", default=None, help="address to bind (default webui.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default webui.port, 7860)")
    parser.add_argument("--device", default=None, help="device of --model models (default webui.device)")
    parser.add_argument("--language", default=None, help="language selected at start (default webui.language)")
    parser.add_argument("--max-text-length", type=int, default=DEFAULT_MAX_TEXT_LENGTH)
    parser.add_argument(
        "--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, help="requests that may wait; beyond: 'queue full'"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--dataset", help="review this path|speaker|LANG|text list instead (dataset_review.py)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before Gradio is imported: it reads these at import time. Nothing may phone home.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if args.dataset:
        import dataset_review

        return dataset_review.run(args.dataset, args.host, args.port, args.yml)
    try:
        settings = global_config.load_config(args.yml)
        webui = settings.webui
        specs = model_specs(args, settings)
        for option, value in (("--queue-size", args.queue_size), ("--max-text-length", args.max_text_length)):
            if value < 1:
                raise ValueError(f"{option} must be >= 1, got {value}")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        registry = load_models(specs, bert_dirs=parse_bert_dirs(args.bert_dir))
        app = build_app(VoiceService(registry, args.max_text_length), default_language=args.language)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    serve(app, args.host or webui.host, args.port or webui.port, args.queue_size)
    return 0


def serve(app: Any, host: str, port: int, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
    """Serve until interrupted: on `host` only, no share tunnel, no server-side rendering (it needs Node)."""
    import gradio as gr

    theme = gr.themes.Default(font=list(SANS_FONTS), font_mono=list(MONO_FONTS))
    logger.info("web UI on http://%s:%d", host, port)
    app.queue(default_concurrency_limit=1, max_size=queue_size).launch(
        server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False, theme=theme
    )


if __name__ == "__main__":
    sys.exit(main())
