"""What every eyegazer fundus builder shares: the config, the builder base, decode and skip steps.

A builder subclasses `FundusBuilder` and writes three things: how to open its download
(`_open_source`), its own features (`_features`, on top of `fundus_features`) and its build plan
(`_plan_build`), made of the named steps below. The plan is made in `_split_generators`, before
any example is written: duplicates can only be grouped once every photo has been hashed.
`_generate_examples` then writes the planned rows, reading each photo's stored PNG from the
scratch folder the decode step filled.

Steps (each a method or function, used by every builder):

1. index: the builder lists its labels and the files they name (`images.Job`s);
2-3. `decode_photos`: `images.decode_all` (parallel, with a progress bar), then `skip_report`:
   bad files and ungradable photos, named and counted; too many bad files fail;
4-6. `plan.plan_split`: pHash duplicate groups, `splits.assign_validation` over duplicate (and
   patient) groups, `duplicates.resolve_conflicts` (the conflict policy);
7. the rows: the builder's features per example (`plan.SplitPlan.example_fields` for the
   shared ones);
8. `plan.finish_report`, then `write_report`: `build_report.json` next to the data.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from eyegazer_keras import GRADE_NAMES, fundus

from . import duplicates, images, inventory, kaggle_source, label_csv, plan

logger = logging.getLogger(__name__)

REPORT_NAME = "build_report.json"
SCRATCH_NAME = "_scratch"
DEFAULT_MAX_BAD_FRACTION = 0.01


_POLICY_TEXT = {
    "keep": "duplicate copies with conflicting grades are kept",
    "drop": "duplicate groups with conflicting grades are dropped",
    "majority": "conflicting duplicate groups take their majority grade (no majority: dropped)",
}


@dataclasses.dataclass(eq=False)
class FundusConfig(tfds.core.BuilderConfig):
    """What changes the bytes on disk, for every fundus builder.

    Build one with `make` (named after its choices) or give `name` and `description` yourself.

    Args:
        size: int. Side of the stored square image in pixels. Defaults to 512.
        ben_graham: bool. Apply Ben Graham's local-colour normalisation. Defaults to False.
        conflict_policy: str. What to do with duplicate groups whose grades disagree: `keep`
            (every copy keeps its own grade, `label_conflict=True`), `drop` (remove every copy
            from train/validation) or `majority` (relabel every copy to the grade held by more
            than half of the group; groups without such a grade are dropped). Defaults to `keep`.
        duplicate_max_distance: int. Two photos are duplicate candidates when their 64-bit
            perceptual hashes differ in at most this many bits. Part of the split rule.
            Defaults to 8.
        duplicate_max_thumb_diff: float. A candidate pair is a duplicate when the 32x32 grey
            thumbnails differ by at most this mean absolute grey level (0-255). Part of the
            split rule. Defaults to 3.0.

    Raises:
        ValueError: an unknown `conflict_policy`, or `size` under 8 pixels.
    """

    size: int = 512
    ben_graham: bool = False
    conflict_policy: str = "keep"
    duplicate_max_distance: int = duplicates.DEFAULT_MAX_DISTANCE
    duplicate_max_thumb_diff: float = duplicates.DEFAULT_MAX_THUMB_DIFF

    def __post_init__(self):
        if self.conflict_policy not in duplicates.CONFLICT_POLICIES:
            raise ValueError(
                f"conflict_policy {self.conflict_policy!r} is not one of "
                f"{duplicates.CONFLICT_POLICIES}."
            )
        if int(self.size) < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}.")
        if not self.name:  # from `make`: named and described after the choices
            self.name = self._choice_name()
            self.description = (
                f"Fundus cropped and resized to {self.size}x{self.size} px"
                + (", Ben Graham normalisation" if self.ben_graham else "")
                + f", lossless PNG; {_POLICY_TEXT[self.conflict_policy]}."
            )

    def _choice_name(self) -> str:
        name = str(self.size)
        if self.ben_graham:
            name += "_ben_graham"
        if self.conflict_policy != "keep":
            name += f"_{self.conflict_policy}"
        if self.duplicate_max_distance != duplicates.DEFAULT_MAX_DISTANCE:
            name += f"_dup{self.duplicate_max_distance}"
        if self.duplicate_max_thumb_diff != duplicates.DEFAULT_MAX_THUMB_DIFF:
            name += f"_thumb{self.duplicate_max_thumb_diff:g}"
        return name

    @classmethod
    def make(cls, size: int = 512, **choices) -> FundusConfig:
        """Returns a config named after its choices, e.g. `384_ben_graham_drop`.

        Args:
            size: int. Stored image side. Defaults to 512.
            **choices: the other fields (`ben_graham`, `conflict_policy` (`keep`, `drop` or
                `majority`), `duplicate_max_distance`, ...), with the defaults above.

        Raises:
            ValueError: an unknown conflict policy, or a size under 8 pixels.
        """
        return cls(name="", size=size, **choices)

    @classmethod
    def variants(cls, *policies: str) -> list[FundusConfig]:
        """The configs every fundus builder offers: `512`, `512_ben_graham`, `256`, then
        `512_<policy>` for each extra conflict policy (e.g. `"drop"`)."""
        standard = [cls.make(512), cls.make(512, ben_graham=True), cls.make(256)]
        return standard + [cls.make(512, conflict_policy=p) for p in policies]


_GATE = tf.function(
    fundus.assess_quality,
    input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
    autograph=False,  # explicit tf.cond only: autograph's conversion was most of the trace
)


def quality_gate(image: np.ndarray) -> tuple[bool, str, float]:
    """`fundus.assess_quality` (one traced graph) as the decode step's gate.

    Args:
        image: `uint8 [H, W, 3]`, decoded and upright.

    Returns:
        `(gradable, ungradable_reason, quality_score)`: `(True, "", score)` for a gradable
        photo, else `(False, reason, score)` with a reason of `fundus.REASONS`; the score is in
        [0, 1] (1 good, see `fundus.quality_score`).
    """
    quality = _GATE(tf.convert_to_tensor(image, tf.uint8))
    return (
        bool(quality["gradable"]),
        quality["ungradable_reason"].numpy().decode(),
        float(quality["quality_score"]),
    )


def skipped_entries(results: Mapping[str, images.Processed], fallback: Mapping[str, str]) -> list:
    """`[{"key", "file", "reason"}]` for every bad (not ungradable) result, sorted by key."""
    return [
        {
            "key": r.key,
            "file": label_csv.display_text(r.relpath or fallback[r.key]),
            "reason": r.reason,
        }
        for r in sorted(results.values(), key=lambda r: r.key)
        if not r.ok and not r.ungradable
    ]


def ungradable_entries(results: Mapping[str, images.Processed]) -> tuple[list, dict[str, int]]:
    """The photos the quality gate refused, and their count per reason."""
    refused = [
        {
            "key": r.key,
            "file": label_csv.display_text(r.relpath),
            "reason": r.reason,
            "quality_score": round(r.quality_score, 4),
        }
        for r in sorted(results.values(), key=lambda r: r.key)
        if r.ungradable
    ]
    return refused, dict(sorted(collections.Counter(e["reason"] for e in refused).items()))


def quality_summary(results: Mapping[str, images.Processed]) -> dict:
    """The gate's verdict over every decoded photo: imageability, reasons, score quantiles."""
    judged = [r for r in results.values() if np.isfinite(r.quality_score)]
    scores = np.array([r.quality_score for r in judged], np.float64)
    gradable = sum(bool(r.gradable) for r in judged)
    reasons = collections.Counter(r.ungradable_reason for r in judged if not r.gradable)
    return {
        "judged": len(judged),
        "gradable": gradable,
        "ungradable": len(judged) - gradable,
        "imageability": round(gradable / len(judged), 4) if judged else None,
        "ungradable_by_reason": dict(sorted(reasons.items())),
        "quality_threshold": fundus.QUALITY_THRESHOLD,
        "quality_score_quantiles": (
            {q: round(float(np.quantile(scores, float(q))), 4) for q in ("0.05", "0.25", "0.5")}
            if judged
            else None
        ),
    }


