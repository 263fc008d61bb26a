"""Log lines never carry a personal value: identifiers masked, personal data dropped."""

from __future__ import annotations

import json

import pytest

from linkage import logs


def test_a_log_line_masks_identifiers_and_drops_personal_data(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json=True)
    logs.get_logger("test").info(
        "registered",
        unified_number="100000000000001",
        individual_number="123456789018",
        note="retrying 123456789018 now",
    )
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["unified_number"].startswith("~")
    assert "100000000000001" not in json.dumps(line)
    assert line["individual_number"] == "<redacted>"
    assert "123456789018" not in line["note"]


def test_the_mask_is_stable_within_a_run_so_lines_can_be_correlated() -> None:
    assert logs.mask("abc") == logs.mask("abc")
    assert logs.mask("abc") != logs.mask("abd")
