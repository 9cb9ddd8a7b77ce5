"""Secrets in store URLs: found wherever they hide, and masked wherever a URL is shown.

A password can sit in the netloc (``redis://:pw@host``), in a query parameter
(``?password=pw``, ``?sslpassword=pw``) or inside another URL carried as a
parameter (PostgreSQL's ``listen_url=postgresql://u:pw@host/db``). Every URL Sluice
prints, logs or serves goes through :func:`redact_url`; every message that may
quote one through :func:`scrub`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, urlsplit

__all__ = ["redact_url", "scrub", "secrets_of"]

SECRET_PARAMS = frozenset({"password", "pass", "pwd", "passwd", "sslpassword", "secret", "token"})
"""Query parameters whose values are secrets, in any URL."""

MASK = "***"


def secrets_of(url: str) -> list[str]:
    """Every secret a URL holds: its password, secret parameters, and those of nested URLs."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        password = parts.password
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        match = re.search(r":([^:/@]+)@", url)  # too malformed for urlsplit
        return [match.group(1)] if match else []
    if password:
        found.append(password)
    else:  # not a well-formed URL, but it may still carry user:password@host
        match = re.search(r":([^:/@]+)@", url)
        if match:
            found.append(match.group(1))
    for key, value in pairs:
        if key.lower() in SECRET_PARAMS and value:
            found.append(value)
        elif "://" in value:
            found.extend(secrets_of(value))
    return found


def redact_url(url: str) -> str:
    """The URL with every secret replaced by ``***``: safe to print, log and serve."""
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password and re.search(r":([^:/@]+)@", url) and "@" not in parts.netloc:
        return re.sub(r":([^:/@]+)@", f":{MASK}@", url)  # user:password@ outside a netloc
    secret_query = any(k.lower() in SECRET_PARAMS or "://" in v for k, v in pairs)
    if not password and not secret_query:
        return url  # nothing to mask: exactly as given (sqlite://// keeps its slashes)
    netloc = parts.netloc
    if password:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostport}"
    query = parts.query
    if secret_query:
        query = "&".join(f"{quote(k, safe='')}={_masked_value(k, v)}" for k, v in pairs)
    return parts._replace(netloc=netloc, query=query).geturl()


def _masked_value(key: str, value: str) -> str:
    if key.lower() in SECRET_PARAMS and value:
        return MASK
    if "://" in value:
        return quote(redact_url(value), safe=":/@*")
    return quote(value, safe=":/@")


def scrub(message: str, urls: Iterable[str | None]) -> str:
    """The message with every secret of these URLs masked, wherever it appears in it."""
    for url in urls:
        if not url:
            continue
        for secret in sorted(secrets_of(url), key=len, reverse=True):
            if len(secret) >= 4:
                message = message.replace(secret, MASK)
            else:  # too short to mask everywhere: where a URL would carry it
                message = message.replace(f":{secret}@", f":{MASK}@")
                message = message.replace(f"={secret}", f"={MASK}")
    return message
