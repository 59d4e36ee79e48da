from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from outlast import ConfigError, InvalidInput, JobContext, Outlast


def test_input_is_validated_from_the_signature():
    ot = Outlast(store="memory://")

    @ot.job()
    async def report(ctx: JobContext, day: date, rows: Annotated[int, Field(ge=0)] = 10) -> None: ...

    definition = ot.definition("report")
    assert definition.context_param == "ctx"
    assert definition.validate({"day": "2026-01-02"}) == {"day": "2026-01-02", "rows": 10}
    assert definition.arguments({"day": "2026-01-02", "rows": 3}) == {"day": date(2026, 1, 2), "rows": 3}
    with pytest.raises(InvalidInput) as info:
        definition.validate({"rows": -1, "typo": 1})
    locs = sorted(tuple(e["loc"]) for e in info.value.errors)
    assert locs == [("day",), ("rows",), ("typo",)]
    assert all("input" not in e for e in info.value.errors)  # never echo what the client sent


def test_parameter_names_may_shadow_basemodel_attributes():
    ot = Outlast(store="memory://")

    @ot.job()
    def export(json: str, schema: int = 1, copy: bool = False) -> None: ...

    assert ot.definition("export").validate({"json": "x"}) == {"json": "x", "schema": 1, "copy": False}


def test_sync_and_async_are_told_apart():
    ot = Outlast(store="memory://")

    @ot.job()
    def a() -> None: ...

    @ot.job(name="b")
    async def b_job() -> None: ...

    assert not ot.definition("a").is_async
    assert ot.definition("b").is_async


@pytest.mark.parametrize("name", ["", "has space", "../x", "x" * 200])
def test_bad_names_are_refused(name: str):
    ot = Outlast(store="memory://")
    with pytest.raises(ConfigError):
        ot.job(name=name)(lambda: None)


def test_var_args_are_refused():
    ot = Outlast(store="memory://")
    with pytest.raises(ConfigError):

        @ot.job()
        def bad(*args: int) -> None: ...


def test_two_functions_cannot_share_a_name():
    ot = Outlast(store="memory://")
    ot.job(name="x")(lambda: None)
    with pytest.raises(ConfigError):
        ot.job(name="x")(lambda: None)


class Point(BaseModel):  # its own config: pydantic allows inf and nan here by default
    x: float = 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "inf", "nan", "1e400"])
def test_numbers_must_be_finite_typed_nested_or_untyped(bad: object):
    ot = Outlast(store="memory://")

    @ot.job()
    async def plot(seconds: float = 1.0, point: Point | None = None, extra: Any = None) -> None: ...

    definition = ot.definition("plot")
    for strict_json in (False, True):
        for raw, loc in (({"seconds": bad}, ["seconds"]), ({"point": {"x": bad}}, ["point", "x"])):
            if isinstance(bad, str) and strict_json:
                continue  # a string is no number for a JSON body
            with pytest.raises(InvalidInput) as info:
                definition.validate(raw, strict_json=strict_json)
            assert info.value.errors[0]["loc"] == loc
            assert info.value.errors[0]["type"] == "finite_number"
        if isinstance(bad, float):  # untyped: not stored as null, nor as NaN
            with pytest.raises(InvalidInput, match="finite"):
                definition.validate({"extra": [1, {"deep": bad}]}, strict_json=strict_json)
    assert definition.validate({"extra": "inf"}) == {"seconds": 1.0, "point": None, "extra": "inf"}  # just text
