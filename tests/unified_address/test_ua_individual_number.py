"""Individual numbers at the door: the check digit, and errors that never echo the number."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest
from ua_support import ORG, Stub, individual_numbers

from linkage.errors import InvalidArgument, remote_error
from linkage.v1 import unified_address_pb2
from unified_address.individual_number import check_digit, complete, is_valid, validate
from unified_address.vault import INVALID_INDIVIDUAL_NUMBER, parse_individual_number

# Valid numbers whose check digit is not 0 (see the test below on why that matters), plus a
# few fixed ones: the official weights applied by hand.
VALID = [*individual_numbers(12, seed=11, nonzero_check=True), "123456789018", "111111111118"]


def _corruptions(number: str) -> list[tuple[int, str]]:
    """Every single-digit change of ``number``: each position, each other digit."""
    return [
        (position, number[:position] + digit + number[position + 1 :])
        for position in range(12)
        for digit in "0123456789"
        if digit != number[position]
    ]


def test_hand_computed_check_digits_are_accepted() -> None:
    # 12345678901: sum of P_n*Q_n from the right is 1*2+0*3+9*4+8*5+7*6+6*7+5*2+4*3+3*4+2*5+1*6
    # = 212, 212 mod 11 = 3, check = 11 - 3 = 8.
    assert check_digit("12345678901") == 8
    assert validate("123456789018") == "123456789018"
    # 11111111111: weights 2..7,2..6 sum to 47, 47 mod 11 = 3, check 8.
    assert is_valid("111111111118")


@pytest.mark.parametrize("number", VALID)
def test_valid_numbers_pass(number: str) -> None:
    assert validate(number) == number
    assert parse_individual_number(number) == number


@pytest.mark.parametrize("number", VALID)
def test_every_single_digit_corruption_of_a_valid_number_is_rejected(number: str) -> None:
    corrupted = _corruptions(number)
    assert len(corrupted) == 12 * 9
    accepted = [(position, bad) for position, bad in corrupted if is_valid(bad)]
    assert accepted == []
    for _, bad in corrupted:
        with pytest.raises(InvalidArgument) as caught:
            parse_individual_number(bad)
        assert caught.value.reason == INVALID_INDIVIDUAL_NUMBER


def test_check_digit_zero_cannot_tell_remainders_zero_and_one_apart() -> None:
    """The statutory formula maps remainders 0 and 1 both to check digit 0, so for a number
    whose check digit is 0 some single-digit changes keep it valid. This pins that property of
    the algorithm (which is why the exhaustive test above uses non-zero check digits); the
    check digit position itself is still always protected."""
    zero_check = [n for n in individual_numbers(200, seed=3) if n.endswith("0")]
    weak = {
        number: [(pos, bad) for pos, bad in _corruptions(number) if is_valid(bad)]
        for number in zero_check
    }
    assert any(weak.values()), "some check-0 number has an undetectable single-digit change"
    for corrupted in weak.values():
        assert all(position < 11 for position, _ in corrupted)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "12345678901",  # 11 digits
        "1234567890180",  # 13 digits
        "12345678901a",
        "１２３４５６７８９０１８",  # full-width digits: isdigit() but not ASCII
        " 23456789018",
        "-23456789018",
    ],
)
def test_malformed_numbers_are_rejected_without_echoing_them(bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_individual_number(bad)
    error = caught.value
    assert error.reason == INVALID_INDIVIDUAL_NUMBER
    assert [v.field for v in error.violations] == ["individual_number"]
    shown = error.message + "".join(v.description for v in error.violations)
    assert not bad or bad.strip() not in shown


def test_complete_appends_the_check_digit() -> None:
    for number in VALID:
        assert complete(number[:11]) == number


@pytest.mark.parametrize("position", [0, 5, 10, 11])
async def test_register_person_rejects_a_corrupted_number_with_invalid_argument(
    connect: Callable[[str], Awaitable[Stub]], position: int
) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    good = VALID[0]
    digit = str((int(good[position]) + 1) % 10)
    bad = good[:position] + digit + good[position + 1 :]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterPerson(
            unified_address_pb2.RegisterPersonRequest(address_number="A-1", individual_number=bad)
        )
    error = remote_error(caught.value)
    assert error.code == "INVALID_ARGUMENT"
    assert error.reason == INVALID_INDIVIDUAL_NUMBER
    assert [v.field for v in error.violations] == ["individual_number"]
    assert bad not in error.message
    assert good not in error.message
    assert all(bad not in v.description for v in error.violations)
