"""The loss registry: ``@register_loss`` records a pure loss function, its typed hyperparameters and
what it needs from the trainer (a reference model? paired, unpaired or single-completion data?).

The trainer only ever asks a ``LossSpec`` these questions; it never tests a loss's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from prefopt.errors import PrefoptError

DataKind = Literal["paired", "unpaired", "sft"]

# Inputs beyond per-sequence log-probs that a loss can ask the trainer for (``needs=`` or ``hp.needs()``):
#   policy_tokens  -> extras["token_logps"] (N,) and extras["token_rows"] (N,): the policy's log-prob of each
#                     completion token and the batch row it belongs to (rows of [chosen; rejected] for pairs).
#   ref_tokens     -> extras["ref_token_logps"] (N,): the same tokens under the reference model.
#   token_sq_probs -> extras["token_log_sum_sq_probs"] (N,): log Σ_v π(v|context)² at each completion token,
#                     detached (WPO's weight normalizer).
#   kl_pairs       -> UnpairedLogps.kl_policy / kl_ref: log-probs of mismatched (prompt, completion) pairs.
INPUTS = ("policy_tokens", "ref_tokens", "token_sq_probs", "kl_pairs")


@dataclass
class PairLogps:
    """Per-sequence log-probs of a batch of preference pairs. Every tensor has shape ``(B,)``.

    ``*_logps`` are sums of token log-probs over the completion only (prompt and padding masked);
    ``*_lengths`` count those completion tokens. ``ref_*`` is ``None`` for reference-free training.
    ``extras`` carries the token-level inputs a loss declared (see ``INPUTS``): per-token log-probs for
    LD-DPO, WPO's normalizer; the trainer fills only what the configured losses declare.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor | None = None
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_lengths: Tensor | None = None
    rejected_lengths: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class UnpairedLogps:
    """Per-sequence log-probs of single completions labelled desirable or undesirable, shape ``(B,)``.

    ``kl_policy``/``kl_ref`` are log-probs of mismatched (prompt, completion) pairs used by KTO-style
    losses to estimate KL(π‖π_ref); ``None`` when the loss does not ask for them.
    """

    policy: Tensor
    desirable: Tensor  # bool
    lengths: Tensor
    ref: Tensor | None = None
    kl_policy: Tensor | None = None
    kl_ref: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    # (B,): 1 for a real example, 0 for a stand-in row that only keeps a multi-process step's collectives in
    # step; None = every row is real. Batch statistics (KTO's KL, BCO's δ) must count real rows only.
    weights: Tensor | None = None


@dataclass
class LossOutput:
    """``losses``: per-example losses, shape ``(B,)``. ``metrics``: name -> tensor of shape ``(B,)`` or
    ``()``; the trainer averages them over the batch (and over ranks) and logs them under these names."""

    losses: Tensor
    metrics: dict[str, Tensor]


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable[[Any, Any], LossOutput]
    hparams: type
    needs_reference: bool
    data: DataKind
    aliases: tuple[str, ...] = ()
    trl_name: str | None = None
    paper: str = ""
    # Losses with state across steps (e.g. BCO's running reward baseline) get a fresh dict per run and are
    # called as ``fn(logps, hp, state, training)``; state only moves when ``training`` is true.
    stateful: bool = False
    # Extra inputs (see INPUTS) the loss always needs; an hparams dataclass may narrow or widen this per
    # configuration through a ``needs() -> set[str]`` method (e.g. WPO weighting only when switched on).
    needs: tuple[str, ...] = ()

    def required_inputs(self, hp: Any) -> frozenset[str]:
        extra = hp.needs() if hasattr(hp, "needs") else ()
        return frozenset(self.needs) | frozenset(extra)

    @property
    def beta_modifiable(self) -> bool:
        """A paired loss with a ``beta``: the β modifiers (``adaptive_beta``, ``beta_schedule``) may set its β per
        batch (prefopt/losses/beta_modifiers.py)."""
        return self.data == "paired" and any(f.name == "beta" for f in dataclasses.fields(self.hparams))

    @property
    def builtin(self) -> bool:
        """Shipped with prefopt (as opposed to a plug-in from ``loss_modules``)."""
        return self.fn.__module__.startswith("prefopt.losses.")

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()

    def make_hparams(self, values: dict[str, Any] | None = None, *, where: str | None = None):
        """Validate ``values`` against the typed schema; unknown keys and wrong types name the key."""
        values = dict(values or {})
        where = where or f"loss.{self.name}"
        known = {f.name: f for f in dataclasses.fields(self.hparams)}
        for key in values:
            if key not in known:
                raise LossConfigError(
                    f"{where}.{key}: unknown hyperparameter for loss {self.name!r}; "
                    f"known: {', '.join(sorted(known))}"
                )
        kwargs = {}
        for key, value in values.items():
            kwargs[key] = _coerce(value, known[key].type, f"{where}.{key}")
        try:
            hp = self.hparams(**kwargs)
        except TypeError as err:
            raise LossConfigError(f"{where}: {err}") from err
        validate = getattr(hp, "validate", None)
        if validate is not None:
            try:
                validate()
            except ValueError as err:
                raise LossConfigError(f"{where}.{err}") from err
        return hp


