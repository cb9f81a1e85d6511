"""Fixed class and part tables of the real data sets (``docs/formats.md`` §1 and §4)."""

from __future__ import annotations

from dataclasses import dataclass

#: The 40 ModelNet40 classes in their standard label order (alphabetical = sorted folder names).
MODELNET40_CLASSES: tuple[str, ...] = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone",
    "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp",
    "laptop", "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink",
    "sofa", "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
)

#: The ModelNet10 subset, in its own label order (alphabetical).
MODELNET10_CLASSES: tuple[str, ...] = (
    "bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet",
)


def modelnet_classes(name: str) -> tuple[str, ...]:
    """Class table of ModelNet ``name`` (``"40"`` or ``"10"``)."""
    if name == "40":
        return MODELNET40_CLASSES
    if name == "10":
        return MODELNET10_CLASSES
    raise ValueError(f"unknown ModelNet name {name!r}: expected '40' or '10'")


@dataclass(frozen=True)
class Category:
    """One segmentation category: its name, synset folder and the global part ids it owns."""

    name: str
    synset: str
    parts: tuple[int, ...]


@dataclass(frozen=True)
class PartTable:
    """Categories (in label order) and the global part ids of each; parts are numbered 0..num_parts-1."""

    categories: tuple[Category, ...]

    @property
    def num_parts(self) -> int:
        return 1 + max(p for c in self.categories for p in c.parts)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    def by_synset(self) -> dict[str, int]:
        """Synset folder name → category index."""
        return {c.synset: i for i, c in enumerate(self.categories)}

    def to_json(self) -> list[dict]:
        return [{"name": c.name, "synset": c.synset, "parts": list(c.parts)} for c in self.categories]

    @classmethod
    def from_json(cls, rows: list[dict]) -> PartTable:
        return cls(tuple(Category(r["name"], r["synset"], tuple(int(p) for p in r["parts"])) for r in rows))


def _ranges(rows: list[tuple[str, str, int, int]]) -> PartTable:
    return PartTable(tuple(Category(n, s, tuple(range(a, b + 1))) for n, s, a, b in rows))


#: ShapeNetPart: 16 categories, 50 global part ids. Category index = position (= synsetoffset2category order).
SHAPENETPART_TABLE: PartTable = _ranges([
    ("Airplane", "02691156", 0, 3), ("Bag", "02773838", 4, 5), ("Cap", "02954340", 6, 7),
    ("Car", "02958343", 8, 11), ("Chair", "03001627", 12, 15), ("Earphone", "03261776", 16, 18),
    ("Guitar", "03467517", 19, 21), ("Knife", "03624134", 22, 23), ("Lamp", "03636649", 24, 27),
    ("Laptop", "03642806", 28, 29), ("Motorbike", "03790512", 30, 35), ("Mug", "03797390", 36, 37),
    ("Pistol", "03948459", 38, 40), ("Rocket", "04099429", 41, 43), ("Skateboard", "04225987", 44, 46),
    ("Table", "04379243", 47, 49),
])
