"""Command line for the permission list: ``linkage permissions check|list|show|validate|diff``.

Owns the human interface to the dataset: check one flow (exit 0 allowed, 3 denied, 2 bad
input), list and show rows, list the vocabulary, validate a CSV (exit 0/1, one
``FILE:LINE: field: reason`` line per problem) and diff two versions (exit 0 same, 1 different).
Mounted by the ``linkage`` CLI; ``python -m permission_list.cli`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import TextIO

from linkage.cli import parse_args
from permission_list import vocabulary
from permission_list.checker import PermissionList
from permission_list.loader import DEFAULT_PATH, load, load_default, parse_date, validate
from permission_list.model import (
    COLUMNS,
    UNKNOWN_CAPACITY,
    UNKNOWN_ITEM,
    UNKNOWN_PROCEDURE,
    PermissionListError,
    Row,
    normalize_procedure,
    procedure_sort_key,
)

PROG = "linkage permissions"
EXIT_OK = 0
EXIT_FAILED = 1  # validate: invalid file; diff: files differ
EXIT_BAD_INPUT = 2
EXIT_DENIED = 3


class _BadInputError(Exception):
    """A user error to report as ``<field>: <reason>`` with exit code 2."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")


def main(argv: list[str]) -> int:
    args = parse_args(_parser(), argv)
    if isinstance(args, int):  # argparse exited on --help (0) or a usage error (2)
        return args
    try:
        code: int = args.run(args, sys.stdout)
    except _BadInputError as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PermissionListError as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The permission list (照会許可用照合リスト) from 番号法 別表第二.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check", help="may this flow happen? (exit 0 yes, 3 no, 2 bad input)"
    )
    check.add_argument(
        "--requester-type", required=True, help="requester capacity, e.g. municipality"
    )
    check.add_argument("--procedure", required=True, help="procedure, e.g. table2:82 (or 82, 56-2)")
    check.add_argument(
        "--provider-type", required=True, help="provider capacity, e.g. pension_service"
    )
    check.add_argument("--item", required=True, help="data item category, e.g. pension_benefit")
    check.add_argument("--on", help="date to check, YYYY-MM-DD (default: today)")
    _file_option(check)
    check.set_defaults(run=_run_check)

    listing = commands.add_parser("list", help="list rows, optionally filtered")
    listing.add_argument("--requester-type", help="only rows this capacity may query under")
    listing.add_argument("--provider-type", help="only pairs naming this provider capacity")
    listing.add_argument("--item", help="only pairs allowing this item")
    listing.add_argument("--procedure", help="only this procedure (table2:82, 82, 56-2)")
    listing.add_argument("--statute", help="only affairs under a statute containing this text")
    listing.add_argument("--tuples", action="store_true", help="print allowed 4-tuples, not rows")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    _file_option(listing)
    listing.set_defaults(run=_run_list)

    show = commands.add_parser("show", help="show one law row with its pairs and basis")
    show.add_argument("row", metavar="ROW", help="procedure id or row number: table2:82, 82, 56-2")
    _file_option(show)
    show.set_defaults(run=_run_show)

    vocab = commands.add_parser("vocabulary", help="list capacities and item categories")
    vocab.add_argument("kind", choices=("capacities", "items"), help="which list")
    vocab.set_defaults(run=_run_vocabulary)

    check_file = commands.add_parser("validate", help="check a permission list CSV (exit 0/1)")
    check_file.add_argument("file", metavar="FILE", type=Path)
    check_file.set_defaults(run=_run_validate)

    diff = commands.add_parser("diff", help="rows and tuples added, removed or changed")
    diff.add_argument("old", metavar="OLD", type=Path)
    diff.add_argument("new", metavar="NEW", type=Path)
    diff.set_defaults(run=_run_diff)
    return parser


def _file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file",
        type=Path,
        default=None,
        help=f"permission list CSV (default: {DEFAULT_PATH.name})",
    )


def _list_from(args: argparse.Namespace) -> PermissionList:
    return load_default() if args.file is None else load(args.file)


# --- check -------------------------------------------------------------------------------------


