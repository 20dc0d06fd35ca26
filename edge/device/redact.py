"""Keeping secrets out of logs, status messages, errors and CLI output.

Passwords are ``SecretStr`` in the settings, so they print as ``**********``.
URLs (an RTSP camera with credentials, say) are printed through ``redact_url``:
the password in ``scheme://user:password@host`` and the values of credential-like
query parameters are replaced. Every message that may name a source goes through it.
"""

from __future__ import annotations

import re

MASK = "***"
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/?#]*)(?::(?P<pw>[^@/?#]*))?@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pass|pwd|token|secret|key|auth|apikey|api_key|access_token)=)(?P<value>[^&;#]*)",
    re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """``text`` with the credentials of a URL masked; other text unchanged."""
    out = _USERINFO.sub(
        lambda m: f"{m['scheme']}{m['user']}:{MASK}@" if m["pw"] is not None else f"{m['scheme']}{m['user']}@", text
    )
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", out)


def url_secrets(text: str) -> list[str]:
    """The secret parts of a URL (password, credential-like query values), to register with ``logs.protect``."""
    found = []
    m = _USERINFO.match(text)
    if m and m["pw"]:
        found.append(m["pw"])
    found += [q["value"] for q in _QUERY_SECRET.finditer(text) if q["value"]]
    return found


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every occurrence of each non-empty secret replaced (a last line of defence)."""
    for s in secrets:
        if s:
            text = text.replace(s, MASK)
    return text
