"""Training data: the multi-speaker dataset, its batch collation and the length-bucketing sampler.

Filelists are the cleaned lists written by ``preprocess_text.py``, one utterance per line::

    path/to/clip.wav|speaker|language|normalised text|ph ph ph ...|tone tone ...|word2ph word2ph ...

Beside each ``clip.wav`` the dataset expects ``clip.bert.pt`` (written by ``bert_gen.py``) and caches the linear
spectrogram as ``clip.spec.pt`` (``clip.mel.pt`` with a mel posterior encoder).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import soundfile
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset, Sampler

import atomic_io
import commons
from config import UNUSED_BERT_CHOICES, as_data_config
from mel_processing import mel_spectrogram_torch, spectrogram_torch
from text import cleaned_text_to_sequence

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BUCKET_BOUNDARIES",
    "FILELIST_FIELDS",
    "FilelistEntry",
    "Sample",
    "Batch",
    "parse_filelist_line",
    "read_filelist",
    "bert_path_for",
    "spec_path_for",
    "blanked_word2ph",
    "frames_from_file_size",
    "UNUSED_BERT_CHOICES",
    "DEFAULT_UNUSED_BERT",
    "unused_bert_regime",
    "fill_bert_slots",
    "item_noise_generator",
    "EpochIndex",
    "TextAudioSpeakerLoader",
    "TextAudioSpeakerCollate",
    "DistributedBucketSampler",
]

# The bucket boundaries (in spectrogram frames) the reference training script uses.
DEFAULT_BUCKET_BOUNDARIES = (32, 300, 400, 500, 600, 700, 800, 900, 1000)
FILELIST_FIELDS = ("wav", "speaker", "language", "norm_text", "phones", "tones", "word2ph")
# The reference shuffles the filelist with this seed before filtering, so dataset index i is the same item.
_FILELIST_SHUFFLE_SEED = 1234
# soundfile scales 16-bit PCM to [-1, 1) by this factor, the reference's default max_wav_value.
_INT16_SCALE = 32768.0
# Which BERT slot of the text encoder a language's features feed.
_BERT_SLOT = {"ZH": 0, "JP": 1, "EN": 2}
# data.unused_bert: what fills the two BERT slots of the languages an utterance is not in. "randn" (standard normal
# noise, fresh per item) is what Bert-VITS2 2.3 does in training and inference; "zeros" is deterministic. The
# setting is validated by config.py, which holds the choices.
DEFAULT_UNUSED_BERT = "randn"


class FilelistEntry(NamedTuple):
    """One parsed filelist line; ``phones``/``tones``/``word2ph`` are as written (before blank insertion)."""

    wav: str
    speaker: str
    language: str
    norm_text: str
    phones: list[str]
    tones: list[int]
    word2ph: list[int]


class Sample(NamedTuple):
    """One dataset item, in the reference tuple order."""

    phones: Tensor  # [t_text] int64 symbol ids
    spec: Tensor  # [spec_channels, t_spec]
    wav: Tensor  # [1, t_wav] in [-1, 1]
    sid: Tensor  # [1] int64
    tone: Tensor  # [t_text] int64
    language: Tensor  # [t_text] int64
    bert: Tensor  # [1024, t_text] Chinese BERT slot
    ja_bert: Tensor  # [1024, t_text] Japanese BERT slot
    en_bert: Tensor  # [1024, t_text] English BERT slot


class Batch(NamedTuple):
    """A padded batch; iterates (and unpacks) in the reference collate's order."""

    text: Tensor  # [b, t_text]
    text_lengths: Tensor  # [b]
    spec: Tensor  # [b, spec_channels, t_spec]
    spec_lengths: Tensor  # [b]
    wav: Tensor  # [b, 1, t_wav]
    wav_lengths: Tensor  # [b]
    sid: Tensor  # [b]
    tone: Tensor  # [b, t_text]
    language: Tensor  # [b, t_text]
    bert: Tensor  # [b, 1024, t_text]
    ja_bert: Tensor  # [b, 1024, t_text]
    en_bert: Tensor  # [b, 1024, t_text]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor moved to ``device``."""
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))


