"""The planning steps every eyegazer fundus builder shares, after the photos are decoded.

A builder's `_plan_build` reads its labels and indexes its photos (its own layout), decodes them
(`build.FundusBuilder.decode_photos`), then calls these steps:

4-6. `plan_split`: pHash duplicate groups, the validation split over duplicate (and patient)
     groups, and the conflict policy, as one `SplitPlan`;
7.   the rows: the builder's own fields plus `SplitPlan.example_fields` (size, hash, group),
     and `check_not_empty`;
8.   `finish_report`: the counts, the duplicate groups and the split rule in the build report.

Example:

```python
from eyegazer_datasets.common import plan

split = plan.plan_split("fundus_folder", good, good_grades, config, patient_of=patients)
rows = [{"key": k, **split.example_fields(k, good[k])} for k in sorted(good_grades)]
```
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence

from . import duplicates, images, inventory, kaggle_source, splits

logger = logging.getLogger(__name__)

# The groups the split keeps together when photos carry a patient id.
PATIENT_GROUPING = ["patient", "duplicate_group"]


@dataclasses.dataclass
class SplitPlan:
    """Steps 4-6: duplicate groups, the validation split and the conflict policy's outcome.

    Attributes:
        groups: duplicate groups (lists of keys, each sorted by key).
        validation: the keys the split rule sends to validation.
        resolution: what the conflict policy did (`duplicates.Resolution`).
        grouped_by: what the split keeps together (`PATIENT_GROUPING`), or None for duplicate
            groups only.
    """

    groups: list[list[str]]
    validation: set[str]
    resolution: duplicates.Resolution
    grouped_by: list[str] | None = None

    def __post_init__(self):
        self.group_id = {i: g[0] for g in self.groups for i in g}

    def example_fields(self, key: str, photo: images.Processed) -> dict:
        """The fields every fundus example has: decoded size, pHash, duplicate group, gate verdict."""
        group = self.group_id.get(key, "")
        return {
            "original_height": photo.height,
            "original_width": photo.width,
            "image_hash": f"{photo.phash:016x}",
            "duplicate_group": group,
            "label_conflict": group in self.resolution.conflicting,
            "gradable": photo.gradable,
            "ungradable_reason": photo.ungradable_reason,
            "quality_score": photo.quality_score,
        }

    def group_actions(self) -> list[dict]:
        """`[{"group", "members", "action"}]`: each duplicate group and what the policy did."""
        actions = self.resolution.actions
        return [{"group": g[0], "members": g, "action": actions[g[0]]} for g in self.groups]

    def validation_report(self) -> dict:
        """The split rule, what it groups by, the fraction and the validation keys."""
        grouped = {} if self.grouped_by is None else {"grouped_by": self.grouped_by}
        rule = {"rule": splits.SPLIT_RULE, **grouped, "fraction": splits.VALIDATION_FRACTION}
        return {**rule, "ids": sorted(self.validation)}


def duplicate_groups(good: Mapping[str, images.Processed], config) -> list[list[str]]:
    """Step 4: pHash groups (thumbnail-confirmed) of the decoded photos.

    Args:
        good: `{key: Processed}` of the decoded photos.
        config: the builder config (`duplicate_max_distance`, `duplicate_max_thumb_diff`).

    Returns:
        Groups of 2+ keys (see `duplicates.group_duplicates`).
    """
    groups = duplicates.group_duplicates(
        {i: r.phash for i, r in good.items()},
        config.duplicate_max_distance,
        {i: r.thumb for i, r in good.items()},
        config.duplicate_max_thumb_diff,
    )
    big = [g for g in groups if len(g) > 10]
    if big:
        logger.warning(
            "%d duplicate group(s) have more than 10 photos (largest: %d, from %s); check the "
            "build report, the thresholds may be joining different eyes.",
            len(big),
            max(len(g) for g in big),
            big[0][0],
        )
    return groups


def plan_split(
    salt: str,
    hashed: Mapping[str, images.Processed],
    graded: Mapping[str, int],
    config,
    patient_of: Mapping[str, str] | None = None,
) -> SplitPlan:
    """Steps 4-6: groups the duplicates, splits by `splits.assign_validation`, applies the policy.

    Args:
        salt: str. The split rule's salt (the dataset name).
        hashed: `{key: Processed}`: the decoded photos grouped for duplicates.
        graded: `{key: grade}` of the decoded labelled photos: what is split.
        config: the builder config (`conflict_policy` and the duplicate thresholds).
        patient_of: `{key: patient}`: when given, a patient's photos stay in one split too.

    Returns:
        The `SplitPlan`.
    """
    groups = duplicate_groups(hashed, config)
    together, grouped_by = groups, None
    if patient_of is not None:
        by_patient: dict[str, list[str]] = {}
        for key in graded:
            by_patient.setdefault(patient_of[key], []).append(key)
        together = duplicates.merge_groups(graded, groups, by_patient.values())
        grouped_by = PATIENT_GROUPING
    validation = splits.assign_validation(graded, together, salt=salt)
    resolution = duplicates.resolve_conflicts(groups, graded, config.conflict_policy)
    return SplitPlan(groups, validation, resolution, grouped_by)


def patients_per_split(
    rows: Mapping[str, Sequence[dict]], patient_of: Mapping[str, str], split_names: Iterable[str]
) -> tuple[dict[str, int], list[str]]:
    """`splits.patients_per_split` over the planned rows of `split_names` (by `id_code`)."""
    names = set(split_names)
    written = {
        row["id_code"]: s for s, split_rows in rows.items() if s in names for row in split_rows
    }
    return splits.patients_per_split(written, patient_of)


def check_not_empty(rows: Mapping[str, list], report: dict, detail: str) -> None:
    """Raises a one-line error naming the first split that would be empty.

    Args:
        rows: `{split: rows}` as planned.
        report: the report so far (attached to the error).
        detail: str. What was decoded and skipped, for the message.

    Raises:
        DatasetBuildError: a planned split has no rows.
    """
    empty = [split for split, split_rows in rows.items() if not split_rows]
    if empty:
        raise kaggle_source.DatasetBuildError(
            f"split {empty[0]!r} would be empty ({detail}); check the data or the build "
            "report's 'skipped'.",
            report=report,
        )


def finish_report(
    report: dict,
    head_counts: Mapping[str, int],
    good: Mapping[str, images.Processed],
    split: SplitPlan,
    rows: Mapping[str, Sequence[dict]],
    group_report: list[dict] | None = None,
    **fields,
) -> dict:
    """Step 8: adds `counts`, the builder's `fields`, `duplicate_groups` and `validation`.

    Args:
        report: the report so far (from `decode_photos`), updated in place.
        head_counts: the builder's first counts (CSV rows, photos).
        good: `{key: Processed}` of the decoded photos.
        split: the `SplitPlan`.
        rows: `{split: rows}` as planned.
        group_report: the `duplicate_groups` entries. Defaults to `SplitPlan.group_actions`.
        **fields: further report fields, placed between `counts` and `duplicate_groups`.

    Returns:
        `report`.
    """
    unlisted = report.get("unlisted_images")
    unused = report.get("not_used")
    counts = {
        **head_counts,
        "decoded": len(good),
        "skipped": len(report["skipped"]),
        "ungradable": len(report["ungradable"]),
        **({} if unlisted is None else {"unlisted_images": len(unlisted)}),
        **(
            {}
            if unused is None
            else {
                "not_used": sum(len(v) for v in unused.values()),
                "not_used_by_reason": inventory.counts(unused),
            }
        ),
        "duplicate_groups": len(split.groups),
        "label_conflict_groups": len(split.resolution.conflicting),
        "dropped_by_policy": len(split.resolution.dropped),
        **{name: len(split_rows) for name, split_rows in rows.items()},
    }
    report.update(
        {
            "counts": counts,
            **fields,
            "duplicate_groups": split.group_actions() if group_report is None else group_report,
            "validation": split.validation_report(),
        }
    )
    return report