def _run_check(args: argparse.Namespace, out: TextIO) -> int:
    on = _date_option(args.on)
    procedure = _procedure_option(args.procedure, "--procedure")
    permissions = _list_from(args)
    decision = permissions.check(args.requester_type, procedure, args.provider_type, args.item, on)
    if decision.reason == UNKNOWN_CAPACITY:
        requester_known = args.requester_type in vocabulary.CAPACITIES
        field = "--provider-type" if requester_known else "--requester-type"
        raise _BadInputError(field, decision.detail)
    if decision.reason == UNKNOWN_ITEM:
        raise _BadInputError("--item", decision.detail)
    if decision.reason == UNKNOWN_PROCEDURE:
        raise _BadInputError("--procedure", decision.detail)
    day = (on or date.today()).isoformat()
    if decision.allowed:
        assert decision.row is not None  # an allowed decision always names its row
        print(f"ALLOWED on {day}: {decision.detail}", file=out)
        print(f"  basis: {decision.basis}", file=out)
        _print_row_line(decision.row, out, indent="  row:   ")
        print(f"  affair: {decision.row.affair}", file=out)
        print(f"  list version: {permissions.version}", file=out)
        return EXIT_OK
    print(f"DENIED on {day}: {decision.reason}: {decision.detail}", file=out)
    if decision.row is not None:
        _print_row_line(decision.row, out, indent="  row:   ")
    return EXIT_DENIED


def _date_option(text: str | None) -> date | None:
    if text is None:
        return None
    parsed = parse_date(text)
    if parsed is None:
        raise _BadInputError("--on", f"{text!r} is not a date (YYYY-MM-DD)")
    return parsed


def _procedure_option(text: str, field: str) -> str:
    try:
        return normalize_procedure(text)
    except ValueError:
        raise _BadInputError(
            field, f"{text!r} is not a procedure (table2:82, 82 or 56-2)"
        ) from None


# --- list, show, vocabulary --------------------------------------------------------------------


def _run_list(args: argparse.Namespace, out: TextIO) -> int:
    for field, value, known in (
        ("--requester-type", args.requester_type, vocabulary.CAPACITIES),
        ("--provider-type", args.provider_type, vocabulary.CAPACITIES),
        ("--item", args.item, vocabulary.ITEMS),
    ):
        if value is not None and value not in known:
            raise _BadInputError(field, f"{value!r} is not in the vocabulary")
    procedure = None if args.procedure is None else _procedure_option(args.procedure, "--procedure")
    rows = [row for row in _list_from(args).rows() if _matches(row, args, procedure)]
    if args.tuples:
        _print_tuples(rows, args, out)
    else:
        for row in rows:
            if args.json:
                print(json.dumps(_row_json(row), ensure_ascii=False), file=out)
            else:
                _print_row_line(row, out)
    return EXIT_OK


def _matches(row: Row, args: argparse.Namespace, procedure: str | None) -> bool:
    return (
        (procedure is None or row.procedure == procedure)
        and (args.requester_type is None or args.requester_type in row.requesters)
        and (args.provider_type is None or args.provider_type in row.providers)
        and (args.item is None or args.item in row.items)
        and (args.statute is None or args.statute in row.statute)
    )


def _print_tuples(rows: Sequence[Row], args: argparse.Namespace, out: TextIO) -> None:
    for row in rows:
        for requester in row.requesters:
            for provider in row.providers:
                for item in row.items:
                    if (
                        (args.requester_type in (None, requester))
                        and (args.provider_type in (None, provider))
                        and (args.item in (None, item))
                    ):
                        values = (requester, row.procedure, provider, item)
                        if args.json:
                            print(json.dumps(values), file=out)
                        else:
                            print("\t".join(values), file=out)


def _print_row_line(row: Row, out: TextIO, indent: str = "") -> None:
    if row.deleted:
        print(f"{indent}{row.procedure} ({row.row_label}項) 削除 (deleted)", file=out)
        return
    print(
        f"{indent}{row.procedure} pair {row.pair}: {','.join(row.requesters)} -> "
        f"{','.join(row.providers)}: {','.join(row.items)}  [{row.statute}]",
        file=out,
    )


def _row_json(row: Row) -> dict[str, object]:
    values: dict[str, object] = {}
    for column in COLUMNS:
        value = getattr(row, column)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, date):
            value = value.isoformat()
        values[column] = value
    values["line"] = row.line
    return values


