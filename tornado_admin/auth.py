"""Bearer-token checks for the admin API: any header bytes in, one clean verdict out."""

from __future__ import annotations

import enum
import hmac
import re
from collections.abc import Sequence

# "Bearer" (any case), whitespace, one token68-ish credential, optional trailing whitespace.
_BEARER = re.compile(r"[ \t]*([A-Za-z]+)[ \t]+(\S+)[ \t]*")


class Verdict(enum.Enum):
    OK = "ok"
    MISCONFIGURED = "misconfigured"  # no token configured: 500
    DUPLICATE = "duplicate"  # two Authorization headers: 400 invalid_request
    MISSING = "missing"  # no header at all: 401, not a failed attempt
    MALFORMED = "malformed"  # not "Bearer <token>": 401, a failed attempt
    INVALID = "invalid"  # well-formed, wrong token: 401 invalid_token, a failed attempt


def check_bearer(headers: Sequence[str], tokens: Sequence[str]) -> Verdict:
    """Judge the request's Authorization header values against the configured tokens.

    The comparison runs in constant time against every configured token (no early exit), on
    bytes, so no input can make it raise.
    """
    if not tokens:
        return Verdict.MISCONFIGURED
    if len(headers) > 1:
        return Verdict.DUPLICATE
    if not headers:
        return Verdict.MISSING
    match = _BEARER.fullmatch(headers[0])
    if match is None or match[1].lower() != "bearer":
        return Verdict.MALFORMED
    # surrogatepass on both sides: every str has exactly one encoding, so no two different
    # strings compare equal, and no text at all (lone surrogates included) can make it raise.
    presented = match[2].encode("utf-8", "surrogatepass")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented, token.encode("utf-8", "surrogatepass"))
    return Verdict.OK if matched else Verdict.INVALID
