"""One file per course model: a config dataclass, then the module."""
