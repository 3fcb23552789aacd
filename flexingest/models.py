"""Building blocks of the pipeline file's models, shared by :mod:`flexingest.config`, the
connector modules (each declares its own ``config:``) and the events models.

Imports nothing of flexingest but :mod:`flexingest.units`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class Strict(BaseModel):
    """Unknown keys are errors: a typo must not pass silently."""

    model_config = ConfigDict(extra="forbid")


def both_or_neither(model: BaseModel, a: str, b: str) -> None:
    if (getattr(model, a) is None) != (getattr(model, b) is None):
        raise ValueError(f"'{a}' and '{b}' go together: give both or neither")


class AwsCredentials(Strict):
    """AWS credentials as an ``s3`` connector or an ``sqs`` event source takes them."""

    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    profile: str | None = Field(None, description="a profile of the shared AWS config files")
    role_arn: str | None = Field(None, description="assume this role with the credentials above")

    def check_credentials(self) -> None:
        both_or_neither(self, "aws_access_key_id", "aws_secret_access_key")
        if self.aws_session_token is not None and self.aws_access_key_id is None:
            raise ValueError("'aws_session_token' needs 'aws_access_key_id' and 'aws_secret_access_key'")
        if self.profile is not None and self.aws_access_key_id is not None:
            raise ValueError("give either 'profile' or access keys, not both")

    def own_credentials(self) -> bool:
        return any(v is not None for v in (self.aws_access_key_id, self.profile, self.role_arn))


class ConnectorBase(Strict):
    """One entry of ``connectors:``, FlexOrch's connector body: ``{name, id, type, config}``.

    Each connector type narrows ``type`` to its name and ``config`` to its own model
    (:mod:`flexingest.connectors`).
    """

    name: str = Field(min_length=1, pattern=r"^[^\s]+$", description="unique; syncs refer to it")
    id: int | None = Field(None, description="optional unique integer, as in FlexOrch")
    type: str
    config: Any

    #: URL schemes that name a place in this type's store (a destination's ``url``)
    url_schemes: ClassVar[tuple[str, ...]] = ()
