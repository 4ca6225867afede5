import pytest

from stowkit.corelib import errors


def test_exit_codes_are_distinct_and_not_usage_code():
    codes = list(errors.EXIT_CODES.values())
    assert len(codes) == len(set(codes))
    assert 2 not in codes  # argparse's usage error keeps its meaning
    assert 0 not in codes


def test_every_error_class_is_in_the_table():
    classes = {
        c.__name__
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.StowkitError)
    }
    assert classes == set(errors.EXIT_CODES)


def test_message_is_folded_to_one_line():
    err = errors.NotFound("volume 'x'\n  not found\tanywhere")
    assert str(err) == "volume 'x' not found anywhere"
    assert err.message == str(err)


@pytest.mark.parametrize(
    "cls,status",
    [
        (errors.InvalidArgument, 400),
        (errors.InvalidName, 400),
        (errors.NotFound, 404),
        (errors.AlreadyExists, 409),
        (errors.Conflict, 409),
        (errors.Locked, 423),
        (errors.BackendUnavailable, 503),
        (errors.Forbidden, 403),
        (errors.PreconditionFailed, 412),
    ],
)
def test_http_status(cls, status):
    assert cls("x").http_status == status


def test_locked_is_a_conflict_and_invalid_name_an_invalid_argument():
    assert issubclass(errors.Locked, errors.Conflict)
    assert issubclass(errors.InvalidName, errors.InvalidArgument)
