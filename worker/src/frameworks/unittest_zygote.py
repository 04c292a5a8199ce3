# The unittest half of a warm start: import the zygote's test module once, as
# `python -m unittest` would find it (the workspace first on sys.path), then in each forked
# child run exactly one test id through unittest's own main, verbose, so its output is what a
# cold `python -m unittest -v ID` gives. Import-time side effects happen once, in the zygote.

import importlib
import sys
import unittest

_state = {}


def prepare():
    sys.path.insert(0, "")
    module = sys.argv[1]
    importlib.import_module(module)
    _state["module"] = module
    return {"collected": module}


def run_one(request, result):
    test_id = request.get("test_id", "")
    program = unittest.main(
        module=None, argv=["python -m unittest", "-v", test_id], exit=False
    )
    outcome = program.result
    if not outcome.wasSuccessful():
        return 1
    if outcome.testsRun == 0:
        return 5
    return 0
