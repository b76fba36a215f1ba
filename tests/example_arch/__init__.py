"""A complete small architecture added the way docs/adding-an-architecture.md describes: an op
(``ema.py``), a mixer with its catalogue entry (``mixer.py``) and a test
(``tests/test_example_arch.py``). Importing this package registers ``example_ema``; the zoo's
contract tests (``tests/test_zoo.py``) load it as a plugin and check it like every built-in entry."""

from example_arch import mixer  # noqa: F401  (registers example_ema)
