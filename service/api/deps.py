"""Dependency aliases: what routes may ask for, all owned by the app's lifespan.

They are ``async`` on purpose: FastAPI runs plain ``def`` dependencies in a thread pool, a
thread hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.dataplane import DataPlane
from service.observability import Metrics
from service.settings import Settings


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane


async def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(_settings)]
PlaneDep = Annotated[DataPlane, Depends(_plane)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
