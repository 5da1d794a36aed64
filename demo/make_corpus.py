"""Generate the demo corpus: real (synthetic) speech from espeak-ng, offline, two voices x three languages.

espeak-ng comes from PyPI's ``espeakng-loader``, which ships ``libespeak-ng`` and its voice data; it is driven
here through ctypes (its C API: ``espeak_Initialize`` in synchronous mode, a synthesis callback that collects
the 16-bit samples, ``espeak_SetVoiceByName`` with a voice variant per speaker). espeak-ng speaks at 22050 Hz.

Writes ``demo/raw/<speaker>/<lang>_<nn>.flac`` and ``demo/transcription.list`` with lines
``<speaker>/<lang>_<nn>.flac|<speaker>|<LANG>|<text>`` (paths relative to ``demo/raw``; ``demo/prepare.py`` turns
them into the resampled wav paths). The output is deterministic, so re-running it reproduces the committed files.

    python demo/make_corpus.py                      # both speakers, EN, ZH and JP, 20 sentences each
    python demo/make_corpus.py --languages EN ZH    # a subset of the languages
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent

# Original sentences written for this corpus.
SENTENCES = {
    "EN": [
        "The morning train was late again, so we walked to the station.",
        "Please put the green cups on the lowest shelf.",
        "A small boat drifted slowly across the quiet lake.",
        "She finished the book before the rain stopped.",
        "Our neighbour grows tomatoes and sweet peppers every summer.",
        "Could you tell me where the library is?",
        "The children laughed when the puppy chased its tail.",
        "He wrote three letters and sent them on Monday.",
        "Fresh bread smells wonderful early in the day.",
        "The old clock in the hall stopped at noon.",
        "We need more paper for the printer upstairs.",
        "The river rises quickly after a heavy storm.",
        "My brother plays the violin in a local band.",
        "Turn left at the bakery and keep going straight.",
        "The museum opens at nine and closes at five.",
        "A cold wind blew through the open window.",
        "They planted twelve trees along the new road.",
        "Is this the right way to the harbour?",
        "The teacher asked everyone to read the first chapter.",
        "Bright stars filled the sky over the desert.",
    ],
    "ZH": [
        "今天早上天气很好，我们去公园散步。",
        "请把桌子上的书放回书架。",
        "他每天晚上都会读一会儿报纸。",
        "这家小店的面条非常好吃。",
        "我们明天下午在学校门口见面。",
        "外面下雨了，记得带伞。",
        "妹妹喜欢画画，也喜欢唱歌。",
        "火车站离这里不太远。",
        "冬天的时候，这里经常下雪。",
        "老师让我们把作业写完再回家。",
        "这条河的水很清，可以看到小鱼。",
        "周末我打算去看望爷爷奶奶。",
        "他把窗户打开，让新鲜空气进来。",
        "这座城市的夜景很漂亮。",
        "请问附近有没有银行？",
        "我的朋友在一家医院工作。",
        "春天来了，花园里开满了花。",
        "我们一起做了一顿丰盛的晚饭。",
        "图书馆里非常安静。",
        "小猫在阳光下睡着了。",
    ],
    "JP": [
        "きょうは とても いい てんき です。",
        "えきまで あるいて じゅっぷん です。",
        "あさごはんに パンを たべました。",
        "としょかんで ほんを かりました。",
        "あしたは あめが ふるでしょう。",
        "ねこが まどの そばで ねています。",
        "ともだちと こうえんへ いきました。",
        "この みせの おちゃは おいしい です。",
        "まいにち にほんごを べんきょうします。",
        "やまの うえから うみが みえます。",
        "でんしゃが すこし おくれています。",
        "はなが たくさん さいています。",
        "しゅうまつに かぞくと りょこうします。",
        "へやを きれいに そうじしました。",
        "ゆうびんきょくは どこ ですか。",
        "あたらしい くつを かいました。",
        "よる おそくまで しごとを しました。",
        "かわの みずが つめたい です。",
        "せんせいに てがみを かきました。",
        "そらに ほしが ひかっています。",
    ],
}

ESPEAK_VOICE = {"EN": "en-us", "ZH": "cmn", "JP": "ja"}


@dataclass(frozen=True)
class Speaker:
    name: str
    variant: str  # espeak-ng voice variant
    pitch: int  # 0..100
    rate: int  # words per minute


SPEAKERS = (Speaker("spk0", "m3", 40, 160), Speaker("spk1", "f2", 65, 150))

# espeak-ng C API constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """Minimal synchronous espeak-ng synthesiser over ctypes."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data_path = espeakng_loader.get_data_path().encode()
        self.sampling_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if self.sampling_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data path {data_path!r}")
        self._chunks: list[np.ndarray] = []
        # Keep a reference: ctypes frees the trampoline when the Python object goes away.
        self._callback = _SYNTH_CALLBACK(self._collect)
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n_samples, events) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0  # 0 = continue synthesis

    def say(self, text: str, voice: str, pitch: int, rate: int, seed: int = 0) -> np.ndarray:
        """int16 samples of ``text`` spoken by ``voice`` (e.g. ``en-us+m3``)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        self.lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        # espeak-ng adds random jitter/aspiration noise; a fixed seed per utterance makes the corpus reproducible.
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        self._chunks = []
        encoded = text.encode("utf-8") + b"\0"
        status = self.lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed ({status}) for {text!r}")
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def trim_silence(audio: np.ndarray, sampling_rate: int, threshold: int = 200, keep_s: float = 0.1) -> np.ndarray:
    """Cut leading/trailing silence down to ``keep_s`` seconds (espeak-ng appends a long pause)."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > threshold)
    if loud.size == 0:
        return audio
    keep = int(keep_s * sampling_rate)
    return audio[max(0, loud[0] - keep) : loud[-1] + keep]


def make_corpus(out_dir: Path, languages: Sequence[str], per_language: int) -> list[str]:
    """Write the audio under ``out_dir/raw`` and return the transcription lines."""
    import soundfile
    from tqdm import tqdm

    engine = Espeak()
    lines = []
    jobs = [(s, lang, i) for s in SPEAKERS for lang in languages for i in range(per_language)]
    for speaker, language, index in tqdm(jobs, desc="espeak-ng", unit="utt"):
        text = SENTENCES[language][index]
        voice = f"{ESPEAK_VOICE[language]}+{speaker.variant}"
        audio = engine.say(text, voice, speaker.pitch, speaker.rate, seed=len(lines))
        audio = trim_silence(audio, engine.sampling_rate)
        relative = f"{speaker.name}/{language.lower()}_{index:02d}.flac"
        target = out_dir / "raw" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(target, audio, engine.sampling_rate, format="FLAC", subtype="PCM_16", compression_level=1.0)
        lines.append(f"{relative}|{speaker.name}|{language}|{text}\n")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description="Generate the espeak-ng demo corpus (offline).")
    parser.add_argument("--out-dir", type=Path, default=DEMO_DIR, help="where raw/ and transcription.list go")
    parser.add_argument("--languages", nargs="+", default=["EN", "ZH", "JP"], choices=sorted(SENTENCES))
    parser.add_argument("--per-language", type=int, default=20, help="utterances per speaker and language")
    args = parser.parse_args(argv)
    if not 1 <= args.per_language <= 20:
        parser.error("--per-language must be between 1 and 20")
    lines = make_corpus(args.out_dir, args.languages, args.per_language)
    (args.out_dir / "transcription.list").write_text("".join(lines), encoding="utf-8")
    logger.info("%d utterances written to %s", len(lines), args.out_dir / "raw")
    return 0


if __name__ == "__main__":
    sys.exit(main())
