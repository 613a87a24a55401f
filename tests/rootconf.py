"""The conformance suite's helpers (tests/conftest.py), importable from the sub-suites.

pytest loads tests/conftest.py and the conftest.py of tests/reliability and tests/scaleout all
under the module name ``conftest``, so ``from conftest import ...`` there would find their own.
This loads tests/conftest.py once more under a name of its own; only its helper functions are
used (its fixtures stay registered through pytest's own import).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "mofa_tests_root_conftest"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).parent / "conftest.py")
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)
root = sys.modules[_NAME]

IN_CI: bool = root.IN_CI
admin = root.admin
create_database = root.create_database
drop_database = root.drop_database
selected_backends = root.selected_backends
url_on_server = root.url_on_server
unavailable = root.unavailable