class LossConfigError(PrefoptError, ValueError):
    pass


class UnknownLossError(PrefoptError, KeyError):
    def __str__(self) -> str:  # KeyError's repr-quoting makes messages unreadable
        return str(self.args[0])


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LossConfigError(f"{where}: expected a float, got {value!r}")
        return float(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise LossConfigError(f"{where}: expected an int, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise LossConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise LossConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


_REGISTRY: dict[str, LossSpec] = {}
_ALIASES: dict[str, str] = {}


def register_loss(
    name: str,
    *,
    hparams: type,
    needs_reference: bool,
    data: DataKind = "paired",
    aliases: tuple[str, ...] = (),
    trl_name: str | None = None,
    paper: str = "",
    stateful: bool = False,
    needs: tuple[str, ...] = (),
) -> Callable:
    """Register ``fn(logps, hp) -> LossOutput`` under ``name`` (and its aliases).

    ``hparams`` is a dataclass whose fields are the loss's hyperparameters; every loss that has a
    strength calls it ``beta``. Registering a name twice is an error, so two plug-ins cannot silently
    shadow each other.
    """
    if not dataclasses.is_dataclass(hparams):
        raise TypeError(f"register_loss({name!r}): hparams must be a dataclass")
    if data not in ("paired", "unpaired", "sft"):
        raise ValueError(f"register_loss({name!r}): data must be paired, unpaired or sft, not {data!r}")
    unknown = set(needs) - set(INPUTS)
    if unknown:
        raise ValueError(f"register_loss({name!r}): unknown needs {sorted(unknown)}; known: {', '.join(INPUTS)}")

    def decorate(fn: Callable) -> Callable:
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise ValueError(f"loss name {key!r} is already registered")
        spec = LossSpec(name, fn, hparams, needs_reference, data, tuple(aliases), trl_name, paper, stateful,
                        tuple(needs))
        _REGISTRY[name] = spec
        for alias in aliases:
            _ALIASES[alias] = name
        fn.loss_spec = spec
        return fn

    return decorate


def get(name: str) -> LossSpec:
    canonical = _ALIASES.get(name, name)
    try:
        return _REGISTRY[canonical]
    except KeyError:
        raise UnknownLossError(
            f"unknown loss {name!r}; known losses: {', '.join(sorted(_REGISTRY))}"
            + (f" (aliases: {', '.join(sorted(_ALIASES))})" if _ALIASES else "")
        ) from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def aliases() -> dict[str, str]:
    return dict(_ALIASES)


def available() -> list[dict[str, Any]]:
    """One row per registered loss: its name, flags, aliases, TRL name and hyperparameter defaults."""
    rows = []
    for name in names():
        spec = _REGISTRY[name]
        rows.append(
            dict(
                name=name,
                needs_reference=spec.needs_reference,
                data=spec.data,
                aliases=list(spec.aliases),
                trl_name=spec.trl_name,
                paper=spec.paper,
                needs=list(spec.needs),
                stateful=spec.stateful,
                builtin=spec.builtin,
                hparams={f.name: f.default for f in dataclasses.fields(spec.hparams)},
            )
        )
    return rows


def compute(
    name: str,
    *,
    policy_chosen_logps: Tensor | None = None,
    policy_rejected_logps: Tensor | None = None,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    policy_logps: Tensor | None = None,
    ref_logps: Tensor | None = None,
    desirable: Tensor | None = None,
    lengths: Tensor | None = None,
    kl_policy_logps: Tensor | None = None,
    kl_ref_logps: Tensor | None = None,
    weights: Tensor | None = None,
    extras: dict[str, Tensor] | None = None,
    state: dict | None = None,
    training: bool = True,
    **hyperparameters: Any,
) -> LossOutput:
    """Functional entry point for notebooks: per-example losses and metrics of any registered loss.

    Paired and SFT losses take ``policy_chosen_logps`` (and ``policy_rejected_logps``, ``ref_*``,
    ``*_lengths``); unpaired losses take ``policy_logps``, ``ref_logps``, ``desirable``, ``lengths`` and,
    for KTO, ``kl_policy_logps``/``kl_ref_logps``, and ``weights`` (0 marks a stand-in row, see
    ``UnpairedLogps``). Token-level inputs for modifiers (WPO, LD-DPO) go in
    ``extras`` (see ``INPUTS``). Every tensor is ``(B,)``; hyperparameters are keyword arguments. Example::

        out = prefopt.losses.compute("dpo", policy_chosen_logps=pc, policy_rejected_logps=pr,
                                     ref_chosen_logps=rc, ref_rejected_logps=rr, beta=0.1)
        out.losses, out.metrics["rewards/margins"]
    """
    spec = get(name)
    hp = spec.make_hparams(hyperparameters, where=name)
    if spec.data == "unpaired":
        if policy_logps is None or desirable is None or lengths is None:
            raise LossConfigError(f"loss {spec.name!r} is unpaired: pass policy_logps, desirable and lengths")
        logps: Any = UnpairedLogps(policy=policy_logps, desirable=desirable.bool(), lengths=lengths, ref=ref_logps,
                                   kl_policy=kl_policy_logps, kl_ref=kl_ref_logps, extras=dict(extras or {}),
                                   weights=weights)
        missing_ref = spec.needs_reference and ref_logps is None
    else:
        if policy_chosen_logps is None:
            raise LossConfigError(f"loss {spec.name!r} needs policy_chosen_logps")
        logps = PairLogps(
            policy_chosen=policy_chosen_logps,
            policy_rejected=policy_rejected_logps,
            ref_chosen=ref_chosen_logps,
            ref_rejected=ref_rejected_logps,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
            extras=dict(extras or {}),
        )
        if spec.data == "paired" and policy_rejected_logps is None:
            raise LossConfigError(f"loss {spec.name!r} is paired: pass policy_rejected_logps too")
        missing_ref = spec.needs_reference and (ref_chosen_logps is None or ref_rejected_logps is None)
    if missing_ref:
        raise LossConfigError(f"loss {spec.name!r} needs the reference log-probs (ref_*_logps)")
    return call(spec, logps, hp, state if state is not None else {}, training=training)


_INPUT_FIELDS = {
    "policy_tokens": ("extras", "token_logps", "token_rows"),
    "ref_tokens": ("extras", "ref_token_logps"),
    "token_sq_probs": ("extras", "token_log_sum_sq_probs"),
    "kl_pairs": ("attr", "kl_policy", "kl_ref"),
}


def call(spec: LossSpec, logps: Any, hp: Any, state: dict | None = None, *, training: bool = True) -> LossOutput:
    """Run a loss with the checks every loss shares: positive lengths, declared inputs present, (B,) output."""
    _check_lengths(logps)
    # Sorted so the message is the same on every run (a frozenset's order follows the hash seed), and every
    # missing input is named at once rather than one per attempt.
    missing = []
    for need in sorted(spec.required_inputs(hp)):
        where, *keys = _INPUT_FIELDS[need]
        present = [(k in logps.extras) if where == "extras" else getattr(logps, k, None) is not None for k in keys]
        if not all(present):
            missing.append(f"{need!r} ({', '.join(keys)})")
    if missing:
        raise LossConfigError(f"loss {spec.name!r} with {hp} needs input {' and '.join(missing)}, which was not provided")
    out = spec.fn(logps, hp, state if state is not None else {}, training) if spec.stateful else spec.fn(logps, hp)
    if out.losses.dim() != 1:
        raise RuntimeError(f"loss {spec.name!r} returned losses of shape {tuple(out.losses.shape)}, expected (B,)")
    return out


class EmptyCompletionError(PrefoptError, ValueError):
    pass


def _check_lengths(logps: Any) -> None:
    # A zero-length completion has log-prob 0 and would turn every length-normalized loss into 0/0.
    for attr in ("chosen_lengths", "rejected_lengths", "lengths"):
        lengths = getattr(logps, attr, None)
        if lengths is not None and bool((lengths <= 0).any()):
            bad = torch.nonzero(lengths <= 0).flatten().tolist()
            raise EmptyCompletionError(
                f"{attr} has zero-length completions at batch positions {bad}; "
                "drop empty completions in the data pipeline"
            )
