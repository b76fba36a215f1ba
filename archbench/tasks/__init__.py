"""Task accuracy: small models trained from the registry on synthetic and real tasks.

``base`` is the contract (a task makes labelled token sequences from options and a seed),
one module per task family registers its tasks, ``train`` is the shared training loop and
``cell`` turns a suite cell of ``mode: task`` into a row.
"""

from archbench.tasks import mqar  # noqa: F401 - registers the task
from archbench.tasks import passkey  # noqa: F401 - registers passkey
from archbench.tasks import corpus  # noqa: F401 - registers lm (byte-level language modelling)
from archbench.tasks import synthetic  # noqa: F401 - registers selective_copy and induction
from archbench.tasks.base import IGNORE, TASKS, Task, TaskData, TaskError, make_task

__all__ = ["IGNORE", "TASKS", "Task", "TaskData", "TaskError", "make_task"]
