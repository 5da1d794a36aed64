"""The dataset review page: its list edits in-process, and ``python3 webui.py --dataset LIST`` as a real server
driven by headless Chromium (edit a clip, reload, see it saved; delete one)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile
from served_voices import wait_until_answering
from test_webui import browser  # noqa: F401 - the headless Chromium fixture (skips or fails as test_webui says)
from train_tiny import free_port

import dataset_review

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_RAW = REPO_ROOT / "demo" / "raw"
STARTUP_TIMEOUT = 240.0
ORIGINAL = [
    ("spk0", "EN", "The morning train was late again."),
    ("spk0", "ZH", "今天早上天气很好。"),
    ("spk1", "JP", "きょうは とても いい てんき です。"),
]


def write_list(folder: Path) -> Path:
    """Three real clips and their list, paths relative to the list's folder (as a moved dataset has them)."""
    lines = []
    for i, (speaker, language, text) in enumerate(ORIGINAL):
        source = sorted((DEMO_RAW / speaker).glob(f"{language.lower()[:2]}_*.flac"))[0]
        audio, rate = soundfile.read(source, dtype="int16")
        clip = folder / "sliced" / speaker / f"take_{i:04d}.wav"
        clip.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(clip, audio, rate)
        lines.append(f"sliced/{speaker}/take_{i:04d}.wav|{speaker}|{language}|{text}\n")
    list_path = folder / "esd.list"
    list_path.write_text("".join(lines), encoding="utf-8")
    return list_path


def test_edits_are_atomic_saves_with_a_backup_of_the_original(tmp_path: Path) -> None:
    list_path = write_list(tmp_path)
    original = list_path.read_text(encoding="utf-8")
    first = dataset_review.read_entries(list_path)[1]
    dataset_review.update_entry(list_path, 1, first.path, " spk1 ", "JP", "  new\ntext ")
    assert dataset_review.read_entries(list_path)[1] == dataset_review.Entry(first.path, "spk1", "JP", "new text")
    backup = tmp_path / "esd.list.orig"
    assert backup.read_text(encoding="utf-8") == original
    assert dataset_review.delete_entry(list_path, 0, "sliced/spk0/take_0000.wav") == 2
    assert backup.read_text(encoding="utf-8") == original  # the first original, never overwritten
    assert [e.text for e in dataset_review.read_entries(list_path)] == ["new text", ORIGINAL[2][2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["esd.list", "esd.list.orig", "sliced"]  # no temp files
    # The audio stays on disk and resolves relative to the list.
    assert dataset_review.load_audio(dataset_review.resolve_clip(list_path, first.path))[0] == 22050


def test_bad_edits_and_stale_lines_are_refused(tmp_path: Path) -> None:
    list_path = write_list(tmp_path)
    before = list_path.read_text(encoding="utf-8")
    path = dataset_review.read_entries(list_path)[0].path
    with pytest.raises(dataset_review.ReviewError, match="the text is empty"):
        dataset_review.update_entry(list_path, 0, path, "spk0", "EN", "   ")
    with pytest.raises(dataset_review.ReviewError, match="may not contain '|'"):
        dataset_review.update_entry(list_path, 0, path, "spk0", "EN", "a|b")
    with pytest.raises(dataset_review.ReviewError, match="language 'FR'"):
        dataset_review.update_entry(list_path, 0, path, "spk0", "FR", "bonjour")
    with pytest.raises(dataset_review.ReviewError, match="the list changed on disk: clip 2 is no longer"):
        dataset_review.update_entry(list_path, 1, path, "spk0", "EN", "hello")
    assert list_path.read_text(encoding="utf-8") == before and not (tmp_path / "esd.list.orig").exists()
    list_path.write_text(before + "only|three|fields\n", encoding="utf-8")
    with pytest.raises(dataset_review.ReviewError, match=r"esd\.list:4: expected path\|speaker\|LANG\|text"):
        dataset_review.read_entries(list_path)


@pytest.fixture(scope="module")
def review_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("review")
    list_path = write_list(folder)
    port = free_port()
    log = folder / "webui.log"
    command = [sys.executable, "webui.py", "--dataset", str(list_path), "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(folder / "gradio-tmp")}
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(process, f"{url}/config", log, "review page", STARTUP_TIMEOUT)
        yield url, list_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def test_browser_edit_reload_see_it_saved_then_delete(browser, review_server) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, list_path = review_server
    wait = WebDriverWait(browser, 120)

    def text_value() -> str:
        return browser.execute_script(
            "const box = document.querySelector('#review-text textarea'); return box && box.value"
        )

    def where() -> str:
        return browser.execute_script(
            "const md = document.querySelector('#review-where'); return md ? md.innerText : ''"
        )

    browser.get(url)
    wait.until(lambda _: text_value() == ORIGINAL[0][2])
    assert "clip 1 of 3" in where()
    wait.until(
        lambda d: d.execute_script("return !!document.querySelector('#review-audio audio, #review-audio [src]')")
    )
    browser.find_element(By.CSS_SELECTOR, "#review-next").click()
    wait.until(lambda _: text_value() == ORIGINAL[1][2] and "clip 2 of 3" in where())
    assert browser.execute_script("return document.querySelector('#review-goto input').value") == "2"

    box = browser.find_element(By.CSS_SELECTOR, "#review-text textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("今天天气很好。")
    language = browser.find_element(By.CSS_SELECTOR, "#review-language input")
    language.click()
    language.send_keys(Keys.CONTROL, "a")
    language.send_keys("JP")
    language.send_keys(Keys.ENTER)
    browser.find_element(By.CSS_SELECTOR, "#review-save").click()
    wait.until(lambda d: "saved clip 2" in d.find_element(By.CSS_SELECTOR, "#review-status").text)
    assert list_path.read_text(encoding="utf-8").splitlines()[1] == "sliced/spk0/take_0001.wav|spk0|JP|今天天气很好。"
    assert (list_path.parent / "esd.list.orig").read_text(encoding="utf-8").splitlines()[1].endswith(ORIGINAL[1][2])

    browser.get(url)  # a new page: everything it shows is read from disk again
    wait.until(lambda _: text_value() == ORIGINAL[0][2])
    browser.find_element(By.CSS_SELECTOR, "#review-next").click()
    wait.until(lambda _: text_value() == "今天天气很好。")
    assert browser.execute_script("return document.querySelector('#review-language input').value") == "JP"

    browser.find_element(By.CSS_SELECTOR, "#review-delete").click()
    wait.until(lambda d: "deleted sliced/spk0/take_0001.wav" in d.find_element(By.CSS_SELECTOR, "#review-status").text)
    assert [line.split("|")[3] for line in list_path.read_text(encoding="utf-8").splitlines()] == [
        ORIGINAL[0][2],
        ORIGINAL[2][2],
    ]
    wait.until(lambda _: "clip 2 of 2" in where() and text_value() == ORIGINAL[2][2])
    goto = browser.find_element(By.CSS_SELECTOR, "#review-goto input")
    goto.send_keys(Keys.CONTROL, "a")
    goto.send_keys("1", Keys.ENTER)
    wait.until(lambda _: "clip 1 of 2" in where() and text_value() == ORIGINAL[0][2])
