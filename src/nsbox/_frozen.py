"""Immutable value classes without `dataclasses` (pure).

`import dataclasses` pulls in `inspect` and builds every class by exec'ing
generated code: together ~10 ms of `python -m nsbox run`'s start-up, which is
part of the cost of every sandbox started from a shell. A Frozen subclass
lists its fields in __slots__, sets them in __init__ with `_set`, and gets
equality, hashing, repr, pickling and copying from here.
"""

from __future__ import annotations

__all__ = ["Frozen", "FrozenInstanceError"]


class FrozenInstanceError(AttributeError):
    """Assignment to a field of an immutable nsbox value."""


def _restore(cls, values):
    obj = cls.__new__(cls)
    for name, value in zip(cls.__slots__, values, strict=True):
        object.__setattr__(obj, name, value)
    return obj


class Frozen:
    # The hash, computed once: values are immutable, and a Spec or Plan is
    # hashed on every spawn (the plan cache, the packed-struct cache).
    __slots__ = ("_hash",)

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented

    def __hash__(self) -> int:
        try:
            return self._hash
        except AttributeError:
            h = hash((self.__class__.__name__, *self._values()))
            object.__setattr__(self, "_hash", h)
            return h

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{self.__class__.__name__}({fields})"

    def __reduce__(self):
        return (_restore, (self.__class__, self._values()))
