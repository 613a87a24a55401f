"""The search query language, the exact matcher and snippets, the same on every backend.

Each backend's native full-text index (PostgreSQL GIN over ``tsvector``, InnoDB ``FULLTEXT``,
SQLite FTS5) tokenizes text its own way: it splits at other characters, folds case with other
tables and skips short or common words. So the index only narrows the candidates (it is asked
for a superset, see the ``*_terms`` helpers), and :meth:`Query.matches` decides, in Python,
by one definition:

- a *word* is a maximal run of Unicode letters, digits and ``_`` (``order_id`` is one word,
  ``don't`` is two: ``don`` and ``t``), compared case-insensitively (``str.lower``, with the
  Greek final sigma folded to the plain sigma);
- ``word``: the message has that word; ``"a phrase"``: those words next to each other;
  ``prefix*``: a word starting with ``prefix``; ``-word`` / ``-"a phrase"``: not that. All
  terms must hold.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InvalidInputError

if TYPE_CHECKING:
    import uuid

    from .records import Message

#: What a snippet puts around each matched word.
MARK_START = "**"
MARK_END = "**"
MAX_QUERY_CHARS = 1000
MAX_TERMS = 32
#: Words of context kept on each side of the first match in a snippet.
SNIPPET_CONTEXT_WORDS = 8

_WORD = re.compile(r"\w+")
_SIGMA = "\u03c3"
_FINAL_SIGMA = "\u03c2"
_WORD_ONLY = re.compile(r"\w+\Z")
_ACCEPTED = (
    'accepted forms: word (every word must match; letters, digits and _), "quoted phrase", '
    '-word or -"phrase" (must not match), prefix* (a word starting with prefix); '
    "separate terms with spaces, at least one term that is not excluded"
)


def fold(text: str) -> str:
    """Case-insensitive form of a word: lower case, final sigma as plain sigma."""
    return text.lower().replace(_FINAL_SIGMA, _SIGMA)


def words(text: str) -> list[str]:
    """The folded words of ``text`` in order."""
    return [fold(match.group()) for match in _WORD.finditer(text)]


@dataclass(frozen=True, slots=True)
class Term:
    """One term of a query: a word, a phrase (several words) or a prefix, maybe excluded."""

    words: tuple[str, ...]
    prefix: bool = False
    excluded: bool = False

    def describe(self) -> str:
        body = " ".join(self.words)
        body = f'"{body}"' if len(self.words) > 1 else body
        return f"{'-' if self.excluded else ''}{body}{'*' if self.prefix else ''}"

    def found_at(self, tokens: list[str]) -> list[int]:
        """Indexes of the tokens where this term (as if not excluded) matches."""
        first = self.words[0]
        if self.prefix:
            return [index for index, token in enumerate(tokens) if token.startswith(first)]
        size = len(self.words)
        return [
            index
            for index, token in enumerate(tokens)
            if token == first and tuple(tokens[index : index + size]) == self.words
        ]


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query; ``text`` is its canonical form (what a cursor is bound to)."""

    terms: tuple[Term, ...]

    @property
    def text(self) -> str:
        return " ".join(term.describe() for term in self.terms)

    @property
    def positive(self) -> tuple[Term, ...]:
        return tuple(term for term in self.terms if not term.excluded)

    def matches(self, content: str) -> bool:
        tokens = words(content)
        return all(bool(term.found_at(tokens)) != term.excluded for term in self.terms)

    def snippet(self, content: str) -> str:
        """A short piece of ``content`` around the first match, matched words marked."""
        spans = [match.span() for match in _WORD.finditer(content)]
        tokens = [fold(content[start:end]) for start, end in spans]
        marked: set[int] = set()
        for term in self.positive:
            for index in term.found_at(tokens):
                marked.update(range(index, index + (1 if term.prefix else len(term.words))))
        if not spans:
            return _squeeze(content[:160])
        first = min(marked) if marked else 0
        low = max(0, first - SNIPPET_CONTEXT_WORDS)
        high = min(len(spans) - 1, first + 2 * SNIPPET_CONTEXT_WORDS)
        start = 0 if low == 0 else spans[low][0]
        end = len(content) if high == len(spans) - 1 else spans[high][1]
        pieces: list[str] = []
        position = start
        for index in range(low, high + 1):
            if index not in marked:
                continue
            word_start, word_end = spans[index]
            pieces += [content[position:word_start], MARK_START, content[word_start:word_end]]
            pieces.append(MARK_END)
            position = word_end
        pieces.append(content[position:end])
        body = _squeeze("".join(pieces))
        return f"{'… ' if start > 0 else ''}{body}{' …' if end < len(content) else ''}"


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def parse_query(query: object) -> Query:
    """Parse the query language; anything else is ``InvalidInputError`` naming the forms."""
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a string; {_ACCEPTED}")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInputError(f"query is longer than {MAX_QUERY_CHARS} characters")
    if "\x00" in query:
        raise InvalidInputError(f"query contains NUL; {_ACCEPTED}")
    terms: list[Term] = []
    position, size = 0, len(query)
    while position < size:
        if query[position].isspace():
            position += 1
            continue
        excluded = query[position] == "-"
        start = position + 1 if excluded else position
        if start < size and query[start] == '"':
            close = query.find('"', start + 1)
            if close < 0:
                raise InvalidInputError(f"unclosed quote in query {query!r}; {_ACCEPTED}")
            phrase = tuple(words(unicodedata.normalize("NFC", query[start + 1 : close])))
            after = close + 1
            if not phrase or (after < size and not query[after].isspace()):
                raise InvalidInputError(
                    f"cannot read {query[position : after + 1]!r} in query; {_ACCEPTED}"
                )
            terms.append(Term(phrase, excluded=excluded))
            position = after
            continue
        end = start
        while end < size and not query[end].isspace():
            end += 1
        raw = query[start:end]
        prefix = raw.endswith("*")
        body = unicodedata.normalize("NFC", raw[:-1] if prefix else raw)
        if not _WORD_ONLY.match(body):
            raise InvalidInputError(f"cannot read {query[position:end]!r} in query; {_ACCEPTED}")
        terms.append(Term((fold(body),), prefix=prefix, excluded=excluded))
        position = end
    if not terms or all(term.excluded for term in terms):
        raise InvalidInputError(f"query {query!r} has nothing to find; {_ACCEPTED}")
    if len(terms) > MAX_TERMS:
        raise InvalidInputError(f"query has more than {MAX_TERMS} terms")
    return Query(tuple(terms))


