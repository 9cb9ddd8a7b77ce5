"""Just enough PromQL to name the metrics an expression reads (no evaluation, no types).

This is NOT a PromQL validator: ``promtool check rules`` is (the tests use it where it is
installed). It tokenizes an expression, checks its brackets balance, that every call is of
a known function or aggregation, that nothing is left it does not understand, and returns
the metric names it selects. Grafana template variables (``$limit``, ``${datasource}``,
``$__rate_interval``) are accepted where PromQL takes a value or a duration.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["FUNCTIONS", "PromQLError", "label_values_metrics", "metric_names"]


class PromQLError(ValueError):
    """The expression is not what this small tokenizer accepts."""


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


AGGREGATIONS: Final = _words(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile"
)
FUNCTIONS: Final = AGGREGATIONS | _words(
    """abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month
    day_of_week day_of_year days_in_month delta deriv exp floor histogram_count
    histogram_fraction histogram_quantile histogram_sum holt_winters hour idelta increase
    irate label_join label_replace ln log2 log10 minute month predict_linear rate resets
    round scalar sgn sort sort_desc sqrt time timestamp vector year avg_over_time
    min_over_time max_over_time sum_over_time count_over_time quantile_over_time
    stddev_over_time stdvar_over_time last_over_time present_over_time"""
)
_KEYWORDS: Final = _words("and or unless bool offset inf nan")
_GROUPING: Final = _words("by without on ignoring group_left group_right")

_TOKEN: Final = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[A-Za-z_][A-Za-z0-9_:.]*\}|\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)
  | (?P<number>(?:0x[0-9a-fA-F]+|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=,:@])
  | (?P<open>[({\[])
  | (?P<close>[)}\]])
    """,
    re.VERBOSE,
)
_PAIRS: Final = {")": "(", "}": "{", "]": "["}


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, at = [], 0
    while at < len(expr):
        match = _TOKEN.match(expr, at)
        if match is None:
            raise PromQLError(f"unexpected {expr[at : at + 20]!r} at {at} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, match.group()))
        at = match.end()
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects; PromQLError if it is not well-formed enough."""
    tokens = _tokens(expr)
    if not tokens:
        raise PromQLError("empty expression")
    names: set[str] = set()
    stack: list[str] = []
    labels_until: int | None = None  # inside {...} or a grouping list: names are labels
    for i, (kind, text) in enumerate(tokens):
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "open":
            stack.append(text)
            if text == "{" or (i > 0 and tokens[i - 1][1] in _GROUPING):
                labels_until = len(stack) if labels_until is None else labels_until
            continue
        if kind == "close":
            if not stack or stack.pop() != _PAIRS[text]:
                raise PromQLError(f"unbalanced {text!r} in {expr!r}")
            if labels_until is not None and len(stack) < labels_until:
                labels_until = None
            continue
        if kind != "ident" or labels_until is not None:
            continue
        if text in _GROUPING or text in _KEYWORDS:
            continue
        if following == "(" or (text in AGGREGATIONS and following in ("by", "without")):
            if text not in FUNCTIONS:
                raise PromQLError(f"unknown function {text!r} in {expr!r}")
            continue
        if stack and stack[-1] == "[":
            raise PromQLError(f"{text!r} inside a range in {expr!r}")
        names.add(text)
    if stack:
        raise PromQLError(f"unclosed {stack[-1]!r} in {expr!r}")
    return names


_LABEL_VALUES: Final = re.compile(r"^\s*label_values\((?P<selector>.*),\s*[A-Za-z_]\w*\s*\)\s*$")


def label_values_metrics(query: str) -> set[str]:
    """The metric names a Grafana ``label_values(SELECTOR, label)`` query reads."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        raise PromQLError(f"not a label_values(selector, label) query: {query!r}")
    return metric_names(match.group("selector"))
