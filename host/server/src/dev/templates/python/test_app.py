"""The handler's tests, run natively: `make test`."""
import pytest

from infergate import Ctx, HttpError

from app import Hello, greet


def test_greets_by_name():
    assert greet(Ctx.for_tests("acme"), Hello(name="Ada")).message == "Hello, Ada! (tenant acme)"


def test_an_empty_name_is_refused():
    with pytest.raises(HttpError) as refused:
        greet(Ctx.for_tests("acme"), Hello(name=" "))
    assert (refused.value.status, refused.value.code) == (422, "invalid_request")
