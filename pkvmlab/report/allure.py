"""Allure's ``categories.json`` beside each JUnit file, so Allure lists pkvmlab's findings as findings.

Allure reads JUnit by status only: a waived finding (``<skipped>``) is a grey skipped test, and its
Categories page (defaults: product defects = failed, test defects = broken) stays empty.  Allure
takes custom categories from a ``categories.json`` in the results directory it is given, matched by
status and by a regular expression over the whole status message (Allure's documentation,
https://allurereport.org/docs/how-it-works-categories-file/).  pkvmlab's messages start with fixed prefixes
(``cases.FINDING_PREFIX`` ...), so one file per run directory makes ``allure generate <run dir>``
show "pkvmlab: finding (waived)", "pkvmlab: emulator artifact (waived)" and "pkvmlab: finding
(strict mode)".  Measured with allure-commandline 2.46: on a matrix run Categories went from 0
items to the 2 emulator artifacts, on a run of a board with a known finding to 1 waived finding.
It is a consumer's configuration: no pkvmlab reader parses these messages (kinds come from the
result types, ``record``).
"""

import json
import re
from pathlib import Path

from .atomic import atomic_write_text
from .cases import ARTIFACT_PREFIX, FINDING_PREFIX, STRICT_PREFIX

NAME = "categories.json"
CATEGORIES = (
    {"name": "pkvmlab: finding (waived)", "matchedStatuses": ["skipped"],
     "messageRegex": re.escape(FINDING_PREFIX) + ".*"},
    {"name": "pkvmlab: emulator artifact (waived)", "matchedStatuses": ["skipped"],
     "messageRegex": re.escape(ARTIFACT_PREFIX) + ".*"},
    {"name": "pkvmlab: finding (strict mode)", "matchedStatuses": ["failed"],
     "messageRegex": re.escape(STRICT_PREFIX) + ".*"},
)


def write_categories(directory):
    """Write ``categories.json`` into ``directory`` (atomically); returns its path."""
    return atomic_write_text(Path(directory) / NAME, json.dumps(list(CATEGORIES), indent=1) + "\n")
