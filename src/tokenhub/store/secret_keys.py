"""Provider API keys at rest: encrypted with ``TOKENHUB_SECRET_KEY`` (Fernet: AES-128-CBC with an HMAC).

Without a secret key the store refuses literal keys: providers then name an environment variable
(``api_key_env``) instead, and no key ever sits in the database in plain text.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken


class SecretsUnavailable(Exception):
    """A literal key was given, or must be read, but no secret key is configured (or it is the wrong one)."""


class Secrets:
    def __init__(self, secret_key: str | None) -> None:
        # Any passphrase works: it is stretched to the 32 bytes Fernet wants.
        self._fernet = (
            Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret_key.encode()).digest()))
            if secret_key
            else None
        )

    @property
    def available(self) -> bool:
        return self._fernet is not None

    def encrypt(self, plaintext: str) -> str:
        if self._fernet is None:
            raise SecretsUnavailable(
                "storing an API key needs TOKENHUB_SECRET_KEY (keys are kept encrypted); "
                "or name an environment variable with api_key_env"
            )
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        if self._fernet is None:
            raise SecretsUnavailable("a stored API key cannot be read without TOKENHUB_SECRET_KEY")
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretsUnavailable(
                "a stored API key does not decrypt with this TOKENHUB_SECRET_KEY"
            ) from None
