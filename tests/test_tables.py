"""Tests of `aerialkd.tables`: column names, history rows, Markdown tables."""

import utils


def test_markdown_table_formats_numbers():
    table = utils.markdown_table([{"model": "teacher", "parameters": 1941190, "miou5": 0.71234}])
    assert table.splitlines()[0] == "| model | parameters | mIoU, 5 labelled classes |"
    assert table.splitlines()[2] == "| teacher | 1,941,190 | 0.712 |"


def test_markdown_table_marks_missing_cells_and_keeps_unnamed_columns():
    table = utils.markdown_table([{"run": "a", "x": 0.5}, {"run": "b", "x": None}], digits=1)
    assert table.splitlines() == ["| run | x |", "|---|---|", "| a | 0.5 |", "| b | — |"]


def test_history_rows_show_every_tenth_epoch_the_last_and_the_best():
    history = {"loss": [1.0 - 0.01 * i for i in range(25)],
               "val_miou5": [0.5] * 25, "lr": [1e-3] * 25}
    history["val_miou5"][13] = 0.9  # epoch 14
    rows = utils.history_rows(history)
    assert [row["epoch"] for row in rows] == [1, 10, "14 (best)", 20, 25]
    assert rows[-1] == {"epoch": 25, "loss": 0.76, "val_miou5": 0.5}  # `keys` only
