"""The `links:` section of the service config: which PLC servers to open, which broker and endpoints to send to.

Declared here, beside the sinks that read them, and nested into the service's `Settings`, so the keys, their
environment variables and defaults appear in `inspector serve --help` like every other setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


def _split(value: Any) -> Any:
    """A list given as one string (environment, flags): split on commas and white space."""
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    return value


class ModbusSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    buffer: int = Field(
        default=8,
        ge=1,
        le=64,
        description="results kept until the PLC acknowledges them; beyond it the oldest is dropped and the "
        "overrun bit set",
    )
    handshake: bool = Field(
        default=True,
        description="the result block holds the oldest unacknowledged result until the PLC writes its sequence "
        "number to the acknowledge register; false: it always holds the newest result",
    )
    device_id: int = Field(default=1, ge=0, le=247, description="Modbus unit (device) id the server answers as")
    heartbeat_ms: int = Field(default=500, ge=50, le=60_000, description="period of the heartbeat counter")


class OpcUaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodeset: Path | None = Field(
        default=None,
        description="an OPC 40100 Machine Vision NodeSet2 file: imported, and a real VisionSystemType is "
        "instantiated; without it the server builds the same shape itself",
    )
    security: Literal["none", "basic256sha256"] = Field(
        default="none", description="none for test benches; basic256sha256 (sign and encrypt) for production"
    )
    certificate: Path | None = Field(default=None, description="server certificate (DER or PEM), for basic256sha256")
    private_key: Path | None = Field(default=None, description="server private key (PEM), for basic256sha256")
    trusted_clients: Path | None = Field(
        default=None,
        description="folder of trusted client certificates (DER or PEM), for basic256sha256: a client whose "
        "certificate is not there is refused; without it any client certificate is accepted",
    )
    server_name: str = Field(default="inspector", description="the server's application name")

    @model_validator(mode="after")
    def _trust_needs_security(self) -> OpcUaSettings:
        """A trust list under security none would check nothing: refuse it rather than look protected."""
        if self.trusted_clients is not None and self.security == "none":
            raise ValueError("trusted_clients needs security basic256sha256 (security none has no client certificate)")
        return self


class MqttSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None, description="broker and topic prefix, mqtt://[user@]host[:port]/prefix (mqtts:// for TLS)"
    )
    password: SecretStr | None = Field(default=None, description="broker password (the user is in the URL)")
    client_id: str = Field(default="inspector", description="MQTT client id (unique per broker)")
    line: str = Field(default="line", description="topic level for results without a line field")
    camera: str = Field(default="camera", description="topic level for results without a camera field")
    queue: int = Field(default=1000, ge=1, description="results held while the broker is away; oldest dropped beyond")
    ca_file: Path | None = Field(
        default=None,
        description="CA certificate (PEM) the broker's certificate is checked against, for mqtts://; "
        "without it the system's CAs",
    )
    keepalive_s: int = Field(
        default=30,
        ge=5,
        le=3600,
        description="MQTT keepalive: a broker that stops answering is noticed within twice this",
    )
    reconnect_min_s: int = Field(default=1, ge=1, le=60, description="first wait before reconnecting to the broker")
    reconnect_max_s: int = Field(
        default=30, ge=1, le=600, description="longest wait between reconnect attempts (the wait doubles up to it)"
    )


class WebhookSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(default_factory=list, description="HTTP(S) endpoints each result is POSTed to as JSON")
    timeout_s: float = Field(default=2.0, gt=0, le=60, description="per attempt")
    retries: int = Field(default=3, ge=0, le=10, description="further attempts after a failed one, with backoff")
    backoff_s: float = Field(
        default=0.5,
        gt=0,
        le=30,
        description="wait before the first retry; doubled before each further one (at most 30 s)",
    )
    queue: int = Field(default=256, ge=1, description="results waiting for delivery; oldest dropped beyond")

    _urls = field_validator("urls", mode="before")(_split)


class LinkSettings(BaseModel):
    """Where results go besides the HTTP answer. Every sink is off unless named."""

    model_config = ConfigDict(extra="forbid")

    plc: list[str] = Field(
        default_factory=list,
        description="PLC servers to open: modbus://HOST:PORT, opcua://HOST:PORT (several: comma separated)",
    )
    modbus: ModbusSettings = Field(default_factory=ModbusSettings)
    opcua: OpcUaSettings = Field(default_factory=OpcUaSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)

    _plc = field_validator("plc", mode="before")(_split)

    @field_validator("plc")
    @classmethod
    def _known_schemes(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("modbus://", "opcua://", "opc.tcp://")):
                raise ValueError(f"{url!r}: a PLC link is modbus://HOST:PORT or opcua://HOST:PORT")
        return value

    @property
    def any(self) -> bool:
        return bool(self.plc or self.mqtt.url or self.webhook.urls)