def fundus_features(
    size: int,
    id_code_doc: str | None = None,
    before_label: Mapping[str, tfds.features.FeatureConnector] | None = None,
    after_label: Mapping[str, tfds.features.FeatureConnector] | None = None,
) -> tfds.features.FeaturesDict:
    """The features of a fundus builder: the shared ones around the builder's own.

    Shared: `image` (`uint8 [size, size, 3]`, PNG), `id_code`, `label` (the 5 DR grades),
    `original_height`, `original_width` (decoded size, px), `image_hash` (64-bit pHash, hex),
    `duplicate_group` (its first id, or empty), `label_conflict`, and the quality gate's verdict
    on the original photo (`gradable`, `ungradable_reason`, `quality_score` in [0, 1]; the
    ungradable are stored only with `keep_ungradable`).

    Args:
        size: int. Stored image side in pixels.
        id_code_doc: str. What `id_code` holds. Defaults to no doc.
        before_label: the builder's features placed between `id_code` and `label`.
        after_label: the builder's features placed between `label` and `original_height`.
    """
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
            "id_code": tfds.features.Text(doc=id_code_doc),
            **(before_label or {}),
            "label": tfds.features.ClassLabel(names=list(GRADE_NAMES)),
            **(after_label or {}),
            "original_height": tfds.features.Scalar(dtype=np.int32),
            "original_width": tfds.features.Scalar(dtype=np.int32),
            "image_hash": tfds.features.Text(),
            "duplicate_group": tfds.features.Text(),
            "label_conflict": tfds.features.Scalar(dtype=np.bool_),
            "gradable": tfds.features.Scalar(dtype=np.bool_),
            "ungradable_reason": tfds.features.Text(),
            "quality_score": tfds.features.Scalar(dtype=np.float32),
        }
    )


