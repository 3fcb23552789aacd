"""The bodies the HTTP API takes and gives, as pydantic models (and so its OpenAPI schema).

Requests forbid unknown fields (a typo is a 422 naming it). Answers allow more fields than
they list: a newer flexingest may add some.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


Key = Annotated[str, Field(min_length=1, max_length=4096)]


class ConnectorIn(Request):
    """FlexOrch's connector body. ``type`` and ``config`` are checked as the pipeline file's are."""

    type: StrictStr = Field(description="s3 | gcs | azure_blob | local", examples=["s3"])
    name: StrictStr = Field(description="unique; letters, digits, '.', '_', '-'", examples=["production-docs"])
    config: dict[str, Any] = Field(description="as under 'config:' in a pipeline file",
                                   examples=[{"bucket": "my-documents", "region": "us-east-1"}])
    id: StrictInt | None = Field(None, description="optional unique integer; given one when omitted")


class ConnectorOut(Answer):
    id: int | None
    type: str
    name: str
    config: dict[str, Any] = Field(description="secrets shown as **********")


class TestOut(Answer):
    success: bool
    message: str


class Source(Request):
    connector_id: StrictInt | StrictStr = Field(description="a connector's integer id, or its name")
    keys: list[Key] = Field(min_length=1, description="at most 10,000")


class ProcessIn(Request):
    source: Source
    sync: StrictStr | None = Field(None, description="use this sync's steps, and record the outcome in its state")


class JobAccepted(Answer):
    job_id: str
    status: Literal["queued"]


class KeyResult(Answer):
    key: str
    status: str = Field(description="done | skipped | failed | gone | not processed")
    error: str | None


class JobOut(Answer):
    job_id: str
    status: Literal["queued", "running", "done", "failed"]
    results: list[KeyResult]
    error: str | None = None


class LastRun(Answer):
    started_at: str
    ended_at: str | None
    result: str | None = Field(description="ok | failed | error | interrupted | killed; null while it runs")
    error: str | None


class Problem(Answer):
    key: str
    status: str
    attempts: int
    error: str | None


class SyncOut(Answer):
    name: str
    health: Literal["ok", "failing", "late", "never run"]
    running: bool = Field(description="a pass of this sync is in flight")
    backlog: int = Field(description="objects the pass in flight planned and has not finished")
    done: int
    skipped: int
    failed: int
    dead: int
    pending: int
    gone: int
    last_run: LastRun | None
    next_due: str | None
    problems: list[Problem]


class SyncsOut(Answer):
    pipeline: str
    state: str
    syncs: dict[str, SyncOut]


class RunOut(Answer):
    sync: str
    run: Literal["started", "joined"] = Field(description="started: a pass begins now; joined: one was running")


class RetryOut(Answer):
    sync: str
    retried: int = Field(description="failed and dead objects put back for the next pass")


class Error(Answer):
    detail: str


class Health(Answer):
    status: str
    reason: str | None = None
