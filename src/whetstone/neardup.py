"""Near-duplicates: the one definition that curation's dedup and split and the gate's leakage
rule share, so a split curation made is never refused by the gate for a pair curation could
not see.

Two texts are
- an *exact* duplicate when their `dedup_key_text` is equal (unicode form, case and spacing
  ignored);
- a *near* duplicate when the Jaccard similarity of their character `SHINGLE`-grams (of the
  key text) reaches a threshold (`THRESHOLD` unless the caller sets one).

The answer never rests on a MinHash estimate: small sets are compared pair by pair, large ones
find candidates with MinHash LSH at a lower threshold (LSH misses some pairs near its own
threshold) and every candidate is confirmed with the exact Jaccard.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from whetstone.progress import track
from whetstone.records import Input

SHINGLE = 5  # characters per shingle
NUM_PERM = 128  # MinHash permutations (candidates only: the answer is the exact Jaccard)
THRESHOLD = 0.8  # the default Jaccard at which two texts are near duplicates
# Beyond this many pairs to compare, find candidates with LSH instead of trying them all.
ALL_PAIRS_LIMIT = 200_000
# How far below the threshold LSH looks for candidates, but never below the floor: under a
# Jaccard of 0.5, LSH over templated text (addresses, orders) returns most of the corpus as
# candidates and the exact check turns quadratic (10k templated records: 41 s at 0.3 against
# 3 s at 0.5, for 4% more near pairs between 0.5 and 0.55). Pairs at the gate's 0.8 are found
# either way.
_LSH_SLACK = 0.2
_LSH_FLOOR = 0.5
_SPACES = re.compile(r"\s+")

# Signatures of the texts, in order, when the caller keeps them (curation caches them).
Signatures = Callable[[], Sequence[Any]]


def dedup_key_text(text: str) -> str:
    """The text two inputs are compared by (and a record's split is hashed from): NFKC, case
    folded, runs of whitespace as one space."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def input_for_matching(inp: Input) -> str:
    """Everything the model reads of an input: the text, or every turn of a chat."""
    if isinstance(inp, str):
        return inp
    return "\n".join(m.content for m in inp)


def shingles(text: str) -> frozenset[str]:
    """The character shingles of a text's key text (the whole key when it is shorter)."""
    return _key_shingles(dedup_key_text(text))


def _key_shingles(t: str) -> frozenset[str]:
    if len(t) <= SHINGLE:
        return frozenset({t})
    return frozenset(t[i : i + SHINGLE] for i in range(len(t) - SHINGLE + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def similarity(a: str, b: str) -> float:
    """The Jaccard similarity of two texts' shingles."""
    return jaccard(shingles(a), shingles(b))


@dataclass(frozen=True)
class Match:
    """Text `i` duplicates text `j` (of the same list, or of the corpus it was matched with)."""

    i: int
    j: int
    kind: str  # "exact" or "near"
    jaccard: float


# ---------------------------------------------------------------- MinHash signatures


def _template() -> Any:
    from datasketch import MinHash

    # Permutations generated once and shared: building them per signature dominates otherwise.
    return MinHash(num_perm=NUM_PERM, seed=1, scheme="affine32")


def signature_values(texts: Iterable[str]) -> list[bytes]:
    """Each text's MinHash signature as bytes (what curation's feature cache stores)."""
    import numpy as np
    from datasketch import MinHash

    template = _template()
    out = []
    for text in track(texts, "minhash"):
        m = MinHash(
            seed=1,
            scheme="affine32",
            hashvalues=template.hashvalues,
            permutations=template.permutations,
        )
        m.update_batch([s.encode() for s in shingles(text)])
        out.append(m.hashvalues.astype(np.uint64).tobytes())
    return out


def signatures_from_values(values: Iterable[bytes]) -> list[Any]:
    import numpy as np
    from datasketch import MinHash

    template = _template()
    return [
        MinHash(
            seed=1,
            scheme="affine32",
            hashvalues=np.frombuffer(v, dtype=np.uint64),
            permutations=template.permutations,
        )
        for v in values
    ]


def _signatures(texts: Sequence[str], given: Signatures | None) -> Sequence[Any]:
    return given() if given is not None else signatures_from_values(signature_values(texts))


def _lsh(threshold: float) -> Any:
    from datasketch import MinHashLSH

    # A threshold set below the floor is searched at itself, never above it.
    floor = min(threshold, _LSH_FLOOR)
    return MinHashLSH(threshold=max(floor, threshold - _LSH_SLACK), num_perm=NUM_PERM)


# ---------------------------------------------------------------- finding duplicates


def pairs_within(
    texts: Sequence[str], threshold: float = THRESHOLD, signatures: Signatures | None = None
) -> list[Match]:
    """Duplicate pairs (i < j) within one list: each exact duplicate linked to the first text
    with its key, and every near pair of texts whose keys differ. A threshold of 1 or more
    finds exact duplicates only."""
    keys = [dedup_key_text(t) for t in texts]
    first: dict[str, int] = {}
    found: list[Match] = []
    for i, key in enumerate(keys):
        if key in first:
            found.append(Match(first[key], i, "exact", 1.0))
        else:
            first[key] = i
    n = len(texts)
    if n < 2 or threshold >= 1:
        return found
    sh = [_key_shingles(k) for k in keys]
    if n * (n - 1) // 2 <= ALL_PAIRS_LIMIT:
        later: Callable[[int], Iterable[int]] = lambda i: range(i + 1, n)  # noqa: E731
    else:
        sigs = _signatures(texts, signatures)
        lsh = _lsh(threshold)
        for i, m in enumerate(sigs):
            lsh.insert(i, m)
        later = lambda i: (j for j in sorted(lsh.query(sigs[i])) if j > i)  # noqa: E731
    # Row by row, so a large corpus shows a bar (templated text makes many candidates).
    for i in track(range(n), "near-duplicates"):
        for j in later(i):
            if keys[i] != keys[j]:
                jac = jaccard(sh[i], sh[j])
                if jac >= threshold:
                    found.append(Match(i, j, "near", round(jac, 4)))
    return found


class Clusters:
    """Union-find over positions: duplicate pairs joined into groups (each group's root is
    its lowest position, so the groups come out in a stable order)."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return list(out.values())


def groups(texts: Sequence[str], threshold: float = THRESHOLD) -> list[list[int]]:
    """The texts' positions in groups joined by exact or near duplicate pairs (chains join
    too): what a split keeps on one side."""
    uf = Clusters(len(texts))
    for m in pairs_within(texts, threshold):
        uf.union(m.i, m.j)
    return uf.groups()


def _candidates(
    queries: Sequence[str],
    corpus: Sequence[str],
    threshold: float,
    query_signatures: Signatures | None,
    corpus_signatures: Signatures | None,
) -> Callable[[int], Iterable[int]]:
    """The corpus positions worth comparing with query i: none when only exact duplicates
    count, all of them for small sets, else LSH candidates."""
    if threshold >= 1:
        return lambda i: ()
    if len(queries) * len(corpus) <= ALL_PAIRS_LIMIT:
        everything = range(len(corpus))
        return lambda i: everything
    lsh = _lsh(threshold)
    for j, m in enumerate(_signatures(corpus, corpus_signatures)):
        lsh.insert(j, m)
    found = [sorted(lsh.query(m)) for m in _signatures(queries, query_signatures)]
    return found.__getitem__


def best_matches(
    queries: Sequence[str],
    corpus: Sequence[str],
    threshold: float = THRESHOLD,
    query_signatures: Signatures | None = None,
    corpus_signatures: Signatures | None = None,
) -> list[Match]:
    """For each query that duplicates a corpus text, its best match (i: query, j: corpus): an
    exact duplicate if there is one, else the most similar near duplicate."""
    if not queries or not corpus:
        return []
    corpus_keys = [dedup_key_text(t) for t in corpus]
    by_key: dict[str, int] = {}
    for j, key in enumerate(corpus_keys):
        by_key.setdefault(key, j)
    corpus_sh = [] if threshold >= 1 else [_key_shingles(k) for k in corpus_keys]
    candidates = _candidates(queries, corpus, threshold, query_signatures, corpus_signatures)
    out: list[Match] = []
    for i, text in enumerate(track(queries, "near-duplicates")):
        key = dedup_key_text(text)
        if key in by_key:
            out.append(Match(i, by_key[key], "exact", 1.0))
            continue
        sh = _key_shingles(key)
        best: tuple[float, int] | None = None
        for j in candidates(i):
            jac = jaccard(sh, corpus_sh[j])
            if jac >= threshold and (best is None or jac > best[0]):
                best = (jac, j)
        if best is not None:
            out.append(Match(i, best[1], "near", round(best[0], 4)))
    return out
