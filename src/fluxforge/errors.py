"""Errors a person can act on. The stage runner prints their message without a traceback."""


class FluxForgeError(Exception):
    """Base for expected failures: bad params, broken contracts, unreadable inputs."""


class DataError(FluxForgeError):
    """Inputs that exist but cannot be used as asked (too few tokens, a missing slice, a malformed file)."""
