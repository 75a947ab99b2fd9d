"""DSPy programs whose parameters live in the calling session.

A DSPy module's parameters — each predictor's instructions and demos (few-shot examples),
and the LM settings — are read from session variables at every call, so an optimizer in
Elixir changes what Python runs by writing variables, with versions, history, rollback,
optimizer locks and access control as for any variable::

    import dspy
    from dspex_bridge.dspy import program_tool

    dspy.configure(lm=dspy.LM("openai/gpt-4o-mini"))
    qa = dspy.Predict("question -> answer")
    program_tool(qa, name="qa")

The worker then serves two tools: ``qa`` (its arguments are the program's inputs; it returns
the prediction's fields) and ``qa.register_parameters`` (registers the variables below in
the calling session from the program as it is, leaving existing ones alone).

Variables, for a program with prefix ``p`` (default: the tool's name):

==========================  ==========  ===================================================
``p.instructions``          ``string``  the signature's instructions (one predictor)
``p.demos``                 ``json``    a list of example maps, e.g. ``{"question", "answer"}``
``p.NAME.instructions``     ``string``  the same per predictor ``NAME`` (several predictors,
``p.NAME.demos``            ``json``    as ``module.named_predictors()`` names them)
``p.model``                 ``string``  the LM's model name
``p.temperature``           ``float``   the LM's temperature (0.0 .. 2.0)
``p.max_tokens``            ``integer`` the LM's ``max_tokens`` (at least 1)
==========================  ==========  ===================================================

A variable that does not exist leaves that parameter as the module has it. The module object
itself is never changed: each call runs on a copy, so concurrent calls of different sessions
never see each other's parameters.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import dspy

from .context import Context, Variable
from .errors import BridgeError
from .tools import tool

__all__ = ["Parameters", "Bound", "bind", "program_tool", "register_parameters"]

LMSource = Union["dspy.LM", Callable[[], "dspy.LM"], None]

_LM_SETTINGS = ("model", "temperature", "max_tokens")
_LM_TYPES = {"model": "string", "temperature": "float", "max_tokens": "integer"}
_LM_CONSTRAINTS: Dict[str, Dict[str, Any]] = {
    "model": {"min_length": 1},
    "temperature": {"min": 0.0, "max": 2.0},
    "max_tokens": {"min": 1},
}


class Parameters:
    """Where the parameters of ``module`` live in a session: variable names under ``prefix``.

    ``lm_settings`` chooses which LM settings are session variables (any of ``"model"``,
    ``"temperature"``, ``"max_tokens"``; default all three).
    """

    def __init__(self, module: "dspy.Module", prefix: str, lm_settings: Sequence[str] = _LM_SETTINGS) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("prefix must be a non-empty string")
        unknown = [s for s in lm_settings if s not in _LM_SETTINGS]
        if unknown:
            raise ValueError(f"unknown LM settings {unknown}; choose from {list(_LM_SETTINGS)}")
        self.module = module
        self.prefix = prefix
        self.lm_settings = tuple(lm_settings)
        predictors = list(module.named_predictors())
        if not predictors:
            raise ValueError("the module has no predictors")
        single = len(predictors) == 1
        # predictor name -> (instructions variable, demos variable)
        self.predictors: Dict[str, Tuple[str, str]] = {
            name: (
                f"{prefix}.instructions" if single else f"{prefix}.{name}.instructions",
                f"{prefix}.demos" if single else f"{prefix}.{name}.demos",
            )
            for name, _ in predictors
        }
        self.lm_variables: Dict[str, str] = {s: f"{prefix}.{s}" for s in self.lm_settings}

    def variable_names(self) -> List[str]:
        """Every variable this program reads, predictors first."""
        names = [n for pair in self.predictors.values() for n in pair]
        return names + list(self.lm_variables.values())

    def defaults(self, lm: Optional["dspy.LM"] = None) -> Dict[str, Tuple[str, Any, Dict[str, Any]]]:
        """``name -> (type, value, constraints)`` from the module as it is (and ``lm``'s
        settings, for those it has)."""
        out: Dict[str, Tuple[str, Any, Dict[str, Any]]] = {}
        for name, predictor in self.module.named_predictors():
            instructions, demos = self.predictors[name]
            out[instructions] = ("string", predictor.signature.instructions, {})
            out[demos] = ("json", [_demo_map(d) for d in predictor.demos], {})
        if lm is not None:
            for setting, var in self.lm_variables.items():
                value = _lm_setting(lm, setting)
                if value is not None:
                    out[var] = (_LM_TYPES[setting], value, _LM_CONSTRAINTS[setting])
        return out


def register_parameters(ctx: Context, params: Parameters, lm: LMSource = None) -> Dict[str, Any]:
    """Registers in the calling session each parameter variable that is missing, from the
    module's current parameters; existing variables are left as they are.

    Returns ``{"registered": [names], "variables": {name: value}}``: what it registered and
    the value of every parameter variable now.
    """
    base = _resolve_lm(lm)
    existing = ctx.get_variables(params.variable_names())
    registered: List[str] = []
    for name, (type_, value, constraints) in params.defaults(base).items():
        if name in existing:
            continue
        try:
            existing[name] = ctx.register_variable(name, type_, value, constraints)
            registered.append(name)
        except BridgeError as e:
            # Registered meanwhile by another call: that one stands.
            if e.reason != "variable_exists":
                raise
            existing[name] = ctx.get_variable(name)
    return {"registered": registered, "variables": {n: v.value for n, v in existing.items()}}


class Bound:
    """A copy of a program configured from the session, and the LM it runs with; calling it
    runs the program under that LM."""

    def __init__(self, program: "dspy.Module", lm: Optional["dspy.LM"], versions: Dict[str, int]) -> None:
        self.program = program
        self.lm = lm
        #: the version of every parameter variable that was read, by name
        self.versions = versions

    def __call__(self, **inputs: Any) -> "dspy.Prediction":
        if self.lm is None:
            return self.program(**inputs)
        with dspy.context(lm=self.lm):
            return self.program(**inputs)


def bind(ctx: Context, params: Parameters, lm: LMSource = None) -> Bound:
    """Reads the program's parameter variables from the calling session (one round trip)
    and returns a configured copy of the program with its LM."""
    found = ctx.get_variables(params.variable_names())
    program = params.module.deepcopy()
    for name, predictor in program.named_predictors():
        instructions, demos = params.predictors[name]
        if instructions in found:
            value = _typed(found[instructions], str, "a string")
            predictor.signature = predictor.signature.with_instructions(value)
        if demos in found:
            predictor.demos = _demos(found[demos], predictor)
    base = _resolve_lm(lm)
    settings = {
        setting: found[var].value for setting, var in params.lm_variables.items() if var in found
    }
    return Bound(program, _configured_lm(base, settings), {n: v.version for n, v in found.items()})


def program_tool(
    module: "dspy.Module",
    name: str,
    prefix: Optional[str] = None,
    lm: LMSource = None,
    lm_settings: Sequence[str] = _LM_SETTINGS,
    outputs: Optional[Mapping[str, str]] = None,
    usage: Optional[str] = None,
) -> Parameters:
    """Serves ``module`` as the tool ``name`` (and ``name.register_parameters``).

    ``prefix`` names its variables (default ``name``); ``lm`` is a ``dspy.LM`` or a function
    returning one (default: ``dspy.settings.lm`` at each call). ``outputs`` maps prediction
    fields to variables written after each call (``{"answer": "qa.last_answer"}``);
    ``usage`` names a variable that gets the call's LM usage (``{model: {prompt_tokens,
    ...}}``). Both are ``json`` variables, registered on first write. Returns the
    ``Parameters``.
    """
    params = Parameters(module, prefix or name, lm_settings)
    writes = dict(outputs or {})

    def run(ctx: Context, **inputs: Any) -> Dict[str, Any]:
        bound = bind(ctx, params, lm)
        with dspy.context(track_usage=usage is not None):
            prediction = bound(**inputs)
        result = {k: _crossable(v) for k, v in prediction.items()}
        for field, var in writes.items():
            _write(ctx, var, result.get(field))
        if usage is not None:
            _write(ctx, usage, _crossable(prediction.get_lm_usage() or {}))
        return result

    def register(ctx: Context) -> Dict[str, Any]:
        return register_parameters(ctx, params, lm)

    tool(run, name=name)
    tool(register, name=f"{name}.register_parameters")
    return params


# -------------------------------------------------------------------------------------------


def _resolve_lm(lm: LMSource) -> Optional["dspy.LM"]:
    if lm is None:
        return dspy.settings.lm
    if isinstance(lm, dspy.BaseLM):
        return lm
    return lm()


# Copies of an LM with other settings, kept so that a call does not copy the LM each time.
_COPIES: "OrderedDict[Tuple[int, Tuple[Tuple[str, Any], ...]], dspy.LM]" = OrderedDict()
_COPIES_LOCK = threading.Lock()
_MAX_COPIES = 64


def _configured_lm(base: Optional["dspy.LM"], settings: Dict[str, Any]) -> Optional["dspy.LM"]:
    if base is None:
        if settings:
            raise RuntimeError("LM settings are set in the session but no LM is configured")
        return None
    changes = {k: v for k, v in settings.items() if _lm_setting(base, k) != v}
    if not changes:
        return base
    if "temperature" in changes:
        changes["temperature"] = _typed_value(changes["temperature"], (int, float), "a number")
    if "max_tokens" in changes:
        changes["max_tokens"] = _typed_value(changes["max_tokens"], int, "an integer")
    if "model" in changes:
        changes["model"] = _typed_value(changes["model"], str, "a string")
    key = (id(base), tuple(sorted(changes.items())))
    with _COPIES_LOCK:
        copy = _COPIES.get(key)
        if copy is not None:
            _COPIES.move_to_end(key)
            return copy
    copy = base.copy(**changes)
    with _COPIES_LOCK:
        _COPIES[key] = copy
        while len(_COPIES) > _MAX_COPIES:
            _COPIES.popitem(last=False)
    return copy


def _lm_setting(lm: Any, setting: str) -> Any:
    if lm is None:
        return None
    if setting == "model":
        return getattr(lm, "model", None)
    return getattr(lm, "kwargs", {}).get(setting)


def _demo_map(demo: Any) -> Dict[str, Any]:
    data = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
    return {str(k): _crossable(v) for k, v in data.items()}


def _demos(var: Variable, predictor: Any) -> List["dspy.Example"]:
    if not isinstance(var.value, list) or not all(isinstance(d, dict) for d in var.value):
        raise TypeError(f"variable {var.name!r} must be a list of example maps, got {var.value!r:.200}")
    inputs = list(predictor.signature.input_fields)
    return [dspy.Example(**{str(k): v for k, v in d.items()}).with_inputs(*inputs) for d in var.value]


def _typed(var: Variable, kind: Any, what: str) -> Any:
    if not isinstance(var.value, kind):
        raise TypeError(f"variable {var.name!r} must be {what}, got {var.value!r:.200}")
    return var.value


def _typed_value(value: Any, kind: Any, what: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"LM setting must be {what}, got {value!r:.200}")
    return value


def _crossable(value: Any) -> Any:
    """``value`` as something the bridge carries (other objects as their text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _crossable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_crossable(v) for v in value]
    if hasattr(value, "toDict"):
        return _crossable(value.toDict())
    return str(value)


def _write(ctx: Context, name: str, value: Any) -> Variable:
    try:
        return ctx.set_variable(name, value)
    except BridgeError as e:
        if e.reason != "variable_not_found":
            raise
    try:
        return ctx.register_variable(name, "json", value)
    except BridgeError as e:
        # Registered meanwhile by another call: write over it.
        if e.reason != "variable_exists":
            raise
        return ctx.set_variable(name, value)
