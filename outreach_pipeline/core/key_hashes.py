"""Sets of addresses kept as 64-bit hashes: what an import has seen in its file, what the campaign already
holds, what the owner suppressed.

8 bytes an address, where a set of the strings held about 120 MB per million and grew with the file.
Python's string hash (SipHash, keyed per process) collides for two of a million addresses about once in
40 million imports; the row would be refused (as a duplicate, already in the campaign, or suppressed) in
the rejects report, not lost unseen.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd


def key_hashes(keys: pd.Series | Iterable[str]) -> np.ndarray:
    """The hash of each key (lower-cased addresses), as int64."""
    values = keys.to_numpy(dtype=object) if isinstance(keys, pd.Series) else list(keys)
    return np.fromiter(map(hash, values), dtype=np.int64, count=len(values))


class HashedKeys:
    """A growing set of key hashes: sorted runs, merged when there are more than a few."""

    MERGE_AFTER = 8  # sorted runs kept before they are merged into one

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """A mask: which of `hashes` are in the set."""
        found = np.zeros(len(hashes), dtype=bool)
        if not self.runs:
            return found
        # Looked up in ascending order: each search starts where the previous one ended, which halves the
        # cache misses in a run of a million.
        order = np.argsort(hashes)
        ascending = hashes[order]
        for run in self.runs:
            at = np.searchsorted(run, ascending).clip(max=len(run) - 1)
            found[order] |= run[at] == ascending
        return found

    def add(self, hashes: np.ndarray) -> None:
        if len(hashes):
            self.runs.append(np.sort(hashes))
        if len(self.runs) > self.MERGE_AFTER:
            # Stable sort is timsort here, which merges the sorted runs: several times faster than quicksort.
            self.runs = [np.sort(np.concatenate(self.runs), kind="stable")]
