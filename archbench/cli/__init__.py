"""The ``archbench`` command line: run | status | report | advise | compare | ab | baseline save | convert | redundancy | list | env |
export | push.

``main`` (``group.py``) is the command group; each family of commands has its module: ``run.py``
(run, status; ``progress.py`` draws a run's progress), ``report.py`` (report, advise),
``compare.py`` (compare, baseline save, ab), ``info.py`` (list, env), ``export.py`` (export,
push), ``recipes.py`` (convert, redundancy: one recipe cell each). Commands parse options, call the
packages that do the work (``archbench.run`` executes suites), print, and choose the exit code
(``exits.py`` lists them).
"""

from archbench.cli.group import main

__all__ = ["main"]
