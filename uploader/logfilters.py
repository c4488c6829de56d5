"""Log filters: secrets never reach a log line, and file context reaches every one.

`RedactingFilter` sits on the log handler, so it sees every record, ours and
the libraries' (botocore at DEBUG logs whole signed requests: the
Authorization header, `Signature:` values, security tokens, and S3's
SignatureDoesNotMatch answers echo the signature and the string to sign).
It rewrites the message and the exception text before any formatter runs:

- values of `Authorization` headers, `Signature=`/`X-Amz-Signature=` and
  `Signature:` (botocore's signing log), `X-Amz-Credential=`/`Credential=`,
  `X-Amz-Security-Token`, of any key named like a token or a secret
  (`WebIdentityToken`, SSO's bearer token), any JSON Web Token, and S3 error
  elements such as `<SignatureProvided>` become `[REDACTED]`;
- the secret values themselves (`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`
  from the environment, and any `register`ed at run time) become `[REDACTED]`
  wherever they appear, even where no pattern names them;
- access key IDs keep their first and last four characters (`AKIA…WXYZ`),
  enough to tell which key was used, as the AWS CLI shows them.

`ContextFilter` adds the file and key an upload task is working on (bound
with `bind_log_context`, a context variable, so each worker task has its
own) to every record made while it runs: retries and part uploads deep in
the transfer code carry them without being passed them.
"""

from __future__ import annotations

import contextvars
import logging
import re
from typing import Any, Iterable, Mapping

REDACTED = "[REDACTED]"
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
ACCESS_KEY_VARIABLES = ("AWS_ACCESS_KEY_ID",)
_SHORTEST_SECRET = 8  # shorter values would redact ordinary words

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # 'Authorization': b'AWS4-HMAC-SHA256 Credential=..., Signature=...' (a headers repr)
    (re.compile(r"""(?i)(\bauthorization['"]?\s*[:=]\s*b?)(['"])(.*?)\2"""), rf"\1\2{REDACTED}\2"),
    # Authorization: AWS4-HMAC-SHA256 ... (a header line)
    (re.compile(r"""(?im)(\bauthorization\s*:\s*)(?![\['"]|b['"])(\S[^\r\n]*)"""),
     rf"\1{REDACTED}"),
    # Signature=abc, X-Amz-Signature=abc (query strings, headers), Signature:\nabc (botocore)
    (re.compile(r"""(?i)(\b(?:x-amz-)?signature\s*(?:=|:\s*)\s*)(?!\[)([A-Za-z0-9%+/_=-]{8,})"""),
     rf"\1{REDACTED}"),
    (re.compile(r"""(?i)(\bx-amz-security-token['"]?\s*[=:]\s*b?['"]?)(?!\[)([^'"&\s,;]+)"""),
     rf"\1{REDACTED}"),
    (re.compile(r"""(?i)(\b(?:x-amz-)?credential=)(?!\[)([^&\s'",;]+)"""), rf"\1{REDACTED}"),
    # S3's SignatureDoesNotMatch body echoes what was signed and by whom.
    (re.compile(r"""(?is)(<(SignatureProvided|StringToSign|StringToSignBytes|CanonicalRequest|"""
                r"""CanonicalRequestBytes|AWSAccessKeyId|SecretAccessKey|SessionToken)>)"""
                r"""(.*?)(</\2>)"""), rf"\1{REDACTED}\4"),
    # aws_secret_access_key=..., "SecretAccessKey": "...", session_token: ...
    (re.compile(r"""(?i)(\b(?:aws_)?(?:secret_?access_?key|session_?token)["']?\s*[:=]\s*b?"""
                r"""["']?)(?!\[)([^"'\s,;}]+)"""), rf"\1{REDACTED}"),
    # Any other token or secret by name: 'WebIdentityToken': '...' (AssumeRoleWithWebIdentity,
    # EKS/IRSA), x-amz-sso_bearer_token (SSO), "accessToken", client_secret=...
    (re.compile(r"""(?i)(\b[\w-]*(?:token|secret)["']?\s*[:=]\s*b?["']?)(?!\[)"""
                r"""([^"'\s,;}&]{8,})"""), rf"\1{REDACTED}"),
    # A JSON Web Token wherever it stands (web identity tokens are JWTs).
    (re.compile(r"""\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"""), REDACTED),
)
_ACCESS_KEY_PREFIX = r"(?:AKIA|ASIA|AIDA|AROA|AIPA|ANPA|ANVA|AGPA|ABIA|ACCA)"
_ACCESS_KEY_ID = re.compile(rf"\b({_ACCESS_KEY_PREFIX}[A-Z0-9])[A-Z0-9]{{8,}}([A-Z0-9]{{4}})\b")
# Cheap tests that a line needs the patterns at all, searched first because most lines (one
# per uploaded file) need none: the patterns cost ~30 µs a line, these ~1 µs. Each of
# _PATTERNS needs one of these words (lower-cased) or a '<' (the XML elements).
_MIGHT_NAME_A_SECRET = re.compile(r"authoriz|signature|token|credential|secret|<|eyj")
_MIGHT_HOLD_ACCESS_KEY_ID = re.compile(_ACCESS_KEY_PREFIX)


class Redactor:
    """Removes credentials, signatures and presigned-URL secrets from a text."""

    def __init__(self, *, secrets: Iterable[str] = (), access_keys: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []  # the longest first: one may contain another
        self._access_keys: set[str] = set()
        for secret in secrets:
            self.register(secret)
        for key in access_keys:
            self.register_access_key(key)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "Redactor":
        return cls(secrets=[environ.get(name, "") for name in SECRET_VARIABLES],
                   access_keys=[environ.get(name, "") for name in ACCESS_KEY_VARIABLES])

    def register(self, secret: str | None) -> None:
        """A value that must never appear in a log line."""
        if secret and len(secret) >= _SHORTEST_SECRET and secret not in self._secrets:
            self._secrets = sorted([*self._secrets, secret], key=len, reverse=True)

    def register_access_key(self, key: str | None) -> None:
        if key and len(key) >= _SHORTEST_SECRET:
            self._access_keys.add(key)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        if _MIGHT_NAME_A_SECRET.search(text.lower()):
            for pattern, replacement in _PATTERNS:
                text = pattern.sub(replacement, text)
        for key in self._access_keys:
            text = text.replace(key, mask_access_key(key))
        if _MIGHT_HOLD_ACCESS_KEY_ID.search(text):
            text = _ACCESS_KEY_ID.sub(r"\1…\2", text)
        return text


def mask_access_key(key: str) -> str:
    return f"{key[:4]}…{key[-4:]}" if len(key) > 8 else REDACTED


class RedactingFilter(logging.Filter):
    """Put on a handler: every record through it leaves with its secrets removed."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True


# ------------------------------------------------------------------ context
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "uploader_log_context", default={})


def bind_log_context(**fields: Any) -> contextvars.Token[dict[str, Any]]:
    """Attach `fields` (file, key) to every record made in this task until `unbind`."""
    return _context.set({**_context.get(), **fields})


def unbind_log_context(token: contextvars.Token[dict[str, Any]]) -> None:
    _context.reset(token)


class ContextFilter(logging.Filter):
    """Adds the bound context to records that do not carry those fields already."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True
