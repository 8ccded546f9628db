"""gotapi-3dp: shared wire formats, configuration and the `gotapi-3dp` command line."""

__version__ = "0.1.0"
PRODUCT = "gotapi-3dp"
