"""The one error the configuration raises: a message for the user, naming file and key."""


class ConfigError(Exception):
    """A configuration that cannot run. str() is the whole message for the user."""
