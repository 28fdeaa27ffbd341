"""The secrets sweep itself: a test that leaks a secret to stdout, stderr, a log record or a log
file fails, and the failure does not repeat the secret."""

from __future__ import annotations

import pytest

from tests.api_helpers import TOKEN

pytest_plugins = ["pytester"]

LEAKS = {
    "stdout": "print(TOKEN)",
    "stderr": "import sys; sys.stderr.write(TOKEN)",
    "log_record": "import logging; logging.getLogger('x').warning('token %s', TOKEN)",
    "log_file": "(tmp_path / 'server-1.log').write_text('{\"message\": \"%s\"}' % TOKEN)",
    # A server's log outside tmp_path, registered as ServerProcess registers its own.
    "server_log_elsewhere": "from tests.server_helpers import LOG_FILES; "
                            "p = tmp_path.parent / 'elsewhere.log'; p.write_text(TOKEN); LOG_FILES.append(p)",
}


# The inner session's records also reach this test's own log capture, raw: exempt that view only.
@pytest.mark.raw_secrets_in_log_records
@pytest.mark.parametrize("where", sorted(LEAKS))
def test_a_leaked_secret_fails_the_test_without_repeating_it(pytester, where):
    pytester.makeconftest('pytest_plugins = ["tests.secrets_sweep"]')
    pytester.makepyfile(f"""
        from tests.api_helpers import TOKEN

        def test_leaky(tmp_path):
            {LEAKS[where]}

        def test_clean(tmp_path):
            print("nothing to see")
            (tmp_path / "server-2.log").write_text("Bearer [REDACTED]")
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)  # the leak fails at teardown, after the test ran
    output = result.stdout.str()
    assert "secrets sweep: a test secret appeared in output" in output
    assert TOKEN not in output
