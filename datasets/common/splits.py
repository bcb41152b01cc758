"""The deterministic train/validation rule every eyegazer builder uses: grouped, stratified, hashed.

The split is a pure function of the ids, their grades and the groups that must stay together
(duplicate photos, both eyes of a patient): no RNG, no committed list. The same download gives
the same split for every config, every worker count and every machine, and the rule's name
(`SPLIT_RULE`) goes into each build report. Change the rule only together with that name.

Example:

```python
from eyegazer_datasets.common import splits

grades = {"10_left": 0, "10_right": 0, "13_left": 2, "13_right": 1, "15_left": 0}
validation = splits.assign_validation(grades, [["10_left", "10_right"], ["13_left", "13_right"]],
                                      salt="eyepacs2015")
assert ("10_left" in validation) == ("10_right" in validation)
```
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence

VALIDATION_FRACTION = 0.10
# Part of the split: changing the rule changes every split. Bump the suffix if you ever do.
SPLIT_RULE = "sha256-stratified-10pct-v1"


def split_key(salt: str, image_id: str) -> str:
    """The order key of a group within its grade: `sha256(salt + "/validation/" + id)` (hex)."""
    return hashlib.sha256(f"{salt}/validation/{image_id}".encode()).hexdigest()


def assign_validation(
    grades: Mapping[str, int],
    groups: Iterable[Sequence[str]] = (),
    fraction: float = VALIDATION_FRACTION,
    salt: str = "aptos2019",
) -> set[str]:
    """Which labelled ids go to validation (rule `SPLIT_RULE`).

    Each group (a photo in no group is a group of one) is represented by its smallest id;
    groups are stratified by that id's grade, ordered within a grade by `split_key(salt, id)`,
    and taken in that order until validation holds `fraction * images of that grade` images
    (rounded half up; at least one group when a grade has two or more). Whole groups move
    together, so no photo has a copy, or its patient's other eye, on the other side.

    Args:
        grades: `{id: grade}` of the labelled photos.
        groups: groups kept together (ids not in `grades` are ignored).
        fraction: float. Target validation fraction per grade. Defaults to 0.1.
        salt: str. Dataset name mixed into the order key. Defaults to `aptos2019`.

    Returns:
        The validation ids.
    """
    group_of = {i: (i,) for i in grades}
    for g in groups:
        members = tuple(sorted(i for i in g if i in grades))
        for i in members:
            group_of[i] = members
    strata: dict[int, list[tuple[str, ...]]] = collections.defaultdict(list)
    for unit in set(group_of.values()):
        strata[grades[unit[0]]].append(unit)
    chosen: set[str] = set()
    for grade in sorted(strata):
        items = sorted(strata[grade], key=lambda u: split_key(salt, u[0]))
        n_images = sum(len(u) for u in items)
        target = math.floor(fraction * n_images + 0.5)  # half-up, unlike round()
        if target == 0 and len(items) >= 2:
            target = 1  # tiny sets still get one validation group per grade
        taken = 0
        for unit in items:
            if taken >= target:
                break
            chosen.update(unit)
            taken += len(unit)
    return chosen


def patients_per_split(
    split_of: Mapping[str, str], patient_of: Mapping[str, str]
) -> tuple[dict[str, int], list[str]]:
    """Counts patients per split and lists patients found in more than one split.

    Args:
        split_of: `{id: split name}` of the written examples.
        patient_of: `{id: patient id}`.

    Returns:
        `({split: number of patients}, [patients in 2+ splits, sorted])`.
    """
    splits_of_patient: dict[str, set[str]] = collections.defaultdict(set)
    for i, split in split_of.items():
        splits_of_patient[patient_of[i]].add(split)
    counts: dict[str, int] = collections.Counter()
    for names in splits_of_patient.values():
        for name in names:
            counts[name] += 1
    shared = sorted(p for p, names in splits_of_patient.items() if len(names) > 1)
    return dict(sorted(counts.items())), shared
