"""Errors a person can act on. The stage runner prints their message without a traceback."""


class FluxForgeError(Exception):
    """Base for expected failures: bad params, broken contracts, unreadable inputs."""