# ---------------------------------------------------------------------- native prefilters
# Each returns what the index is asked for: only terms it is sure to contain for every
# message the exact matcher accepts. Excluded terms are never sent (an index that splits
# words differently could exclude a message that the matcher keeps).


def _pieces(word: str, keep: str = "") -> list[str]:
    """``word`` split where an index tokenizer may split: anything but letters and decimal
    digits (and the characters in ``keep``)."""
    out: list[str] = []
    current: list[str] = []
    for char in word:
        if char.isalpha() or unicodedata.category(char) == "Nd" or char in keep:
            current.append(char)
        elif current:
            out.append("".join(current))
            current = []
    if current:
        out.append("".join(current))
    return out


def sqlite_match(query: Query) -> str | None:
    """An FTS5 MATCH expression (every word quoted, so no FTS5 syntax can be injected)."""
    parts: list[str] = []
    for term in query.positive:
        for index, word in enumerate(term.words):
            parts.append(f'"{word}"' + ("*" if term.prefix and index == 0 else ""))
    return " AND ".join(parts) or None


def postgres_tsquery(query: Query) -> str | None:
    """A ``to_tsquery('simple', ...)`` text over the words as the index splits them."""
    parts: list[str] = []
    for term in query.positive:
        for word in term.words:
            pieces = _pieces(word)
            for index, piece in enumerate(pieces):
                star = ":*" if term.prefix and index == len(pieces) - 1 else ""
                forms = [piece]
                if piece.endswith(_SIGMA):
                    # PostgreSQL keeps a final sigma as written.
                    forms.append(piece[:-1] + _FINAL_SIGMA)
                alternatives = " | ".join(f"'{form}'{star}" for form in forms)
                parts.append(f"({alternatives})" if len(forms) > 1 else alternatives)
    return " & ".join(parts) or None


#: InnoDB's built-in stopword list (INFORMATION_SCHEMA.INNODB_FT_DEFAULT_STOPWORD).
INNODB_STOPWORDS = frozenset(
    ("a", "about", "an", "are", "as", "at", "be", "by", "com", "de", "en", "for", "from",
     "how", "i", "in", "is", "it", "la", "of", "on", "or", "that", "the", "this", "to",
     "was", "what", "when", "where", "who", "will", "with", "und", "www")
)  # fmt: skip


def mysql_terms(query: Query, min_size: int, max_size: int) -> tuple[str | None, list[str]]:
    """A boolean-mode AGAINST text over the words the index holds, and LIKE patterns for
    when it holds none of them (short words, stopwords): then the scan filters exactly."""
    against: list[str] = []
    likes: list[str] = []
    for term in query.positive:
        for index, word in enumerate(term.words):
            prefix = term.prefix and index == 0
            indexable = (
                min_size <= len(word) <= max_size
                and word not in INNODB_STOPWORDS
                and all(ord(char) < 0x10000 for char in word)
                and _pieces(word, "_") == [word]
            )
            if indexable:
                against.append(f"+{word}*" if prefix else f"+{word}")
            likes.append("%" + _like_escape(word) + "%")
    return (" ".join(against) or None), likes


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True, slots=True)
class MessageHit:
    """One search result: the message, its session, a rank and a snippet.

    ``rank`` orders the hits of one query on one backend (higher is more relevant); its
    scale is the backend's own. ``snippet`` is a short piece of the content around the
    first match with each matched word between ``**`` marks.
    """

    message: Message
    session_id: uuid.UUID
    session_title: str | None
    rank: float
    snippet: str
