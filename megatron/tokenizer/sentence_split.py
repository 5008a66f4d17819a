"""A regex sentence splitter for --split-sentences (no NLTK data needed).

A sentence ends at terminal punctuation (".", "!", "?", "…", "...", and the CJK "。！？"),
optionally followed by closing quotes/brackets/emphasis marks, when whitespace and then the start
of a new sentence (optional opening quotes/brackets, then an upper-case letter or a digit) come
next. CJK terminal punctuation needs neither. A blank line (paragraph break) always ends a
sentence. A "." does not end a sentence after:

* a known abbreviation (Mr., Mrs., Dr., St., e.g., i.e., viz., ...; see ``ABBREVIATIONS``), or
  "No."/"p."/"vol."/... when a number follows;
* an initial ("J. Smith") or a dotted abbreviation ("U.S.", "a.m.");
* a list marker that would otherwise be a sentence of its own ("1. The first ...").

Decimals ("3.14") and ellipses inside a sentence are never split because no whitespace plus
sentence start follows them. The sentences are substrings of the text, in order, separated only
by whitespace, so joining them with the original separators gives back the text.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import regex

ABBREVIATIONS = frozenset(
    """mr mrs ms messrs mme mlle dr drs st prof rev revd hon col capt gen lt sgt maj cmdr adm gov
    sen rep fr sr jr mt ft vs viz cf ca approx dept est inc ltd co corp bros""".split()
)
"""Lower-cased words that a following "." never ends a sentence after ("Mr. Woodhouse")."""

NUMBER_ABBREVIATIONS = frozenset("no nos p pp vol vols ch chap sec art fig figs op".split())
"""Lower-cased words that a "." does not end a sentence after when a number follows ("No. 5")."""

_CLOSERS = r"[\"'\u201d\u2019\u00bb)\]}_*]*"
_OPENERS = r"[\"'\u201c\u2018\u00ab(\[{_*]*"
_SENTENCE_START = rf"{_OPENERS}(?P<next>[\p{{Lu}}\p{{Lt}}\p{{N}}])"
# Latin terminal punctuation needs whitespace + a sentence start after it; CJK needs neither.
_BOUNDARY = regex.compile(
    rf"(?P<punct>[.!?\u2026]+){_CLOSERS}(?P<gap>\s+)(?={_SENTENCE_START})"
    rf"|(?P<punct>[\u3002\uff01\uff1f]+){_CLOSERS}(?P<gap>\s*)(?=\S)"
)
_PARAGRAPH_BREAK = regex.compile(r"(?P<gap>[^\S\n]*\n[^\S\n]*\n\s*)")
_OPENERS_ONLY = regex.compile(_OPENERS)
_DOTTED = regex.compile(r"(?:\p{L}\.)+\p{L}")
_LIST_MARKER = regex.compile(r"\d{1,3}|[ivxlcdm]{1,4}|[IVXLCDM]{1,4}|\p{L}")


def _previous_word(text: str, end: int) -> Tuple[str, int]:
    """The word (letters/digits, inner dots allowed) that ends at ``end``, and its start; "" when
    the text before ``end`` ends otherwise (e.g. in a quote). "cheerful--Mr" gives "Mr"."""
    start = end
    while start > 0:
        char = text[start - 1]
        inner_dot = char == "." and start < end and text[start - 2 : start - 1].isalnum()
        if char.isalnum() or inner_dot:
            start -= 1
        else:
            break
    return text[start:end], start


def _is_abbreviation(text: str, match: regex.Match, sentence_start: int) -> bool:
    """True when the "." of ``match`` belongs to a word rather than ending a sentence."""
    if match.group("punct") != ".":
        return False
    word, word_start = _previous_word(text, match.start("punct"))
    if not word:
        return False
    lowered = word.lower()
    if lowered in ABBREVIATIONS:
        return True
    if lowered in NUMBER_ABBREVIATIONS and match.group("next").isdigit():
        return True
    if len(word) == 1 and word.isalpha() and word != "I":
        return True  # an initial: "J. Smith"
    if _DOTTED.fullmatch(word):
        return True  # "e.g", "U.S", "a.m"
    before = text[sentence_start:word_start].strip()
    return _OPENERS_ONLY.fullmatch(before) is not None and bool(_LIST_MARKER.fullmatch(word))


def sentence_spans(text: str) -> List[Tuple[int, int]]:
    """(start, end) character offsets of the sentences of ``text``, without surrounding
    whitespace, in order; everything between two spans is whitespace."""
    breaks: Dict[int, int] = {}  # end of sentence -> start of the next one
    sentence_start = len(text) - len(text.lstrip())
    candidates = sorted(
        [(m.start("gap"), m.end("gap"), m) for m in _BOUNDARY.finditer(text)]
        + [(m.start("gap"), m.end("gap"), None) for m in _PARAGRAPH_BREAK.finditer(text)],
        key=lambda c: c[0],
    )
    for end, next_start, match in candidates:
        if end <= sentence_start or next_start >= len(text):
            continue
        if match is not None and _is_abbreviation(text, match, sentence_start):
            continue
        breaks[end] = max(next_start, breaks.get(end, next_start))
        sentence_start = breaks[end]
    spans = []
    start = len(text) - len(text.lstrip())
    for end in sorted(breaks):
        if end > start:
            spans.append((start, end))
        start = breaks[end]
    end = len(text.rstrip())
    if end > start:
        spans.append((start, end))
    return spans


def split_sentences(text: str, keep_newlines: bool = False) -> List[str]:
    """Split ``text`` into sentences.

    Args:
        text: any text; newlines inside a sentence stay in it.
        keep_newlines: keep the whitespace that follows each sentence (including newlines) at
            its end, as Megatron's --keep-newlines does, so "".join(result) equals the text
            without its leading whitespace. Otherwise sentences carry no surrounding whitespace.

    Returns:
        The sentences, in order; [] for empty or all-whitespace text.
    """
    spans = sentence_spans(text)
    if not keep_newlines:
        return [text[s:e] for s, e in spans]
    starts = [s for s, _ in spans[1:]] + [len(text)]
    return [text[s:nxt] for (s, _), nxt in zip(spans, starts)]
