"""Home Assistant's test harness: its fixtures (hass, mqtt_mock_entry) come from the plugin."""

from __future__ import annotations

from collections.abc import Iterator
from unittest.mock import patch

import pytest
from homeassistant.const import Platform

pytest_plugins = ["pytest_homeassistant_custom_component"]


@pytest.fixture(autouse=True)
def only_our_platforms() -> Iterator[None]:
    """Load just the MQTT platforms the appliance uses (the harness's advice, for speed)."""
    with patch("homeassistant.components.mqtt.PLATFORMS", [Platform.BINARY_SENSOR, Platform.EVENT, Platform.SENSOR]):
        yield


@pytest.fixture(autouse=True)
def no_configuration_yaml(mock_hass_config: None) -> None:
    """An empty configuration.yaml: everything comes from discovery."""
