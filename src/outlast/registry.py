"""Job definitions: a function, the pydantic model of its input, and how to run it."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from outlast.context import JobContext
from outlast.exceptions import ConfigError, InvalidInput
from outlast.parsing import FINITE, non_finite

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")
CONTEXT_PARAM_NAMES = ("ctx", "context")

JobFunction = Callable[..., Any]


@dataclasses.dataclass(frozen=True, slots=True)
class JobDefinition:
    """A registered job. Made by `Outlast.job()`; rarely built by hand."""

    name: str
    fn: JobFunction
    input_model: type[BaseModel]
    context_param: str | None
    is_async: bool
    timeout_s: float | None = None
    max_attempts: int | None = None
    retry_on: tuple[type[BaseException], ...] = ()
    backoff_s: float = 1.0
    backoff_max_s: float = 300.0
    retention_s: float | None = None
    # False for the jobs of long-running routes: `POST /jobs/{name}` does not run them.
    public: bool = True

    @classmethod
    def from_function(cls, fn: JobFunction, *, name: str | None = None, **options: Any) -> JobDefinition:
        name = name or fn.__name__
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"{name!r} is not a valid job name (letters, digits, '_', '.', '-'; 128 at most)")
        model, context_param = _input_model(fn, name)
        return cls(
            name=name,
            fn=fn,
            input_model=model,
            context_param=context_param,
            is_async=inspect.iscoroutinefunction(fn),
            **options,
        )

    def validate(self, raw: Any, *, strict_json: bool = False) -> dict[str, Any]:
        """The input as stored: validated, defaults filled in, JSON-ready.

        With `strict_json`, as JSON types are read strictly (`false` is no
        integer, `"3"` no number; dates still come as ISO strings): for bodies.
        Without, as Python calls and query strings are (`"3"` is 3).
        Numbers must be finite: NaN and infinities are refused, typed or not.
        """
        self._check_finite(raw)
        try:
            if strict_json:
                model = self.input_model.model_validate_json(json.dumps(raw), strict=True)
            else:
                model = self.input_model.model_validate(raw)
        except ValidationError as exc:
            raise InvalidInput(f"the input does not fit the parameters of {self.name!r}", _field_errors(exc)) from None
        self._check_finite(model.model_dump(by_alias=True))  # e.g. "inf" for a nested model's float
        dumped: dict[str, Any] = model.model_dump(mode="json", by_alias=True)
        return dumped

    def _check_finite(self, value: Any) -> None:
        # A NaN or an infinity would crash the job, hold a worker until canceled
        # (`sleep(inf)`), or be stored as JSON no client can read.
        path = non_finite(value)
        if path is not None:
            errors = [{"loc": path, "msg": FINITE, "type": "finite_number"}]
            raise InvalidInput(f"the input does not fit the parameters of {self.name!r}: {FINITE}", errors)

    def arguments(self, input: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the function, typed as its signature says."""
        model = self.input_model.model_validate(input)
        return {field.alias or name: getattr(model, name) for name, field in type(model).model_fields.items()}

    def input_schema(self) -> dict[str, Any]:
        return self.input_model.model_json_schema(by_alias=True)


def _field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    # No `input` member: it would echo whatever the client sent back to it.
    return [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def _input_model(fn: JobFunction, name: str) -> tuple[type[BaseModel], str | None]:
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except (NameError, TypeError) as exc:
        raise ConfigError(f"the annotations of job {name!r} cannot be resolved: {exc}") from exc
    fields: dict[str, Any] = {}
    context_param = None
    for index, param in enumerate(signature.parameters.values()):
        hint = hints.get(param.name, Any)
        if hint is JobContext or (index == 0 and param.name in CONTEXT_PARAM_NAMES and hint is Any):
            context_param = param.name
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ConfigError(f"job {name!r}: parameter {param.name!r} must be an ordinary named parameter")
        default = ... if param.default is param.empty else param.default
        # Fields get neutral names, the parameter's name as alias: a parameter
        # may be called `json` or `schema` without shadowing BaseModel.
        fields[f"p{index}"] = (hint, Field(default, alias=param.name))
    config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model = create_model(f"{_camel(name)}Input", __config__=config, **fields)
    return model, context_param


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]", name) if part) or "Job"