def text_features(**docs: str) -> dict[str, tfds.features.Text]:
    """`{name: tfds.features.Text(doc=doc)}`, in the given order (`patient_id="e.g. 10"`)."""
    return {name: tfds.features.Text(doc=doc) for name, doc in docs.items()}


def load_build_report(builder: tfds.core.DatasetBuilder) -> dict:
    """Reads the `build_report.json` a finished build wrote next to its data.

    Args:
        builder: a prepared eyegazer fundus builder.

    Raises:
        FileNotFoundError: the builder has not been prepared.
    """
    return json.loads((epath.Path(builder.data_dir) / REPORT_NAME).read_text())


class FundusBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
    """Base of the eyegazer fundus builders (manual downloads, decoded once, planned first).

    Args:
        max_bad_fraction: float. The build fails when more than this fraction of the photos
            named by the labels is missing, unreadable or refused. Defaults to 0.01.
        max_megapixels: float. Photos with more megapixels (read from the header) are refused
            without being decoded. Defaults to 50.
        num_workers: int. Decoding threads. Defaults to the number of CPUs.
        keep_ungradable: bool. Keep the labelled photos the fundus quality gate calls
            ungradable (they are skipped and counted by reason otherwise). Defaults to False.
        manual_path: path. Read the download from here instead of TFDS's manual dir (TFDS
            insists on a non-empty folder; this may be the zip file itself). Defaults to None.
        **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (`data_dir`, `config`, ...).
    """

    # What to download, for one-line errors (a builder sets it).
    DOWNLOAD_HINT = "the dataset"
    HOMEPAGE: str | None = None

    def __init__(
        self,
        *,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        max_megapixels: float = images.DEFAULT_MAX_MEGAPIXELS,
        num_workers: int | None = None,
        keep_ungradable: bool = False,
        manual_path: epath.PathLike | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.manual_path = None if manual_path is None else epath.Path(manual_path)
        if not 0.0 <= float(max_bad_fraction) <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}.")
        self.max_bad_fraction = float(max_bad_fraction)
        self.max_megapixels = float(max_megapixels)
        self.num_workers = num_workers
        self.keep_ungradable = bool(keep_ungradable)
        self._original_state.update(
            max_bad_fraction=max_bad_fraction,
            max_megapixels=max_megapixels,
            num_workers=num_workers,
            keep_ungradable=keep_ungradable,
            manual_path=manual_path,
        )
        self._plan: dict[str, list[dict]] = {}

    # -- what a builder writes ------------------------------------------------------------------

    @abc.abstractmethod
    def _open_source(self, manual_dir: epath.Path) -> kaggle_source.Source:
        """Opens the manual download (folder, zip or zip parts)."""

    @abc.abstractmethod
    def _features(self, size: int) -> tfds.features.FeaturesDict:
        """The builder's features (`fundus_features` with its own), for images of `size` px."""

    @abc.abstractmethod
    def _plan_build(self, source: kaggle_source.Source) -> tuple[dict[str, list[dict]], dict]:
        """Returns `({split: rows}, report)`; every row has `key` and the builder's features."""

    # -- shared --------------------------------------------------------------------------------

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=self._features(int(self.builder_config.size)),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual = self.manual_path or epath.Path(dl_manager.manual_dir)
        with self._open_source(manual) as source:
            plan, report = self._plan_build(source)
        self.write_report(report)
        self._plan = plan
        return {name: self._generate_examples(name) for name in plan}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
        """Yields the planned rows of `split`; their PNGs were written once, at decode."""
        scratch = self.scratch_dir
        rows = self._plan.get(split, [])
        for row in rows:
            example = {k: v for k, v in row.items() if k != "key"}
            example["image"] = (scratch / f"{row['key']}.png").read_bytes()
            yield row["key"], example
        # The split is written: free its scratch PNGs (and the folder once every split is done).
        for row in rows:
            path = scratch / f"{row['key']}.png"
            if path.exists():
                path.unlink()
        if scratch.exists() and not any(scratch.iterdir()):
            scratch.rmdir()

    @property
    def scratch_dir(self) -> epath.Path:
        """Where the decode step stores the PNGs until the examples are written."""
        return epath.Path(self.data_dir) / SCRATCH_NAME

    @property
    def store_spec(self) -> images.StoreSpec:
        config = self.builder_config
        return images.StoreSpec(
            int(config.size), bool(config.ben_graham), int(self.max_megapixels * 1e6)
        )

    def decode(self, source: kaggle_source.Source, jobs: Sequence[images.Job]):
        """Step 2: decodes every job (`images.decode_all`); the quality gate judges every photo
        and refuses the ungradable labelled ones unless `keep_ungradable`."""
        return images.decode_all(
            self.name,
            source,
            jobs,
            self.store_spec,
            self.scratch_dir,
            num_workers=self.num_workers,
            gate=quality_gate,
            keep_ungradable=self.keep_ungradable,
        )

    def decode_photos(
        self,
        source: kaggle_source.Source,
        jobs: Sequence[images.Job],
        fallback: Mapping[str, str],
        **fields,
    ) -> tuple[dict[str, images.Processed], dict]:
        """Steps 2-3: `decode`, `base_report` (plus the builder's `fields`), `skip_report`.

        A builder passes `not_used=inventory.not_used(...)` among its `fields`: every file of
        the source it did not read, by reason (logged here, counted by `plan.finish_report`).

        Returns:
            `(good, report)`: `{key: Processed}` of the decoded photos and the report so far.

        Raises:
            DatasetBuildError: more than `max_bad_fraction` of the photos are bad.
        """
        decoded = self.decode(source, jobs)
        report = {**self.base_report(source, decoded), **fields}
        if fields.get("not_used"):
            logger.warning("%s: %s", self.name, inventory.summary(fields["not_used"]))
        return self.skip_report(decoded, jobs, report, fallback), report

    def kept(self, keys: Iterable[str], split: plan.SplitPlan) -> Iterator[str]:
        """The keys the conflict policy keeps, in order; the dropped ones' PNGs are deleted."""
        for key in keys:
            if key in split.resolution.dropped:
                (self.scratch_dir / f"{key}.png").unlink()
            else:
                yield key

    def base_report(self, source: kaggle_source.Source, decoded: images.DecodeResult) -> dict:
        """The report fields every builder writes."""
        config = self.builder_config
        return {
            "dataset": self.name,
            "config": config.name,
            "version": str(self.version),
            "source": source.description,
            "conflict_policy": config.conflict_policy,
            "duplicate_max_distance": config.duplicate_max_distance,
            "duplicate_max_thumb_diff": config.duplicate_max_thumb_diff,
            "max_bad_fraction": self.max_bad_fraction,
            "max_megapixels": self.max_megapixels,
            "keep_ungradable": self.keep_ungradable,
            "quality_gate": "fundus.assess_quality",
            "quality_threshold": fundus.QUALITY_THRESHOLD,
            "timing": decoded.timing,
        }

    def skip_report(
        self,
        decoded: images.DecodeResult,
        jobs: Sequence[images.Job],
        report: dict,
        fallback: Mapping[str, str],
    ) -> dict[str, images.Processed]:
        """Step 3: names and counts bad files and ungradable photos; fails on too many bad files.

        Args:
            decoded: the decode step's result.
            jobs: every job.
            report: the report, updated in place (`skipped`, `bad_fraction`, `ungradable`,
                `ungradable_by_reason`, `pil_fallback`).
            fallback: `{key: expected file}` for photos without a file.

        Returns:
            The good results `{key: Processed}`.

        Raises:
            DatasetBuildError: more than `max_bad_fraction` of the photos are bad.
        """
        results = decoded.results
        skipped = skipped_entries(results, fallback)
        for s in skipped:
            logger.warning("%s: skipped %s: %s", self.name, s["file"], s["reason"])
        refused, by_reason = ungradable_entries(results)
        if refused:
            logger.warning(
                "%s: %d ungradable photo(s) skipped (%s); keep them with keep_ungradable",
                self.name,
                len(refused),
                ", ".join(f"{k}: {v}" for k, v in by_reason.items()),
            )
        bad_fraction = len(skipped) / max(1, len(jobs))
        report["quality"] = quality_summary(results)
        report.update(
            {
                "skipped": skipped,
                "bad_fraction": bad_fraction,
                "ungradable": refused,
                "ungradable_by_reason": by_reason,
                "pil_fallback": sorted(r.key for r in results.values() if r.decoder == "pil"),
            }
        )
        if bad_fraction > self.max_bad_fraction:
            first = "; ".join(f"{s['file']} ({s['reason']})" for s in skipped[:3])
            raise kaggle_source.DatasetBuildError(
                f"{len(skipped)} of {len(jobs)} images ({bad_fraction:.2%}) are missing, "
                f"unreadable or refused, more than max_bad_fraction={self.max_bad_fraction:.2%}; "
                f"first: {first}. Re-download the data or raise max_bad_fraction "
                "(`eyegazer prepare ... --max-bad-fraction F`).",
                report=report,
            )
        return {i: r for i, r in results.items() if r.ok}

    @classmethod
    def prepare(
        cls,
        manual_dir: epath.PathLike,
        data_dir: epath.PathLike | None = None,
        config: str | tfds.core.BuilderConfig | None = None,
        **options,
    ) -> dict:
        """Builds the dataset from its manual download and returns the build report.

        This is what `eyegazer prepare NAME --manual-dir DIR` calls (`NAME.prepare` in each
        builder module).

        Args:
            manual_dir: path. The extracted folder, the folder holding the zip(s), or a zip
                file (or the first part of a split zip).
            data_dir: path. TFDS data dir. Defaults to TFDS's default (`~/tensorflow_datasets`).
            config: str or config. Defaults to the builder's default config (`"512"`).
            **options: builder options (`max_bad_fraction`, `max_megapixels`, `num_workers`,
                `keep_ungradable`, and the builder's own, e.g. `label_map`).

        Returns:
            The build report (dict), also written to `<data_dir>/<name>/<config>/<version>/`.

        Raises:
            DatasetBuildError: bad input (a `ValueError` with a one-line message naming the fix).
        """
        manual = epath.Path(manual_dir).expanduser()
        if not manual.exists() or (manual.is_dir() and not any(manual.iterdir())):
            raise kaggle_source.DatasetBuildError(
                f"{manual}: the manual dir does not exist or is empty. Download "
                f"{cls.DOWNLOAD_HINT} into it."
            )
        builder = cls(
            data_dir=None if data_dir is None else str(epath.Path(data_dir).expanduser()),
            config=config,
            manual_path=manual,
            **options,
        )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(manual if manual.is_dir() else manual.parent)
            )
        )
        return load_build_report(builder)

    def write_report(self, report: dict) -> None:
        """Step 8: writes `build_report.json` next to the data."""
        path = epath.Path(self.data_dir) / REPORT_NAME
        path.write_text(json.dumps(report, indent=2, default=_json_default))


def _json_default(value: Any):
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
