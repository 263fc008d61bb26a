"""The ``linkage permissions`` command line: exit codes and what it prints."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from permission_list_helpers import CsvRows, index_of

from permission_list.cli import main
from permission_list.loader import DEFAULT_PATH
from permission_list.model import COLUMNS


def check_argv(
    item: str,
    *extra: str,
    requester: str = "municipality",
    procedure: str = "table2:82",
    provider: str = "pension_service",
) -> list[str]:
    return [
        "check",
        *("--requester-type", requester, "--procedure", procedure),
        *("--provider-type", provider, "--item", item),
        *extra,
    ]


def test_check_allowed_exits_0_and_prints_row_and_basis(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(check_argv("pension_benefit", "--on", "2024-05-26")) == 0
    out = capsys.readouterr().out
    assert out.startswith("ALLOWED on 2024-05-26")
    assert "basis: 番号法 別表第二 第八十二項" in out
    assert "table2:82 pair 1" in out


def test_check_allowed_today_prints_the_new_basis(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(check_argv("pension_benefit", "--on", "2024-05-27")) == 0
    assert "番号法第19条第8号" in capsys.readouterr().out


def test_check_denied_exits_3_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(check_argv("local_tax")) == 3
    out = capsys.readouterr().out
    assert "DENIED" in out
    assert "ITEM_NOT_ALLOWED" in out


def test_check_before_linkage_began_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(check_argv("pension_benefit", "--on", "2017-05-29")) == 3
    assert "OUTSIDE_VALIDITY" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (check_argv("pension"), "--item"),
        (check_argv("pension_benefit", "--on", "2024-02-30"), "--on"),
        (check_argv("pension_benefit", "--on", "yesterday"), "--on"),
        (check_argv("pension_benefit", requester="mayor"), "--requester-type"),
        (check_argv("pension_benefit", provider="jps"), "--provider-type"),
        (check_argv("pension_benefit", procedure="table2:999"), "--procedure"),
        (check_argv("pension_benefit", procedure="row 82"), "--procedure"),
    ],
)
def test_check_bad_input_exits_2_naming_the_field(
    argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert f": {field}: " in capsys.readouterr().err


def test_check_accepts_a_row_number_for_the_procedure() -> None:
    assert main(check_argv("pension_benefit", procedure="82")) == 0


def test_missing_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--item", "pension_benefit"]) == 2
    assert "required" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "linkage permissions" in capsys.readouterr().out


def test_list_filters_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--requester-type", "municipality", "--statute", "高齢者の医療"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].split()[0] for line in lines] == ["82", "82"]


def test_list_tuples_for_one_procedure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--procedure", "83", "--tuples"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "mhlw\ttable2:83\tmunicipality\tspecial_collection_notice",
        "mutual_aid_association\ttable2:83\tmunicipality\tspecial_collection_notice",
    ]


def test_list_rejects_an_unknown_filter_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--item", "taxes"]) == 2
    assert "--item" in capsys.readouterr().err


def test_show_prints_a_row_with_its_pairs_and_bases(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "56-2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("table2:56-2  番号法 別表第二 第五十六の二項")
    for expected in ("災害対策基本法", "pair 5", "条番号 未確認"):
        assert expected in out


def test_show_a_deleted_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "table2:36"]) == 0
    assert "削除" in capsys.readouterr().out


def test_show_an_unknown_row_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "121"]) == 2
    assert "ROW" in capsys.readouterr().err


def test_vocabulary_lists_ids_with_japanese_labels(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vocabulary", "capacities"]) == 0
    assert "municipality\t市町村長\t" in capsys.readouterr().out


def test_validate_a_good_file_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(DEFAULT_PATH)]) == 0
    assert "OK: 260 rows, 121 procedures, 667 allowed tuples" in capsys.readouterr().out


def test_validate_a_bad_file_exits_1_with_file_line_field_reason(
    committed_rows: CsvRows,
    write_csv: Callable[[CsvRows], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = index_of(committed_rows, "table2:82", 1) + 1
    committed_rows[line - 1][COLUMNS.index("items")] = "pension"
    path = write_csv(committed_rows)
    assert main(["validate", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}:{line}: items: 'pension' is not in the vocabulary"
    ]


def test_validate_a_missing_file_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path / "absent.csv")]) == 1
    assert ": file: " in capsys.readouterr().out


def test_diff_of_identical_files_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy.csv"
    shutil.copyfile(DEFAULT_PATH, copy)
    assert main(["diff", str(DEFAULT_PATH), str(copy)]) == 0
    assert "0 difference(s)" in capsys.readouterr().out


def test_diff_reports_rows_and_tuples_added_removed_and_changed(
    committed_rows: CsvRows,
    write_csv: Callable[[CsvRows], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # New version: row 83 loses 共済組合等 as requester, row 82 loses its second pair.
    index = index_of(committed_rows, "table2:83", 1)
    committed_rows[index][COLUMNS.index("requesters")] = "mhlw"
    del committed_rows[index_of(committed_rows, "table2:82", 2)]
    new = write_csv(committed_rows)
    assert main(["diff", str(DEFAULT_PATH), str(new)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "- row table2:82 pair 2" in out
    assert "~ row table2:83 pair 1: requesters" in out
    assert "- tuple municipality table2:82 regional_association late_stage_medical_premium" in out
    assert "- tuple mutual_aid_association table2:83 municipality special_collection_notice" in out
    assert out[-1].endswith("4 difference(s)")


def test_diff_of_an_invalid_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("procedure\n", encoding="utf-8")
    assert main(["diff", str(DEFAULT_PATH), str(bad)]) == 2
    assert "header" in capsys.readouterr().err


def test_module_entry_point_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "permission_list.cli", *check_argv("local_tax")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3
    assert "ITEM_NOT_ALLOWED" in result.stdout