def _run_show(args: argparse.Namespace, out: TextIO) -> int:
    procedure = _procedure_option(args.row, "ROW")
    permissions = _list_from(args)
    rows = permissions.rows_for(procedure)
    if not rows:
        raise _BadInputError("ROW", f"{procedure} is not in the permission list")
    first = rows[0]
    print(f"{procedure}  番号法 別表第二 第{first.row_label}項", file=out)
    if first.deleted:
        print("  削除 (deleted): no requester, affair or provider.", file=out)
        return EXIT_OK
    print(f"  requesters (情報照会者): {_labelled(first.requesters)}", file=out)
    print(f"    law text: {first.requester_text}", file=out)
    print(f"  statute: {first.statute}", file=out)
    print(f"  affair (事務): {first.affair}", file=out)
    print(f"  valid: {first.valid_from} to {first.valid_to or 'no end date'}", file=out)
    print(f"  basis until 2024-05-26: {first.basis_until_2024}", file=out)
    print(f"  basis from 2024-05-27:  {first.basis_from_2024}", file=out)
    for row in rows:
        print(f"  pair {row.pair} (line {row.line}):", file=out)
        print(f"    providers (情報提供者): {_labelled(row.providers)}", file=out)
        print(f"      law text: {row.provider_text}", file=out)
        print(f"    items (特定個人情報): {_labelled(row.items, items=True)}", file=out)
        print(f"      law text: {row.item_text}", file=out)
    return EXIT_OK


def _labelled(ids: Sequence[str], items: bool = False) -> str:
    label = vocabulary.item_label if items else vocabulary.capacity_label
    return ", ".join(f"{i} ({label(i)})" for i in ids)


def _run_vocabulary(args: argparse.Namespace, out: TextIO) -> int:
    if args.kind == "capacities":
        for capacity in vocabulary.CAPACITIES.values():
            print(f"{capacity.id}\t{capacity.label}\t{capacity.english}", file=out)
    else:
        for item in vocabulary.ITEMS.values():
            print(f"{item.id}\t{item.label}\t{item.english}", file=out)
    return EXIT_OK


# --- validate, diff ----------------------------------------------------------------------------


def _run_validate(args: argparse.Namespace, out: TextIO) -> int:
    errors = validate(args.file)
    for error in errors:
        print(str(error), file=out)
    if errors:
        print(f"{args.file}: {len(errors)} problem(s)", file=sys.stderr)
        return EXIT_FAILED
    permissions = load(args.file)
    tuples = sum(1 for _ in permissions.allowed_tuples())
    print(
        f"{args.file}: OK: {len(permissions.rows())} rows, {len(permissions.procedures())} "
        f"procedures, {tuples} allowed tuples, version {permissions.version}",
        file=out,
    )
    return EXIT_OK


def _run_diff(args: argparse.Namespace, out: TextIO) -> int:
    old, new = load(args.old), load(args.new)
    old_rows = {(r.procedure, r.pair): r for r in old.rows()}
    new_rows = {(r.procedure, r.pair): r for r in new.rows()}
    changes = 0
    for key in sorted(old_rows.keys() - new_rows.keys(), key=_row_key_order):
        changes += _say(out, f"- row {key[0]} pair {key[1]}")
    for key in sorted(new_rows.keys() - old_rows.keys(), key=_row_key_order):
        changes += _say(out, f"+ row {key[0]} pair {key[1]}")
    for key in sorted(old_rows.keys() & new_rows.keys(), key=_row_key_order):
        fields = [c for c in COLUMNS if getattr(old_rows[key], c) != getattr(new_rows[key], c)]
        if fields:
            changes += _say(out, f"~ row {key[0]} pair {key[1]}: {', '.join(fields)}")
    old_tuples, new_tuples = set(old.allowed_tuples()), set(new.allowed_tuples())
    for values in sorted(old_tuples - new_tuples):
        changes += _say(out, "- tuple " + " ".join(values))
    for values in sorted(new_tuples - old_tuples):
        changes += _say(out, "+ tuple " + " ".join(values))
    print(f"{old.version} -> {new.version}: {changes} difference(s)", file=out)
    return EXIT_FAILED if changes else EXIT_OK


def _row_key_order(key: tuple[str, int]) -> tuple[tuple[int, int], int]:
    return procedure_sort_key(key[0]), key[1]


def _say(out: TextIO, text: str) -> int:
    print(text, file=out)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
