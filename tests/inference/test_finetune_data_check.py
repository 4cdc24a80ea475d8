"""`crucible fine-tune create --data` checks the file before anything starts: a file with no
line ends (a binary picked by mistake) is refused by its first line's length, not read whole
into memory (a 3 GB file took 3 GB, or ended in a MemoryError traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible.inference.finetune_data import DataError, check_records


def test_a_line_past_the_limit_is_refused_without_reading_on(tmp_path: Path) -> None:
    big = tmp_path / "weights.bin"
    with big.open("wb") as f:
        f.write(b"x" * (17 << 20))
    with pytest.raises(
        DataError, match=r"weights.bin:1: longer than 16 MiB \(is it JSON lines\?\)"
    ):
        check_records(big)


def test_good_lines_are_counted(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d"}\n')
    assert check_records(data) == 2
