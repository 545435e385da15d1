"""Builds a TFDS prompt dataset from local JSONL files (golfjax/data/tfds_prompts.py).

    python -m golfjax.data.prepare --format=gsm8k --train=train.jsonl \
        --test=test.jsonl --out_dir=/tmp/gsm8k_prompts

writes ArrayRecord files into `out_dir` (seconds for GSM8K's 8.8k records) and
prints the dataset's name and split sizes. A run reads the dataset with
`--config.task.dataset=OUT_DIR` (the `math` task). A malformed record stops the
build before anything is written, naming the file, record, line and field.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

# tfds_prompts.FORMATS, spelled out: importing TFDS before flag parsing is slow.
_FORMAT = flags.DEFINE_enum("format", None, ["gsm8k", "math", "dapo"],
                            "Source format of the JSONL records.")
_TRAIN = flags.DEFINE_string("train", None, "JSONL file of the train split.")
_TEST = flags.DEFINE_string("test", None, "JSONL file of the test (held-out) split.")
_OUT_DIR = flags.DEFINE_string("out_dir", None,
                               "Dataset directory to create (it must hold no dataset yet).")
flags.mark_flags_as_required(["format", "out_dir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not (_TRAIN.value or _TEST.value):
        raise app.UsageError("give --train and/or --test")
    import tensorflow_datasets as tfds  # After flag parsing: TFDS is slow to import.

    from golfjax.data import tfds_prompts

    # The summary below is the output; TFDS's progress bars and file-by-file
    # log lines are noise for a few-second build.
    tfds.disable_progress_bar()
    logging.set_verbosity(logging.WARNING)
    try:
        name = tfds_prompts.prepare(_FORMAT.value, _OUT_DIR.value, train_path=_TRAIN.value,
                                    test_path=_TEST.value)
    except (ValueError, FileNotFoundError) as e:
        # A bad record or path is the user's to fix: its message, not a traceback.
        sys.exit(f"prepare: {e}")
    sizes = ", ".join(f"{split} {len(tfds_prompts.PromptSplit(_OUT_DIR.value, split))}"
                      for split in tfds_prompts.splits(_OUT_DIR.value))
    print(f"{name} in {_OUT_DIR.value}: {sizes}")


if __name__ == "__main__":
    app.run(main)
