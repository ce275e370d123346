"""Classes: what each of the implicit decoder's heads answers, by name and label value.

The paper's decoder has one head per class. A box names a region, not a
structure: where two structures share a box (a wall around a cavity, a tumour
in an organ), the class chosen with the box says which one is meant.

A model's classes travel with its adapter (the JSON's ``classes`` list) and
live on the model object as ``model.classes``. A one-class model (the shipped
default) can grow heads with :func:`expand_classes`: each new head starts as a
copy of the first, so every class begins at the base model's answer and
fine-tuning only has to learn what differs.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch comes in with expand_classes only: widgets read classes cheaply
    from torch import nn


@dataclass(frozen=True)
class ClassInfo:
    """One head: its name and the label value its masks are written with (and read from)."""

    name: str
    value: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value}


def default_classes(count: int) -> tuple[ClassInfo, ...]:
    """``object`` for one head; ``class 1`` .. ``class K`` (values 1..K) otherwise."""
    if count == 1:
        return (ClassInfo("object", 1),)
    return tuple(ClassInfo(f"class {k}", k) for k in range(1, count + 1))


def check_classes(classes: Sequence[ClassInfo], heads: int | None = None) -> tuple[ClassInfo, ...]:
    """``classes`` as a tuple; ValueError, saying what is wrong, for an empty or
    repeated name, a label value outside 1..65535 or repeated, or a count that is
    not ``heads``."""
    classes = tuple(classes)
    if not classes:
        raise ValueError("a model needs at least one class")
    names = [c.name.strip() for c in classes]
    values = [c.value for c in classes]
    if any(not n for n in names):
        raise ValueError("every class needs a name")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must differ, got {names}")
    if any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535 for v in values):
        raise ValueError(f"class label values must be whole numbers from 1 to 65535, got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"class label values must differ, got {values}")
    if heads is not None and len(classes) != heads:
        raise ValueError(f"{len(classes)} classes given for a model with {heads} head(s)")
    return tuple(ClassInfo(n, v) for n, v in zip(names, values))


def classes_from_json(entries: Any, heads: int) -> tuple[ClassInfo, ...]:
    """The ``classes`` list of an adapter's JSON (None: the default names)."""
    if entries is None:
        return default_classes(heads)
    try:
        classes = [ClassInfo(str(e["name"]), e["value"]) for e in entries]
    except (TypeError, KeyError) as exc:
        raise ValueError(f"the classes list is malformed ({exc!r}): expected "
                         "[{\"name\": ..., \"value\": ...}, ...]") from exc
    return check_classes(classes, heads)


def parse_class_names(text: str, heads: int | None = None) -> tuple[ClassInfo, ...]:
    """``"disc,ring"`` (values 1, 2, ...) or ``"disc=1,ring=3"`` -> classes."""
    classes = []
    for k, part in enumerate(p.strip() for p in text.split(",")):
        name, _, value = part.partition("=")
        try:
            number = int(value) if value.strip() else k + 1
        except ValueError:
            raise ValueError(f"{part!r}: a class is NAME or NAME=VALUE (a whole number)") from None
        classes.append(ClassInfo(name.strip(), number))
    return check_classes(classes, heads)


def classes_of(model: nn.Module) -> tuple[ClassInfo, ...]:
    """The model's classes (the defaults when none were given)."""
    heads = model.config.num_classes
    classes = getattr(model, "classes", None)
    return tuple(classes) if classes and len(classes) == heads else default_classes(heads)


def find_class(model: nn.Module, name_or_value: str | int) -> int:
    """Head index of a class named (or valued) ``name_or_value``; ValueError naming the
    classes there are."""
    classes = classes_of(model)
    for k, info in enumerate(classes):
        if str(name_or_value) in (info.name, str(info.value)):
            return k
    known = ", ".join(f"{c.name} (={c.value})" for c in classes)
    raise ValueError(f"the model has no class {name_or_value!r}; its classes: {known}")


def expand_classes(model: nn.Module, classes: Sequence[ClassInfo]) -> nn.Module:
    """Give a one-head ``model`` one head per class, in place (each a copy of the first),
    and name them; a model that already has ``len(classes)`` heads is only renamed."""
    from torch import nn

    heads = model.config.num_classes
    classes = check_classes(classes)
    count = len(classes)
    if count != heads:
        if heads != 1:
            raise ValueError(f"only a one-class model can be given new classes; this one has "
                             f"{heads}: train from the one-class model instead")
        decoder = model.implicit_decoder
        old = decoder.coarse.heads
        new = nn.Linear(old.in_features, count * old.out_features, device=old.weight.device,
                        dtype=old.weight.dtype)
        new.weight.data.copy_(old.weight.data.repeat(count, 1))
        new.bias.data.copy_(old.bias.data.repeat(count))
        decoder.coarse.heads, decoder.coarse.classes = new, count
        decoder.fine.heads = nn.ModuleList(copy.deepcopy(decoder.fine.heads[0])
                                           for _ in range(count))
        model.config = dataclasses.replace(model.config, num_classes=count)
    model.classes = classes
    return model
