"""Step 3, PII redaction: e-mail addresses, phone numbers, payment card numbers (Luhn-checked),
IBANs (mod-97 checked) and IP addresses become typed placeholders such as `<EMAIL>`.

Checksums keep order numbers and dates from being mistaken for cards and IBANs; phone numbers
need 9 to 15 digits (or a leading +), so dates and short codes stay as they are, and a
ZIP+4 code is not a phone number.

What is redacted depends on the task's kind, so that the text a model is trained on (the
snapshot's, see `snapshots`) never disagrees with what evaluation scores it against and what
serving will ask of it:
- generate: inputs and references alike (a reply learns to write `<EMAIL>`, and is scored
  against a reference that says `<EMAIL>`);
- classify: inputs only (a label is never PII);
- extract: references never, and in inputs only the PII the reference does not hold. A value
  the task extracts (a phone number in a `phone` field) is its target: redacted, the model
  would learn to answer `<PHONE>`, which serving returns for a real number and evaluation of
  the real reference scores wrong. PII the task does not extract is redacted as usual.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

from whetstone.curate.state import Run
from whetstone.records import Kind

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "card": "<CARD>",
    "iban": "<IBAN>",
    "ip": "<IP>",
}

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?!\w)"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _card(m: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", m.group())
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _ipv6(m: re.Match[str]) -> bool:
    try:
        ipaddress.IPv6Address(m.group())
    except ValueError:
        return False
    return True


def _ipv4(m: re.Match[str]) -> bool:
    return all(int(p) <= 255 for p in m.group().split("."))


# A US ZIP+4 code ("62704-1234", "627041234") has 9 digits like many national phone numbers;
# addresses are full of them, and redacting one would corrupt the very field a task extracts.
_ZIP4 = re.compile(r"\d{5}[ -]?\d{4}")


def _phone(m: re.Match[str]) -> bool:
    text = m.group()
    digits = re.sub(r"\D", "", text)
    if text.startswith("+"):
        return 7 <= len(digits) <= 15
    return 9 <= len(digits) <= 15 and not _ZIP4.fullmatch(text)


# Most specific first: an IBAN or a card number also looks like a phone number.
_DETECTORS: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool]]] = [
    ("email", _EMAIL, lambda m: True),
    ("iban", _IBAN, lambda m: iban_ok(m.group())),
    ("card", _CARD, _card),
    ("ip", _IPV6, _ipv6),
    ("ip", _IPV4, _ipv4),
    ("phone", _PHONE, _phone),
]


def _alnum(text: str) -> str:
    return re.sub(r"[\W_]", "", text).casefold()


def redact(
    text: str, types: tuple[str, ...] | list[str] = tuple(PLACEHOLDERS), keep: str = ""
) -> tuple[str, Counter[str]]:
    """The text with PII replaced by placeholders, and how many of each type were found.
    PII that `keep` holds (compared on letters and digits only, so "(415) 555-2671" is held by
    "4155552671") stays as it is."""
    counts: Counter[str] = Counter()
    kept = _alnum(keep)
    for kind, rx, valid in _DETECTORS:
        if kind not in types:
            continue

        def sub(
            m: re.Match[str], kind: str = kind, valid: Callable[[re.Match[str]], bool] = valid
        ) -> str:
            if not valid(m) or (kept and _alnum(m.group()) in kept):
                return m.group()
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = rx.sub(sub, text)
    return text, counts


def run(ctx: Run) -> None:
    types = ctx.config.pii_types
    extract = ctx.task.kind == Kind.extract
    total: Counter[str] = Counter()
    for row in ctx.rows:
        found: Counter[str] = Counter()
        # An extract reference's values are the task's targets: never redacted, anywhere.
        keep = row.reference if extract else ""

        def one(text: str, found: Counter[str] = found, keep: str = keep) -> str:
            out, n = redact(text, types, keep)
            found.update(n)
            return out

        new_input = row.map_input(one)
        new_ref = row.reference if ctx.task.kind != Kind.generate else one(row.reference)
        if found:
            row.input, row.reference = new_input, new_ref
            total.update(found)
            ctx.decide(row, "redacted", "PII redacted", counts=dict(found))
    if total:
        ctx.note("redacted " + ", ".join(f"{n} {k}" for k, n in sorted(total.items())))
    ctx.card["pii"] = dict(total)
