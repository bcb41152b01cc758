"""Test helpers for the eyegazer fundus builders (imported by their tests only, never the package).

`layout_test_cases` makes one TFDS `DatasetBuilderTestCase` per dummy layout of a builder (the
extracted folder, the zip, the zip parts, ...): each builds the listed configs from that layout
and checks the split sizes, the features and the examples.

Example (in a builder's `*_test.py`):

```python
FolderTest, ZipTest = testing.layout_test_cases(
    aptos.Builder,
    {"train": 9, "validation": 3, "test": 4},
    testing.Layout(_HERE / "dummy_data" / "folder", ["512"], "The extracted Kaggle folder."),
    testing.Layout(_HERE / "dummy_data" / "zip", ["512"], "The Kaggle zip, read in place."),
)
```
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence

import tensorflow_datasets.testing as tfds_testing


@dataclasses.dataclass(frozen=True)
class Layout:
    """One dummy layout of a builder.

    Attributes:
        example_dir: path. The manual dir the test builds from.
        configs: the builder config names to build.
        doc: str. What the layout is (the test case's docstring).
    """

    example_dir: pathlib.Path
    configs: Sequence[str]
    doc: str


def layout_test_cases(
    builder_class: type,
    splits: Mapping[str, int],
    *layouts: Layout,
    overlapping_splits: Sequence[str] = (),
) -> list[type]:
    """One `tfds.testing.DatasetBuilderTestCase` per layout, each expecting `splits`.

    Args:
        builder_class: the builder (`aptos2019_dataset_builder.Builder`, ...).
        splits: `{split: number of examples}` every layout must give.
        *layouts: the `Layout`s.
        overlapping_splits: splits whose examples may repeat other splits' (EyePACS `sample`).

    Returns:
        The test case classes, in the order of `layouts`; bind them to module names so pytest
        collects them.
    """
    return [
        type(
            f"{builder_class.name}_{layout.example_dir.name}_test",
            (tfds_testing.DatasetBuilderTestCase,),
            {
                "__doc__": layout.doc,
                "DATASET_CLASS": builder_class,
                "EXAMPLE_DIR": str(layout.example_dir),
                "SPLITS": dict(splits),
                "OVERLAPPING_SPLITS": list(overlapping_splits),
                "BUILDER_CONFIG_NAMES_TO_TEST": list(layout.configs),
                "SKIP_CHECKSUMS": True,
            },
        )
        for layout in layouts
    ]
