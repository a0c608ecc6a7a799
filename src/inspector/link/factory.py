"""The sinks a `LinkSettings` names. Each sink's module is imported only here, when it is configured, so a
service without PLC links never loads pymodbus, asyncua or paho."""

from __future__ import annotations

from inspector.link.settings import LinkSettings
from inspector.link.sink import Sink, endpoint

PLC_PORTS = {"modbus": 502, "opcua": 4840, "opc.tcp": 4840}  # the protocols' standard ports


def host_port(url: str) -> tuple[str, int]:
    """HOST and PORT of modbus://HOST:PORT or opcua://HOST:PORT (the scheme's standard port when omitted)."""
    _, host, port = endpoint(url, PLC_PORTS)
    return host, port


def build_sinks(settings: LinkSettings) -> list[Sink]:
    sinks: list[Sink] = []
    for url in settings.plc:
        host, port = host_port(url)
        if url.startswith("modbus://"):
            from inspector.link.modbus import ModbusSink

            sinks.append(ModbusSink(host, port, settings.modbus))
        else:
            from inspector.link.opcua import OpcUaSink

            sinks.append(OpcUaSink(host, port, settings.opcua))
    if settings.mqtt.url:
        from inspector.link.mqtt import MqttSink

        sinks.append(MqttSink(settings.mqtt))
    if settings.webhook.urls:
        from inspector.link.webhook import WebhookSink

        sinks.extend(WebhookSink(url, settings.webhook) for url in settings.webhook.urls)
    return sinks
