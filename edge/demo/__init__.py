"""The demo (``edge demo``): a throwaway local Mosquitto, synthetic scenes and the demo's gallery, clip and
subscriber. The tests start their brokers with ``broker`` too; the lab composes its scenes with ``scenes``."""
