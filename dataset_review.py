"""Review page for a transcription list (``path|speaker|LANG|text``, as transcribe.py writes it), in Gradio.

    python3 webui.py --dataset Data/mine/filelists/esd.list          # http://127.0.0.1:7860 (webui.host/port)
    python3 dataset_review.py --dataset esd.list --port 7861

Page through the clips one at a time, play each, correct its text, language and speaker, or delete it from the
list. Every change is written to the list at once, atomically (a reader never sees half a file), and the first
change keeps the list as it was in ``<list>.orig`` (never overwritten afterwards). The page reads the list from
disk for every action, so a change made elsewhere is seen; an edit aimed at a line that has meanwhile moved is
refused instead of landing on another clip.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

import atomic_io

logger = logging.getLogger(__name__)

LANGUAGE_CHOICES = ("ZH", "JP", "EN")
BACKUP_SUFFIX = ".orig"


class ReviewError(ValueError):
    """An edit that cannot be applied (bad field, stale line); the message is shown on the page."""


@dataclass(frozen=True)
class Entry:
    path: str
    speaker: str
    language: str
    text: str

    def line(self) -> str:
        return f"{self.path}|{self.speaker}|{self.language}|{self.text}\n"


def read_entries(list_path: Path) -> list[Entry]:
    """Every non-blank line; a line without four fields is an error naming ``file:line``."""
    entries = []
    for number, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 4:
            raise ReviewError(f"{list_path}:{number}: expected path|speaker|LANG|text, got {len(fields)} field(s)")
        entries.append(Entry(*fields))
    return entries


def write_entries(list_path: Path, entries: Sequence[Entry]) -> None:
    """Replace the list atomically, keeping the original in ``<list>.orig`` the first time."""
    backup = list_path.with_name(list_path.name + BACKUP_SUFFIX)
    if not backup.exists():
        atomic_io.atomic_write_bytes(backup, list_path.read_bytes())
    atomic_io.atomic_write_text(list_path, "".join(entry.line() for entry in entries))


def checked_field(name: str, value: str) -> str:
    value = " ".join(str(value or "").split())  # one line, no stray spaces
    if not value:
        raise ReviewError(f"the {name} is empty")
    if "|" in value:
        raise ReviewError(f"the {name} may not contain '|' (the list's separator)")
    return value


def _entry_at(entries: Sequence[Entry], index: int, expected_path: str) -> Entry:
    if not 0 <= index < len(entries) or entries[index].path != expected_path:
        raise ReviewError(f"the list changed on disk: clip {index + 1} is no longer {expected_path}; reload the page")
    return entries[index]


def update_entry(list_path: Path, index: int, expected_path: str, speaker: str, language: str, text: str) -> Entry:
    entries = read_entries(list_path)
    entry = _entry_at(entries, index, expected_path)
    if language not in LANGUAGE_CHOICES:
        raise ReviewError(f"language {language!r}: choose one of {', '.join(LANGUAGE_CHOICES)}")
    new = replace(entry, speaker=checked_field("speaker", speaker), language=language, text=checked_field("text", text))
    if new != entry:
        entries[index] = new
        write_entries(list_path, entries)
    return new


def delete_entry(list_path: Path, index: int, expected_path: str) -> int:
    """Remove the line; returns how many remain. The clip's audio file stays where it is."""
    entries = read_entries(list_path)
    _entry_at(entries, index, expected_path)
    del entries[index]
    write_entries(list_path, entries)
    return len(entries)


def resolve_clip(list_path: Path, clip: str) -> Path:
    """A list path as written (absolute, or relative to where the tools ran), else relative to the list."""
    path = Path(clip)
    if path.is_absolute() or path.exists():
        return path
    return list_path.parent / path


def load_audio(path: Path) -> tuple[int, np.ndarray] | None:
    import soundfile

    try:
        audio, rate = soundfile.read(path, dtype="int16")
    except (RuntimeError, OSError):  # soundfile's LibsndfileError is a RuntimeError
        return None
    return rate, audio


# ----------------------------------------------------------------------------------------------------- the page


