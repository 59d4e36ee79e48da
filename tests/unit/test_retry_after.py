"""`parse_retry_after`: both forms of RFC 9110, and everything else read as absent."""

from __future__ import annotations

import email.utils
import subprocess
import sys
import time

import pytest

from outlast.retry_after import ABSURD_S, MAX_DELAY_S, parse_retry_after

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("5", 5.0), ("120", 120.0), (" 7\t", 7.0), ("007", 7.0), ("0000000000000000000042", 42.0)],
)
def test_delay_seconds(value, seconds):
    assert parse_retry_after(value, now=NOW) == seconds


def test_an_http_date_is_the_seconds_until_it():
    assert parse_retry_after(http_date(NOW + 90), now=NOW) == 90.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:15:00 GMT", now=NOW) == 100.0


def test_obsolete_date_forms_and_zones_are_read_as_email_utils_reads_them():
    assert parse_retry_after("Tuesday, 14-Nov-23 22:15:00 GMT", now=NOW) == 100.0  # RFC 850
    assert parse_retry_after("Tue Nov 14 22:15:00 2023", now=NOW) == 100.0  # asctime: GMT, not local time
    assert parse_retry_after("Tue, 14 Nov 2023 22:15:00 -0000", now=NOW) == 100.0
    assert parse_retry_after("Tue, 14 Nov 2023 23:15:00 +0100", now=NOW) == 100.0


def test_a_date_in_the_past_means_now():
    assert parse_retry_after(http_date(NOW - 3600), now=NOW) == 0.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=NOW) == 0.0


def test_a_date_is_counted_from_the_clock_by_default():
    seconds = parse_retry_after(http_date(time.time() + 600))
    assert seconds is not None and 595 <= seconds <= 600  # whole seconds, and the time this test takes


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "-5",
        "+5",
        "1.5",
        "1e3",
        "5s",
        "5 5",
        "0x10",
        "inf",
        "-inf",
        "nan",
        "Infinity",
        "\u00b2",  # superscript two: str.isdigit() says yes
        "1\u00b2",
        "\u0661\u0662",  # Arabic-Indic digits
        "\uff11\uff12",  # fullwidth digits
        "Tue, 32 Nov 2023 22:15:00 GMT",
        "Tue, 14 Nov 2023 25:15:00 GMT",
        "Fri, 31 Dec 99999 23:59:59 GMT",
        "Mon, 01 Jan 2024 00:00:00 +9999",
    ],
)
def test_junk_is_absent(value):
    assert parse_retry_after(value, now=NOW) is None


def test_long_delays_are_capped_at_a_day_and_absurd_ones_are_absent():
    assert parse_retry_after(str(int(MAX_DELAY_S) + 1), now=NOW) == MAX_DELAY_S
    assert parse_retry_after(str(int(ABSURD_S)), now=NOW) == MAX_DELAY_S
    assert parse_retry_after(str(int(ABSURD_S) + 1), now=NOW) is None
    assert parse_retry_after("9" * 30, now=NOW) is None
    assert parse_retry_after("9" * 5000, now=NOW) is None  # more digits than int() converts
    assert parse_retry_after(http_date(NOW + 2 * 86_400), now=NOW) == MAX_DELAY_S
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=NOW) is None


def test_a_clock_that_is_not_a_number_gives_no_delay():
    assert parse_retry_after(http_date(NOW + 90), now=float("nan")) is None
    assert parse_retry_after(http_date(NOW + 90), now=float("-inf")) is None


def test_the_module_imports_only_the_standard_library():
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import outlast.retry_after\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] not in sys.stdlib_module_names))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['outlast', 'outlast.retry_after']"
