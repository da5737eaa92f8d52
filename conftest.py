"""Repository conftest: load pkvmlab's pytest plugin for suites/ and tests/ alike.

The plugin stays inactive unless a board is chosen (--board, or an --lg-env
naming one), so the project's own tests run with it loaded but idle.
"""

pytest_plugins = ("pkvmlab.plugin",)
