"""What leaves the device, and the record of it: events (the payloads), sinks (where a
confirmed match goes), audit log, outbox (durable queue), MQTT link, Home Assistant
discovery and presence; fleet status and a local broker for tools and tests."""