def build_review_app(list_path: Path) -> Any:
    import gradio as gr

    def show(index: int) -> tuple[Any, ...]:
        """The page for clip ``index`` (clamped into the list), read from disk now."""
        entries = read_entries(list_path)
        if not entries:
            empty = "The list is empty."
            return 0, "", gr.update(value=None), "", gr.update(value=None, choices=[]), "ZH", "", 1, empty
        index = min(max(int(index), 0), len(entries) - 1)
        entry = entries[index]
        speakers = sorted({e.speaker for e in entries})
        audio = load_audio(resolve_clip(list_path, entry.path))
        where = f"clip {index + 1} of {len(entries)}: `{entry.path}`"
        status = "" if audio is not None else f"cannot read the audio file {entry.path}"
        return (
            index,
            entry.path,
            audio,
            where,
            gr.update(value=entry.speaker, choices=speakers),
            entry.language,
            entry.text,
            index + 1,
            status,
        )

    def save(index: int, path: str, speaker: str, language: str, text: str) -> tuple[Any, ...]:
        try:
            update_entry(list_path, int(index), path, speaker, language, text)
        except ReviewError as error:
            raise gr.Error(str(error)) from error
        page = show(index)
        return (*page[:-1], f"saved clip {int(index) + 1}")

    def delete(index: int, path: str) -> tuple[Any, ...]:
        try:
            remaining = delete_entry(list_path, int(index), path)
        except ReviewError as error:
            raise gr.Error(str(error)) from error
        page = show(index)
        return (*page[:-1], f"deleted {path} from the list ({remaining} left)")

    with gr.Blocks(title=f"Review {list_path.name}") as app:
        gr.Markdown(
            f"## Review `{list_path}`\nEdits are saved to the list at once; the original is kept in `{list_path.name}{BACKUP_SUFFIX}`."
        )
        index = gr.State(0)
        path = gr.State("")
        where = gr.Markdown(elem_id="review-where")
        audio = gr.Audio(label="Clip", type="numpy", interactive=False, elem_id="review-audio")
        with gr.Row():
            speaker = gr.Dropdown(label="Speaker", allow_custom_value=True, elem_id="review-speaker")
            language = gr.Dropdown(
                label="Language", choices=list(LANGUAGE_CHOICES), value="ZH", elem_id="review-language"
            )
        text = gr.Textbox(label="Text", lines=2, elem_id="review-text")
        with gr.Row():
            previous = gr.Button("◀ Previous", elem_id="review-previous")
            following = gr.Button("Next ▶", elem_id="review-next")
            jump = gr.Number(label="Go to clip (Enter)", value=1, precision=0, minimum=1, elem_id="review-goto")
        with gr.Row():
            save_button = gr.Button("Save", variant="primary", elem_id="review-save")
            delete_button = gr.Button("Delete from list", variant="stop", elem_id="review-delete")
        status = gr.Markdown(elem_id="review-status")

        page = [index, path, audio, where, speaker, language, text, jump, status]
        app.load(show, inputs=index, outputs=page)
        previous.click(lambda i: show(int(i) - 1), inputs=index, outputs=page, api_name="previous")
        following.click(lambda i: show(int(i) + 1), inputs=index, outputs=page, api_name="next")
        jump.submit(lambda n: show(int(n or 1) - 1), inputs=jump, outputs=page, api_name="goto")
        save_button.click(save, inputs=[index, path, speaker, language, text], outputs=page, api_name="save")
        delete_button.click(delete, inputs=[index, path], outputs=page, api_name="delete")
    return app


def run(list_path: str, host: str | None = None, port: int | None = None, yml: str | None = None) -> int:
    """Serve the review page of ``list_path`` (host and port default to config.yml's webui section)."""
    import config
    import webui

    path = Path(list_path)
    try:
        read_entries(path)
        if host is None or port is None:
            settings = config.load_config(yml).webui
            host, port = host or settings.host, port or settings.port
    except (ReviewError, FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 2
    webui.serve(build_review_app(path), host, port)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Review a transcription list (path|speaker|LANG|text) in the browser")
    parser.add_argument("--dataset", required=True, help="the list to review, e.g. Data/mine/filelists/esd.list")
    parser.add_argument("--host", help="address to bind (default webui.host of config.yml, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default webui.port of config.yml, 7860)")
    parser.add_argument("--yml", help="global settings file (default $BV2_CONFIG or config.yml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before Gradio is imported: nothing may phone home
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return run(args.dataset, args.host, args.port, args.yml)


if __name__ == "__main__":
    sys.exit(main())
