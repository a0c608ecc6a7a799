"""The line link: every inspection's verdict and defect location, pushed to the line controller and the plant.

    result    the `LineResult` every sink sends (one committed inspection, numbered), and the line's status
    hub       `LinkHub`: numbers results, fans them out off the request path, holds what the PLC asked for
              (next part id, recipe), and reports each sink's health
    settings  the `links:` section of the service config
    modbus    a Modbus TCP server the PLC polls (register map in `registers`)
    opcua     an OPC UA server in the shape of OPC 40100 Machine Vision
    mqtt      one JSON message per inspection to an MQTT broker, retained status, last will
    webhook   the same JSON POSTed to HTTP endpoints

A sink never slows an inspection: `publish` only hands the result over; a dead PLC client, broker or endpoint
shows in the sink's health, never in the inspection's answer. The servers and clients are imported only when
configured, so a service without links loads none of them.
"""
