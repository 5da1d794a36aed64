"""Accuracy of the "auto" language split (text.language_id) on the table in tests/language_id_cases.py.

Run from the repo root:  python3 bench/language_id.py [--show-errors]

Prints, for all cases and for the clear ones (see the table's notes): the share of sentences split exactly as
expected (same parts, same languages) and the share of letters labelled with the right language.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from language_id_cases import CASES, Case  # noqa: E402

from text.language_id import split_by_language  # noqa: E402


def letter_labels(parts: list[tuple[str, str]]) -> list[str]:
    """The language of every letter, in order (spaces, digits and punctuation are not counted)."""
    return [language for part, language in parts for char in part if char.isalpha()]


def score(cases: list[Case]) -> tuple[float, float, list[tuple[str, list, list]]]:
    """(sentence accuracy, letter accuracy, errors as (text, expected, got))."""
    exact = letters_right = letters_total = 0
    errors = []
    for text, expected, _clear in cases:
        got = split_by_language(text)
        if got == expected:
            exact += 1
        else:
            errors.append((text, expected, got))
        want, have = letter_labels(expected), letter_labels(got)
        letters_total += len(want)
        letters_right += sum(a == b for a, b in zip(want, have)) if len(want) == len(have) else 0
    return exact / len(cases), letters_right / max(letters_total, 1), errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show-errors", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    split_by_language("warm-up 预热")  # builds the lingua detector once
    warm = time.perf_counter() - start
    start = time.perf_counter()
    rows = [("all", CASES), ("clear", [case for case in CASES if case[2]])]
    results = [(name, len(cases), *score(cases)) for name, cases in rows]
    elapsed = time.perf_counter() - start
    print(f"{'cases':<8}{'n':>4}{'sentences exact':>18}{'letters right':>16}")
    for name, n, sentences, letters, _errors in results:
        print(f"{name:<8}{n:>4}{sentences:>18.1%}{letters:>16.1%}")
    print(f"detector load {warm * 1000:.0f} ms; {elapsed / len(CASES) * 1000:.2f} ms per sentence")
    if args.show_errors:
        for text, expected, got in results[0][4]:
            print(f"  {text!r}\n    expected {expected}\n    got      {got}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