# --------------------------------------------------------------------------------------------- filelists


def _int_list(field: str, name: str, where: str) -> list[int]:
    try:
        return [int(v) for v in field.split()]
    except ValueError as err:
        raise ValueError(f"{where}: {name} must be space-separated integers, got {field!r}") from err


def parse_filelist_line(line: str, where: str = "<filelist>") -> FilelistEntry:
    """Split one cleaned-filelist line; ``where`` (``file:line``) prefixes every error message."""
    fields = line.rstrip("\r\n").split("|")
    if len(fields) != len(FILELIST_FIELDS):
        raise ValueError(
            f"{where}: expected {len(FILELIST_FIELDS)} '|'-separated fields "
            f"({'|'.join(FILELIST_FIELDS)}), got {len(fields)}"
        )
    wav, speaker, language, norm_text, phones, tones, word2ph = fields
    return FilelistEntry(
        wav=wav,
        speaker=speaker,
        language=language,
        norm_text=norm_text,
        phones=phones.split(),
        tones=_int_list(tones, "tones", where),
        word2ph=_int_list(word2ph, "word2ph", where),
    )


def read_filelist(path: str | os.PathLike) -> list[tuple[str, FilelistEntry]]:
    """All non-blank lines of a filelist as ``(file:line, entry)``; the first malformed line raises."""
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            entries.append((where, parse_filelist_line(line, where)))
    return entries


def bert_path_for(wav_path: str | os.PathLike) -> Path:
    """``clip.wav`` -> ``clip.bert.pt`` (only the extension is replaced, not every '.wav' in the path)."""
    return Path(wav_path).with_suffix(".bert.pt")


def spec_path_for(wav_path: str | os.PathLike, mel: bool = False) -> Path:
    """``clip.wav`` -> ``clip.spec.pt`` (or ``clip.mel.pt`` for a mel posterior encoder)."""
    return Path(wav_path).with_suffix(".mel.pt" if mel else ".spec.pt")


def frames_from_file_size(path: str | os.PathLike, hop_length: int) -> int:
    """Approximate spectrogram frames of a 16-bit wav from its file size: what the bucket sampler sorts by."""
    return os.path.getsize(path) // (2 * hop_length)


def blanked_word2ph(word2ph: Sequence[int]) -> list[int]:
    """word2ph after blank insertion: every word owns twice its phones, the leading blank goes to word 0."""
    out = [2 * n for n in word2ph]
    if out:
        out[0] += 1
    return out


# --------------------------------------------------------------------------------------------- hparams


# --------------------------------------------------------------------------------------------- unused BERT


def unused_bert_regime(data_hparams: Any) -> str:
    """``data.unused_bert`` of a model config ("randn" when absent, as for the reference's configs)."""
    return as_data_config(data_hparams).unused_bert


