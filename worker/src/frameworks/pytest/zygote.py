# The pytest half of a warm start: import pytest and collect the zygote's test files once, as
# `python -m pytest ARGS FILES` would (same options, same rootdir, same plugins), then in each
# forked child run exactly one collected item through pytest's own run-test loop and session
# finish, so its JUnit report and terminal output are what a cold run of that one id gives.
# Import-time side effects of the test files and conftests happen once, in the zygote, as in
# pytest's own collection; session-scoped fixtures run in each child, as with pytest-forked.

import os
import sys

_state = {}


def prepare():
    import _pytest.config
    import _pytest.junitxml
    import _pytest.main

    args = sys.argv[1:]
    config = _pytest.config._prepareconfig(args)
    session = _pytest.main.Session.from_config(config)
    session.exitstatus = 0
    config._do_configure()
    config.hook.pytest_sessionstart(session=session)
    config.hook.pytest_collection(session=session)
    if session.testsfailed:
        raise RuntimeError("%d errors during collection" % session.testsfailed)
    xml = config.stash.get(_pytest.junitxml.xml_key, None)
    _state["report"] = xml.logfile if xml is not None else None
    # Output capture holds the zygote's stdout and stderr and files of its own: stop it here,
    # and each child starts it again over its own.
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.stop_global_capturing()
    _state["config"] = config
    _state["session"] = session
    _state["items"] = {item.nodeid: item for item in session.items}
    _warm_up(session.items)
    return {"collected": len(session.items)}


def _warm_up(items):
    # What pytest does lazily for the first test of a process (compile the JUnit writer's
    # regular expressions, find each test's source line), done once here: every fork inherits
    # it instead of doing it again. Nothing of a test runs.
    import _pytest.junitxml

    _pytest.junitxml.bin_xml_escape("warm")
    for item in items:
        try:
            item.location
            _pytest.junitxml.mangle_test_address(item.nodeid)
        except Exception:  # noqa: BLE001 - the child computes it again and reports any error
            pass


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def run_one(request, result):
    import _pytest.junitxml
    import _pytest.main
    from _pytest import timing

    config = _state["config"]
    session = _state["session"]
    item = _state["items"].get(request.get("test_id"))
    if item is None:
        os.write(result, b"not collected\n")
        return 4
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.start_global_capturing()
        capman.suspend_global_capture()
    import faulthandler

    if faulthandler.is_enabled():
        faulthandler.enable(sys.stderr)
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter._sessionstarttime = timing.time()
    xml = config.stash.get(_pytest.junitxml.xml_key, None)
    if xml is not None:
        xml.suite_start_time = timing.time()
    session.items = [item]
    session.testscollected = 1
    session.testsfailed = 0
    code = 0
    try:
        config.hook.pytest_runtestloop(session=session)
        code = 1 if session.testsfailed else 0
    except (KeyboardInterrupt, _pytest.main.Interrupted, session.Failed):
        code = 2
    session.exitstatus = code
    config.hook.pytest_sessionfinish(session=session, exitstatus=code)
    config._ensure_unconfigure()
    sys.stdout.flush()
    sys.stderr.flush()
    report = _state.get("report")
    if report:
        try:
            with open(report, "rb") as f:
                _write_all(result, f.read())
        except OSError:
            pass
    return code
