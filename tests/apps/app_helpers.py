"""A local module imported by app_basic: shipped with it as source."""


def triple(x: int) -> int:
    return 3 * x
