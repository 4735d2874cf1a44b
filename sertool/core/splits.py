"""MSP-Podcast's split names, defined once.

Every default, choice and message of sertool that names a split reads it here: the config (`--train-split`,
`--valid-split`), the data readers, the baseline, the inference commands and the paper's grid. A manifest may
name its splits anything; these are MSP-Podcast's, and the defaults everywhere.
"""
from __future__ import annotations

TRAIN = "Train"
DEVELOPMENT = "Development"  # validation: model selection, the ensemble's weights and subsets
TEST1 = "Test1"
TEST2 = "Test2"
TEST3 = "Test3"  # the challenge's test set
SPLITS: tuple[str, ...] = (TRAIN, DEVELOPMENT, TEST1, TEST2, TEST3)
UNLABELLED_SPLIT = TEST3  # the challenge withholds Test3 labels; its audio may have no labels row at all
# The held-out splits with public labels: `sertool data import` makes them, `sertool reproduce` scores them.
HELD_OUT_SPLITS: tuple[str, ...] = (DEVELOPMENT, TEST1)
