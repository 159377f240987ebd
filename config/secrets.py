"""What counts as a secret, and how it is hidden: Kafka client options, URL user-info, PEM keys, known values.

Used by the settings (``repr``, ``model_dump()``, errors) and by the log formatters, so both hide the same things.
"""

from __future__ import annotations

import re

# librdkafka's sensitive properties: those it marks _RK_SENSITIVE in rdkafka_conf.c, i.e. the ones its own
# ``debug=conf`` dump shows as "[redacted]" (checked against the bundled librdkafka 2.16.0), plus the alias
# sasl.oauthbearer.client.credentials.client.secret. An explicit list: a name pattern missed ssl.key.pem and
# sasl.oauthbearer.config. Not secret (librdkafka shows them): ssl.certificate.pem, sasl.kerberos.keytab (a path),
# sasl.oauthbearer.client.id, sasl.oauthbearer.token.endpoint.url (its user-info is masked as in any URL).
KAFKA_SECRET_OPTIONS = frozenset({
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.client.credentials.client.secret",
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl.ca.pem",
})
# Corestream's own secret settings (all SecretStr).
SECRET_FIELDS = frozenset({"password", "api_key", "secret_access_key"})
MASK = "***"

# Any user-info: everything from ``scheme://`` to the last "@" before the next whitespace, so passwords holding
# "@", "/" or ":" and token-only user-info are covered. ``registry://NAME@ENV`` holds no secret and is kept.
_URL_CREDENTIALS = re.compile(r"(?<![\w+.-])(?!registry://)(?P<scheme>[a-z][a-z0-9+._-]*://)\S*@", re.IGNORECASE)
_PEM_KEY = re.compile(r"-----BEGIN (?P<kind>[A-Z0-9 ]*PRIVATE KEY)-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
                      re.DOTALL)
_known_values: set[str] = set()


def is_secret_name(name: str) -> bool:
    """A setting field or Kafka option whose value is a secret."""
    return name in KAFKA_SECRET_OPTIONS or name in SECRET_FIELDS


def mask(text: str) -> str:
    """``text`` with URL user-info (``https://user:p@ss/w@host`` -> ``https://***@host``), PEM private keys and
    every value given to :func:`hide_value` replaced by ``***``.

    Errs on the side of hiding: a URL whose path holds an "@" loses the part before it too.
    """
    text = _URL_CREDENTIALS.sub(rf"\g<scheme>{MASK}@", text)
    if "PRIVATE KEY-----" in text:
        text = _PEM_KEY.sub(rf"-----BEGIN \g<kind>-----{MASK}", text)
    for value in _known_values:
        text = text.replace(value, MASK)
    return text


def hide_value(value: str) -> None:
    """From now on, :func:`mask` replaces ``value`` wherever it appears (e.g. the API key in a logged URL)."""
    if len(value) >= 4:  # a shorter one would mask ordinary words; settings refuse such keys
        _known_values.add(value)
