"""One Settings object: every knob, typed and bounded, read from ``EDGEFIT_*`` variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgefit"


class Settings(BaseSettings):
    """Configuration of one server process. Unsafe combinations refuse to start."""

    model_config = SettingsConfigDict(env_prefix="EDGEFIT_", frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    store_dir: Path = Field(Path("model_store/artifacts"), description="The model store to serve.")
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Writable directory for the on-device latency table.",
    )
    variants: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Serve exactly these variants of the store (comma-separated); empty: as "
        "EDGEFIT_FRONTIER says.",
    )
    frontier: bool = Field(
        True,
        description="Serve this device's frontier of the store, chosen at the first start on this "
        "device and cached (README, 'The model store'); false: every variant of the store.",
    )
    frontier_size: int = Field(
        12,
        ge=1,
        le=256,
        description="At most this many variants of this device's frontier are served (the fastest "
        "and the most accurate always); variants dominated here never are.",
    )
    workers: int = Field(
        default_factory=available_cpus,
        ge=1,
        le=64,
        description="Inferences run in parallel. Default: one per available CPU (measured best "
        "for throughput on 2 cores; see bench/).",
    )
    threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads per inference.")
    share_tensors: bool = Field(
        False,
        description="Hold each weight tensor once for all the fp32 sessions that have it (a "
        "family's subnets and its full network): each file is optimised for this CPU at load, "
        "then opened with its tensors shared. About half the memory at ready, slightly slower "
        "inference under load (README, 'The model store').",
    )
    profile_runs: int = Field(
        20, ge=3, le=1000, description="Timed runs per variant when profiling at start-up."
    )
    profile_warmup: int = Field(3, ge=1, le=100, description="Untimed runs before profiling.")
    latency_window: int = Field(
        64, ge=8, le=4096, description="Recent inferences per variant behind its live quantiles."
    )
    fresh_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Live samples older than this no longer describe a variant's latency.",
    )
    reprobe_idle_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Re-probe a variant not run for this long, when the server is idle.",
    )
    max_body_bytes: int = Field(16 << 20, gt=0, description="Largest request body.")
    max_image_pixels: int = Field(50_000_000, gt=0, description="Largest image (width x height).")
    body_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Deadline for receiving the whole body."
    )
    max_queue_wait_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Admission bound: requests that would wait longer are shed (503).",
    )
    inference_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Hard limit for one inference; past it: 504."
    )
    cascade: bool = Field(
        True,
        description="Plan confidence cascades among the served variants and offer them (a fast variant "
        "answers when it is sure, a more accurate one runs when it is not); a request opts out with "
        "?cascade=false.",
    )
    api_key: SecretStr | None = Field(None, description="Bearer token for /admin endpoints.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    connection_limit: int | None = Field(
        None,
        ge=16,
        description="Open connections held at most; past it a new connection first closes an idle "
        "or slow one, else is answered 503 with Retry-After. Default: from the descriptor limit "
        "(raised to the hard limit at start), at most 4096.",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Deadline for receiving the request line and headers, from the connection "
        "(or, kept alive, from the request's first byte).",
    )
    keep_alive_seconds: int = Field(
        5, ge=1, le=300, description="Idle keep-alive connections close after this."
    )
    drain_seconds: int = Field(
        20, ge=1, le=600, description="On SIGTERM, how long in-flight requests may finish."
    )

    @field_validator("variants", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(n.strip() for n in value.split(",") if n.strip())
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.inference_timeout_seconds <= self.max_queue_wait_seconds / 10:
            raise ValueError("inference_timeout_seconds is too small for the admission bound")
        if self.workers * self.threads > 4 * available_cpus():
            raise ValueError(
                f"workers x threads = {self.workers * self.threads} oversubscribes "
                f"{available_cpus()} CPUs more than 4 times"
            )
        return self
