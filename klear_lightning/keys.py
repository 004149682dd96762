"""Logged metric keys that one part of the project writes and another reads, in one place.

`KlearModule` logs the validation loss per task and per data split under these keys; the stage II
curriculum (`callbacks.Rebalance`) reads them by default (`{task}` / `{split}` filled in).
"""

TASK_LOSS = "loss_task/{task}"
SPLIT_LOSS = "loss_split/{split}"
VAL_TASK_LOSS = "val/" + TASK_LOSS
VAL_SPLIT_LOSS = "val/" + SPLIT_LOSS
