"""Duplicate photos: perceptual hash, groups, and the conflicting-grade policy, as pure functions.

Public fundus sets hold the same photo more than once (APTOS 2019 has re-encoded, resized copies,
some with different grades). A copy in train and another in validation inflates every metric, so
the builders hash every photo, group near-identical ones, keep each group in one split and apply
a policy to groups whose grades disagree. Nothing here reads files or holds state.

Example:

```python
import numpy as np
from eyegazer_datasets.common import duplicates

image = np.zeros((64, 64, 3), np.uint8)
image[16:48, 16:48] = 200
h = duplicates.phash64(image)
groups = duplicates.group_duplicates({"a": h, "b": h, "c": h ^ 0xFFFF}, max_distance=8)
assert groups == [["a", "b"]]
```
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import scipy.fft

CONFLICT_POLICIES = ("keep", "drop", "majority")
DEFAULT_MAX_DISTANCE = 8
# A hash match is confirmed when the 32x32 grey thumbnails differ by at most this mean absolute
# grey level: fundus photos look alike, so a near hash alone could join two different eyes.
DEFAULT_MAX_THUMB_DIFF = 3.0


def grey_thumbnail(image: np.ndarray) -> np.ndarray:
    """Block-averages an RGB image (sides multiples of 32) to a `float32 [32, 32]` grey image."""
    grey = np.asarray(image, np.float64).mean(axis=-1)
    h, w = grey.shape
    return grey.reshape(32, h // 32, 32, w // 32).mean(axis=(1, 3)).astype(np.float32)


def phash64(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash (pHash) of an RGB `uint8` image.

    Grey levels are block-averaged to 32x32, transformed with a 2-D DCT-II, and each of the 64
    lowest-frequency coefficients becomes one bit: set when above their median. Re-encoded
    or resized copies of a photo get the same (or a very close) hash.

    Args:
        image: `uint8 [H, W, 3]` with H and W multiples of 32 (e.g. 64x64).

    Returns:
        The hash as a Python int (use `f"{h:016x}"` for hex).
    """
    grey = grey_thumbnail(image).astype(np.float64)
    low = scipy.fft.dctn(grey, type=2, norm="ortho")[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(sum(1 << i for i, b in enumerate(bits[::-1]) if b))


def _union_find(ids: Sequence[str]):
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        a, b = find(a), find(b)
        if a != b:
            parent[max(a, b)] = min(a, b)

    return find, union


def group_duplicates(
    hashes: Mapping[str, int],
    max_distance: int,
    thumbs: Mapping[str, np.ndarray] | None = None,
    max_thumb_diff: float = float("inf"),
) -> list[list[str]]:
    """Groups ids whose 64-bit hashes differ in at most `max_distance` bits (union-find).

    Args:
        hashes: `{id: hash}`.
        max_distance: int. Hamming threshold (0 = identical hashes only).
        thumbs: `{id: float32 [32, 32]}`. When given, a hash match only counts when the
            thumbnails' mean absolute difference is at most `max_thumb_diff`.
        max_thumb_diff: float. Thumbnail confirmation threshold. Defaults to no limit.

    Returns:
        Groups of 2+ ids, each sorted, sorted by first id.
    """
    ids = sorted(hashes)
    if len(ids) < 2:
        return []
    values = np.array([hashes[i] for i in ids], dtype=np.uint64)
    find, union = _union_find(ids)
    chunk = 512
    for start in range(0, len(ids), chunk):
        block = values[start : start + chunk, None] ^ values[None, :]
        rows, cols = np.nonzero(np.bitwise_count(block) <= max_distance)
        for r, c in zip(rows + start, cols, strict=True):
            if c > r:
                if thumbs is not None:
                    diff = np.abs(thumbs[ids[r]] - thumbs[ids[c]]).mean()
                    if diff > max_thumb_diff:
                        continue
                union(int(r), int(c))
    return _groups_of(ids, find)


def _groups_of(ids: Sequence[str], find) -> list[list[str]]:
    groups: dict[int, list[str]] = collections.defaultdict(list)
    for i, image_id in enumerate(ids):
        groups[find(i)].append(image_id)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def merge_groups(ids: Iterable[str], *groupings: Iterable[Sequence[str]]) -> list[list[str]]:
    """Joins overlapping groups from several groupings (duplicates, patients) into one.

    Two ids end in the same group when any grouping links them, directly or through others:
    the left eye's duplicate stays with the right eye of the same patient.

    Args:
        ids: every id (ids not in `ids` are ignored in the groupings).
        *groupings: each a sequence of groups (sequences of ids).

    Returns:
        Groups of 2+ ids, each sorted, sorted by first id.
    """
    ids = sorted(set(ids))
    index = {i: n for n, i in enumerate(ids)}
    find, union = _union_find(ids)
    for grouping in groupings:
        for group in grouping:
            members = [index[i] for i in group if i in index]
            for m in members[1:]:
                union(members[0], m)
    return _groups_of(ids, find)


@dataclasses.dataclass
class Resolution:
    """What a conflict policy did.

    Attributes:
        labels: `{id: grade}` after the policy (relabelled copies carry the majority grade).
        dropped: ids removed from train/validation.
        actions: `{group's first id: "kept" | "dropped" | "relabelled to G" | "dropped (no
            majority)"}` for every group.
        conflicting: first ids of the groups whose grades disagree.
    """

    labels: dict[str, int]
    dropped: set[str]
    actions: dict[str, str]
    conflicting: set[str]


def resolve_conflicts(
    groups: Iterable[Sequence[str]], grades: Mapping[str, int], policy: str
) -> Resolution:
    """Applies a conflict policy to duplicate groups.

    Args:
        groups: duplicate groups (ids without a grade, e.g. unlabelled test photos, are left
            alone).
        grades: `{id: grade}` of the labelled photos.
        policy: str. `keep` (every copy keeps its own grade), `drop` (every labelled copy of a
            conflicting group is removed) or `majority` (every copy takes the grade held by
            more than half the group's labelled copies; without one the group is dropped).

    Returns:
        A `Resolution`.

    Raises:
        ValueError: unknown policy.
    """
    if policy not in CONFLICT_POLICIES:
        raise ValueError(f"conflict_policy {policy!r} is not one of {CONFLICT_POLICIES}.")
    labels = dict(grades)
    dropped: set[str] = set()
    actions: dict[str, str] = {}
    conflicting: set[str] = set()
    for g in groups:
        labelled = [i for i in g if i in grades]
        action = "kept"
        if len({grades[i] for i in labelled}) > 1:
            conflicting.add(g[0])
            if policy == "drop":
                dropped.update(labelled)
                action = "dropped"
            elif policy == "majority":
                grade, count = collections.Counter(grades[i] for i in labelled).most_common(1)[0]
                if count * 2 > len(labelled):
                    labels.update({i: grade for i in labelled})
                    action = f"relabelled to {grade}"
                else:
                    dropped.update(labelled)
                    action = "dropped (no majority)"
        actions[g[0]] = action
    return Resolution(labels, dropped, actions, conflicting)