def fill_bert_slots(
    features: Tensor, language: str, regime: str, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(bert, ja_bert, en_bert): ``features`` [1024, t] in ``language``'s slot, the other two by ``regime``.

    "randn" draws the noise from ``generator`` (CPU; None: torch's global RNG) in slot order ZH, JP, EN, skipping
    the used slot, the order in which the reference draws it.
    """
    if language not in _BERT_SLOT:
        raise ValueError(f"unknown language {language!r} (expected one of {list(_BERT_SLOT)})")
    if regime not in UNUSED_BERT_CHOICES:
        raise ValueError(f"unused BERT regime must be one of {list(UNUSED_BERT_CHOICES)}, got {regime!r}")
    slots = []
    for slot_language in _BERT_SLOT:
        if slot_language == language:
            slots.append(features)
        elif regime == "randn":
            slots.append(torch.randn(tuple(features.shape), generator=generator, dtype=features.dtype))
        else:
            slots.append(torch.zeros_like(features))
    return slots[0], slots[1], slots[2]


def item_noise_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded by (training seed, epoch, dataset index): an item's noise is the same whichever
    worker loads it and whether or not the run was resumed."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest, "little"))
    return generator


class EpochIndex(int):
    """A dataset index that carries the epoch it was sampled in.

    The bucket sampler yields these, so the epoch reaches the dataset inside DataLoader worker processes (which
    keep their own copy of the dataset with persistent workers) without any extra channel. It compares, hashes
    and serialises as the plain index.
    """

    epoch: int

    def __new__(cls, index: int, epoch: int) -> EpochIndex:
        value = super().__new__(cls, index)
        value.epoch = int(epoch)
        return value

    def __getnewargs__(self) -> tuple[int, int]:
        return int(self), self.epoch


# --------------------------------------------------------------------------------------------- dataset


class TextAudioSpeakerLoader(Dataset):
    """Multi-speaker dataset of (phones, spectrogram, wave, speaker, tones, languages, three BERT slots).

    1. loads the filelist and shuffles it with a fixed seed (as the reference does, so index i is the same
       clip in both implementations);
    2. keeps lines whose phone count lies in ``[min_text_len, max_text_len]`` (defaults 1 and 384). The
       reference compares the *character* length of the space-separated phone string instead; counting phones
       is what the setting means, and only utterances near the limit are affected;
    3. records ``lengths`` = wav file size // (2 · hop_length), the approximate frame count of a 16-bit wav that
       :class:`DistributedBucketSampler` buckets by.

    BERT features: ``clip.bert.pt`` [1024, n_phones after blank insertion] goes into the slot of the clip's
    language; the other two slots follow ``data.unused_bert``: "randn" (default, the reference's behaviour)
    draws standard-normal noise at every load, from a generator seeded by (``seed``, epoch, index) so that
    workers and resumed runs draw the same noise (the epoch comes with an :class:`EpochIndex` from the
    sampler; a plain index counts as epoch 0); "zeros" leaves zeros.

    Audio is read with soundfile as float32 (16-bit samples / ``max_wav_value``, as the reference);
    a clip at another sampling rate than ``sampling_rate`` or with more than one channel raises ``ValueError``.
    Spectrograms are cached beside the wav when ``spec_cache`` (default true) and recomputed when the cache
    is older than the wav or has the wrong shape. ``all_in_mem`` preloads every item at construction.
    """

    def __init__(
        self, audiopaths_sid_text: str | os.PathLike, hparams: Any, all_in_mem: bool | None = None, seed: int = 0
    ):
        self.filelist = str(audiopaths_sid_text)
        data = as_data_config(hparams)  # validated: a misspelled key is an error naming the nearest one
        self.max_wav_value = float(data.max_wav_value)
        self.sampling_rate = data.sampling_rate
        self.filter_length = data.filter_length
        self.hop_length = data.hop_length
        self.win_length = data.win_length
        self.n_mel_channels = data.n_mel_channels
        self.mel_fmin = float(data.mel_fmin)
        self.mel_fmax = data.mel_fmax
        self.spk_map = dict(data.spk2id)
        self.add_blank = data.add_blank
        self.min_text_len = data.min_text_len
        self.max_text_len = data.max_text_len
        self.use_mel_spec_posterior = data.use_mel_posterior_encoder
        self.unused_bert = data.unused_bert  # "randn" or "zeros": what the two unused BERT slots hold
        self.seed = int(seed)
        self.spec_cache = data.spec_cache is not False  # unset: cache (config.yml's default)
        if all_in_mem is None:
            all_in_mem = bool(data.all_in_mem)

        entries = read_filelist(self.filelist)
        random.Random(_FILELIST_SHUFFLE_SEED).shuffle(entries)
        self.audiopaths_sid_text: list[FilelistEntry] = []
        self.origins: list[str] = []  # file:line of each kept entry, for error messages
        self.lengths: list[int] = []
        self._filter(entries)

        self.preloaded: list[Sample] | None = None
        if all_in_mem:
            self.preloaded = [self._load_item(i) for i in range(len(self))]

    def _filter(self, entries: list[tuple[str, FilelistEntry]]) -> None:
        skipped = 0
        for where, entry in entries:
            if not self.min_text_len <= len(entry.phones) <= self.max_text_len:
                skipped += 1
                continue
            try:
                length = frames_from_file_size(entry.wav, self.hop_length)
            except OSError as err:
                raise FileNotFoundError(f"{where}: cannot read audio file {entry.wav!r}: {err}") from err
            self.audiopaths_sid_text.append(entry)
            self.origins.append(where)
            self.lengths.append(length)
        logger.info(
            "%s: kept %d utterances, skipped %d outside %d..%d phones",
            self.filelist,
            len(self.audiopaths_sid_text),
            skipped,
            self.min_text_len,
            self.max_text_len,
        )

    def __len__(self) -> int:
        return len(self.audiopaths_sid_text)

    def __getitem__(self, index: int) -> Sample:
        position = int(index)
        sample = self.preloaded[position] if self.preloaded is not None else self._load_item(position)
        if self.unused_bert == "randn":
            sample = self._with_noise(sample, position, getattr(index, "epoch", 0))
        return sample

    def _with_noise(self, sample: Sample, index: int, epoch: int) -> Sample:
        """The sample with its two unused BERT slots drawn from the item's own generator."""
        language = self.audiopaths_sid_text[index].language
        features = (sample.bert, sample.ja_bert, sample.en_bert)[_BERT_SLOT[language]]
        generator = item_noise_generator(self.seed, epoch, index)
        bert, ja_bert, en_bert = fill_bert_slots(features, language, "randn", generator)
        return sample._replace(bert=bert, ja_bert=ja_bert, en_bert=en_bert)

    def _load_item(self, index: int) -> Sample:
        entry = self.audiopaths_sid_text[index]
        return self.get_audio_text_speaker_pair(entry, self.origins[index])

    def get_audio_text_speaker_pair(self, entry: FilelistEntry, where: str = "<filelist>") -> Sample:
        if entry.speaker not in self.spk_map:
            raise KeyError(f"{where}: speaker {entry.speaker!r} is not in data.spk2id ({sorted(self.spk_map)})")
        bert, ja_bert, en_bert, phones, tone, language = self.get_text(
            entry.norm_text, entry.word2ph, entry.phones, entry.tones, entry.language, entry.wav
        )
        spec, wav = self.get_audio(entry.wav)
        sid = torch.LongTensor([int(self.spk_map[entry.speaker])])
        return Sample(phones, spec, wav, sid, tone, language, bert, ja_bert, en_bert)

    # -- audio

    def _read_wav(self, filename: str) -> Tensor:
        audio, sampling_rate = soundfile.read(filename, dtype="float32", always_2d=True)  # [t, channels]
        if sampling_rate != self.sampling_rate:
            raise ValueError(
                f"{filename}: sampling rate {sampling_rate} Hz, but the config expects {self.sampling_rate} Hz "
                "(resample the corpus with resample.py)"
            )
        if audio.shape[1] != 1:
            raise ValueError(f"{filename}: {audio.shape[1]} channels, but training needs mono audio")
        wav = torch.from_numpy(audio[:, 0].copy()).unsqueeze(0)  # [1, t]
        if self.max_wav_value != _INT16_SCALE:
            # soundfile already divided 16-bit samples by 2^15; the reference divides them by max_wav_value
            wav = wav * (_INT16_SCALE / self.max_wav_value)
        return wav

    def _compute_spec(self, audio: Tensor) -> Tensor:
        if self.use_mel_spec_posterior:
            spec = mel_spectrogram_torch(
                audio,
                self.filter_length,
                self.n_mel_channels,
                self.sampling_rate,
                self.hop_length,
                self.win_length,
                self.mel_fmin,
                self.mel_fmax,
                center=False,
            )
        else:
            spec = spectrogram_torch(
                audio, self.filter_length, self.sampling_rate, self.hop_length, self.win_length, center=False
            )
        return spec.squeeze(0)  # [channels, frames]

    def _expected_spec_shape(self, audio: Tensor) -> tuple[int, int]:
        channels = self.n_mel_channels if self.use_mel_spec_posterior else self.filter_length // 2 + 1
        return channels, audio.shape[-1] // self.hop_length

    def _load_cached_spec(self, cache: Path, wav_file: str, expected: tuple[int, int]) -> Tensor | None:
        """The cached spectrogram if it is newer than the wav and has the expected shape, else None."""
        try:
            if cache.stat().st_mtime < os.stat(wav_file).st_mtime:
                return None
            spec = torch.load(cache, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError):
            return None  # absent or truncated: recompute
        if not isinstance(spec, Tensor) or tuple(spec.shape) != expected:
            logger.debug("ignoring stale spectrogram cache %s", cache)
            return None
        return spec

    def _save_spec_cache(self, spec: Tensor, cache: Path) -> None:
        # Atomic: several DataLoader workers may cache the same clip at once.
        try:
            with atomic_io.atomic_write(cache, "wb", make_dirs=False) as handle:
                torch.save(spec, handle)
        except OSError as err:
            logger.warning("could not write spectrogram cache %s: %s", cache, err)

    def get_audio(self, filename: str) -> tuple[Tensor, Tensor]:
        """(spec [channels, frames], wave [1, t]) of one clip."""
        audio = self._read_wav(filename)
        expected = self._expected_spec_shape(audio)
        cache = spec_path_for(filename, mel=self.use_mel_spec_posterior)
        spec = self._load_cached_spec(cache, filename, expected) if self.spec_cache else None
        if spec is None:
            spec = self._compute_spec(audio)
            if self.spec_cache:
                self._save_spec_cache(spec, cache)
        return spec, audio

    # -- text

    def get_text(
        self,
        text: str,
        word2ph: Sequence[int],
        phone: Sequence[str],
        tone: Sequence[int],
        language_str: str,
        wav_path: str,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(bert, ja_bert, en_bert, phone ids, tone ids, language ids) of one utterance.

        ``text`` (the normalised text) is unused here, as in the reference; the BERT features were computed
        from it by bert_gen.py. ``word2ph`` is not modified. The unused slots are zeros here; ``__getitem__``
        replaces them with noise under ``data.unused_bert = "randn"``.
        """
        del text
        if language_str not in _BERT_SLOT:
            raise ValueError(f"{wav_path}: unknown language {language_str!r} (expected one of {list(_BERT_SLOT)})")
        try:
            phone_ids, tone_ids, lang_ids = cleaned_text_to_sequence(list(phone), list(tone), language_str)
        except ValueError as err:
            raise ValueError(f"{wav_path}: {err} (run check_dataset.py on the filelist)") from err
        if self.add_blank:
            phone_ids = commons.intersperse(phone_ids, 0)
            tone_ids = commons.intersperse(tone_ids, 0)
            lang_ids = commons.intersperse(lang_ids, 0)
            word2ph = blanked_word2ph(word2ph)
        n_phones = len(phone_ids)

        features = self._load_bert(wav_path, n_phones, sum(word2ph))
        bert, ja_bert, en_bert = fill_bert_slots(features, language_str, "zeros")
        return (
            bert,
            ja_bert,
            en_bert,
            torch.LongTensor(phone_ids),
            torch.LongTensor(tone_ids),
            torch.LongTensor(lang_ids),
        )

    @staticmethod
    def _load_bert(wav_path: str, n_phones: int, n_word2ph: int) -> Tensor:
        path = bert_path_for(wav_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: BERT features missing (run bert_gen.py for this filelist)")
        features = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[-1] != n_phones:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"{path}: BERT features have shape {shape}, expected [1024, {n_phones}] "
                f"(phones after blank insertion; sum(word2ph) = {n_word2ph}); re-run bert_gen.py"
            )
        return features.float()


# --------------------------------------------------------------------------------------------- collate


class TextAudioSpeakerCollate:
    """Zero-pads a list of :class:`Sample` into a :class:`Batch`, rows sorted by decreasing spectrogram length.

    With ``return_ids`` the call returns ``(batch, ids_sorted_decreasing)``: the dataset-list position of each
    row.
    """

    def __init__(self, return_ids: bool = False):
        self.return_ids = return_ids

    def __call__(self, batch: Sequence[Sequence[Tensor]]) -> Batch | tuple[Batch, Tensor]:
        if len(batch) == 0:
            raise ValueError("TextAudioSpeakerCollate got an empty batch")
        spec_lengths_in = torch.LongTensor([item[1].size(1) for item in batch])
        # stable: equal lengths keep their input order
        _, ids_sorted_decreasing = torch.sort(spec_lengths_in, dim=0, descending=True, stable=True)

        b = len(batch)
        max_text_len = max(len(item[0]) for item in batch)
        max_spec_len = max(item[1].size(1) for item in batch)
        max_wav_len = max(item[2].size(1) for item in batch)
        spec_channels = batch[0][1].size(0)
        bert_channels = batch[0][6].size(0)

        text = torch.zeros(b, max_text_len, dtype=torch.long)
        tone = torch.zeros(b, max_text_len, dtype=torch.long)
        language = torch.zeros(b, max_text_len, dtype=torch.long)
        bert = torch.zeros(b, bert_channels, max_text_len)
        ja_bert = torch.zeros(b, bert_channels, max_text_len)
        en_bert = torch.zeros(b, bert_channels, max_text_len)
        spec = torch.zeros(b, spec_channels, max_spec_len)
        wav = torch.zeros(b, 1, max_wav_len)
        text_lengths = torch.zeros(b, dtype=torch.long)
        spec_lengths = torch.zeros(b, dtype=torch.long)
        wav_lengths = torch.zeros(b, dtype=torch.long)
        sid = torch.zeros(b, dtype=torch.long)

        for row, source in enumerate(ids_sorted_decreasing.tolist()):
            phones, item_spec, item_wav, item_sid, item_tone, item_lang, item_bert, item_ja, item_en = batch[source]
            n_text, n_spec, n_wav = len(phones), item_spec.size(1), item_wav.size(1)
            text[row, :n_text] = phones
            tone[row, :n_text] = item_tone
            language[row, :n_text] = item_lang
            bert[row, :, :n_text] = item_bert
            ja_bert[row, :, :n_text] = item_ja
            en_bert[row, :, :n_text] = item_en
            spec[row, :, :n_spec] = item_spec
            wav[row, :, :n_wav] = item_wav
            text_lengths[row], spec_lengths[row], wav_lengths[row] = n_text, n_spec, n_wav
            sid[row] = item_sid.reshape(-1)[0] if isinstance(item_sid, Tensor) else int(item_sid)

        out = Batch(
            text, text_lengths, spec, spec_lengths, wav, wav_lengths, sid, tone, language, bert, ja_bert, en_bert
        )
        return (out, ids_sorted_decreasing) if self.return_ids else out


# --------------------------------------------------------------------------------------------- sampler


def _default_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """Fill in world size and rank from torch.distributed when initialised, else a single process."""
    distributed = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if distributed else 1
    if rank is None:
        rank = dist.get_rank() if distributed else 0
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be at least 1, got {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is outside [0, {num_replicas - 1}]")
    return num_replicas, rank


class DistributedBucketSampler(Sampler[list[int]]):
    """Yields batches of dataset indices whose lengths fall into the same bucket.

    Bucket i holds the items with ``boundaries[i] < length <= boundaries[i + 1]``; items outside all buckets
    are never sampled (logged once as a warning). Empty buckets are dropped together with their upper
    boundary, so ``self.boundaries`` may be shorter than the list passed in (which is not modified).

    Each bucket is padded, by repeating its own indices, to a multiple of ``batch_size · num_replicas`` so every
    rank gets the same number of full batches. Per epoch, with a generator seeded by the epoch number: each
    bucket's order is a random permutation, rank r takes every ``num_replicas``-th index starting at r, cuts it
    into batches, and the batch order is permuted again. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        boundaries: Sequence[int],
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(boundaries) < 2 or any(a >= b for a, b in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be at least two strictly increasing values, got {list(boundaries)}")
        self.num_replicas, self.rank = _default_replicas(num_replicas, rank)
        self.dataset = dataset
        self.lengths = list(dataset.lengths)
        self.batch_size = batch_size
        self.boundaries = list(boundaries)
        self.shuffle = shuffle
        self.epoch = 0

        self.buckets, self.num_samples_per_bucket = self._create_buckets()
        self.total_size = sum(self.num_samples_per_bucket)
        self.num_samples = self.total_size // self.num_replicas

    def _bucket_index(self, length: int) -> int:
        """Index of the bucket (boundaries[i], boundaries[i + 1]] holding ``length``, or -1."""
        upper = bisect.bisect_left(self.boundaries, length)  # first boundary >= length
        return upper - 1 if 1 <= upper < len(self.boundaries) else -1

    def _create_buckets(self) -> tuple[list[list[int]], list[int]]:
        buckets: list[list[int]] = [[] for _ in range(len(self.boundaries) - 1)]
        outside = 0
        for index, length in enumerate(self.lengths):
            bucket = self._bucket_index(length)
            if bucket < 0:
                outside += 1
            else:
                buckets[bucket].append(index)
        if outside:
            logger.warning(
                "%d of %d clips have a length outside the bucket boundaries (%d, %d] and will never be sampled",
                outside,
                len(self.lengths),
                self.boundaries[0],
                self.boundaries[-1],
            )

        # Drop empty buckets from the top down, each with its upper boundary (the reference's bookkeeping).
        for i in range(len(buckets) - 1, -1, -1):
            if not buckets[i]:
                buckets.pop(i)
                self.boundaries.pop(i + 1)
        if not buckets:
            raise ValueError(
                f"no clip length falls inside the bucket boundaries {list(self.boundaries)}: "
                f"the dataset's lengths range from {min(self.lengths, default=0)} to {max(self.lengths, default=0)}"
            )

        per_step = self.batch_size * self.num_replicas
        num_samples_per_bucket = [len(b) + (-len(b)) % per_step for b in buckets]
        return buckets, num_samples_per_bucket

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _bucket_orders(self, generator: torch.Generator) -> list[list[int]]:
        if self.shuffle:
            return [torch.randperm(len(bucket), generator=generator).tolist() for bucket in self.buckets]
        return [list(range(len(bucket))) for bucket in self.buckets]

    def _rank_batches(self, bucket: list[int], order: list[int], padded_size: int) -> list[list[int]]:
        # Pad to padded_size by cycling through the permutation, then keep this rank's share.
        repeated = (order * (padded_size // len(order) + 1))[:padded_size]
        mine = repeated[self.rank :: self.num_replicas]
        return [
            [bucket[k] for k in mine[start : start + self.batch_size]]
            for start in range(0, len(mine) - self.batch_size + 1, self.batch_size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator()
        generator.manual_seed(self.epoch)
        orders = self._bucket_orders(generator)
        batches: list[list[int]] = []
        for bucket, order, padded in zip(self.buckets, orders, self.num_samples_per_bucket):
            batches.extend(self._rank_batches(bucket, order, padded))
        # The indices carry the epoch to the dataset (its per-item noise seed), also into worker processes.
        batches = [[EpochIndex(index, self.epoch) for index in batch] for batch in batches]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        self.batches = batches
        return iter(batches)

    def __len__(self) -> int:
        return self.num_samples // self.batch_size
