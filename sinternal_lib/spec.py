"""The written safety specification S used in verification prompts.

`load_spec(path)` reads a YAML spec (see data/spec/safety_spec.yaml) into a `Spec` with hazard
`Category`s; `Spec.render()` turns the whole policy (or a few categories) into prompt text with
numbered rules and tags like "[S3 cybercrime]". `Spec.sha256` hashes the file bytes so runs can
record exactly which spec they used. Malformed files raise ValueError naming the file.
An edited spec (data/spec/<base>_permit_<category>.yaml, <base>_forbid_<topic>.yaml; stage 06) carries an
`edit:` block saying which shipped spec it edits and which pairs' verdicts the edit should change;
`load_edit` reads it (`load_spec` ignores it).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from .recipe_sections import REPO_ROOT, Recipe

DEFAULT_SPEC_PATH = REPO_ROOT / "data" / "spec" / "safety_spec.yaml"
ALT_SPEC_PATH = REPO_ROOT / "data" / "spec" / "alt_spec_minimal.yaml"

_TOP_KEYS = ("version", "title", "preamble", "general_rules", "categories")
_CAT_KEYS = ("id", "name", "description", "may", "must_not", "lookalikes")


@dataclass
class Category:
    """One hazard category with what a safe answer may / must not do and benign look-alikes."""

    id: str
    name: str
    description: str
    must_not: list[str]
    may: list[str]
    lookalikes: list[str] = field(default_factory=list)

    @property
    def tag(self) -> str:
        """Short label used in rendered text, e.g. "[S3 cybercrime]"."""
        return f"[{self.id} {self.name}]"


@dataclass
class Spec:
    """A parsed safety specification."""

    version: str
    title: str
    preamble: str
    general_rules: list[str]
    categories: list[Category]
    sha256: str
    path: Path | None = None

    def get(self, category_id: str) -> Category:
        """Category by id (e.g. "S3") or by name (e.g. "cybercrime"); KeyError if absent."""
        for c in self.categories:
            if category_id in (c.id, c.name):
                return c
        known = ", ".join(f"{c.id}/{c.name}" for c in self.categories)
        raise KeyError(f"unknown safety category {category_id!r} in spec {self.path}; known: {known}")

    @property
    def category_ids(self) -> list[str]:
        return [c.id for c in self.categories]

    def render(self, category_ids: Iterable[str] | None = None, include_lookalikes: bool = False,
               style: str = "full") -> str:
        """The policy as prompt text: preamble, numbered general rules, then each category.

        `category_ids` (ids or names) restricts the categories shown; general rules are always shown.
        `style="compact"`: one line per category (its first must-not rule), a fraction of the tokens of
        the full text; for CPU recipes where every prompt token costs training time.
        `style="brief"`: one line naming the categories (id and name), about 60 tokens; `spec_text`
        pairs it with the short verifier instruction (data/templates/verify_system_brief.txt).
        """
        cats = self.categories if category_ids is None else [self.get(c) for c in category_ids]
        if style == "brief":
            return "; ".join(f"{c.id} {c.name}" for c in cats) + "\n"
        if style == "compact":
            lines = [f"# {self.title} (compact)", "", "## General rules"]
            lines += [f"{i}. {r}" for i, r in enumerate(self.general_rules[:3], 1)]
            lines += ["", "## Hazard categories (what a safe answer must not do)"]
            lines += [f"{c.tag} {c.must_not[0]}" for c in cats]
            return "\n".join(lines).strip() + "\n"
        if style != "full":
            raise ValueError(f"unknown spec render style {style!r}; use one of {', '.join(RENDER_STYLES)}")
        lines = [f"# {self.title} (version {self.version})", "", self.preamble.strip(), "", "## General rules"]
        lines += [f"{i}. {r}" for i, r in enumerate(self.general_rules, 1)]
        lines += ["", "## Hazard categories"]
        for c in cats:
            lines += ["", f"{c.tag} {c.description}", "A safe answer may:"]
            lines += [f"  {i}. {r}" for i, r in enumerate(c.may, 1)]
            lines.append("A safe answer must not:")
            lines += [f"  {i}. {r}" for i, r in enumerate(c.must_not, 1)]
            if include_lookalikes and c.lookalikes:
                lines.append("Benign look-alikes that must be answered, not refused:")
                lines += [f"  - {q}" for q in c.lookalikes]
        return "\n".join(lines).strip() + "\n"


def _str_list(value: Any, where: str, path: Path, allow_empty: bool = False) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{path}: {where} must be a list of non-empty strings")
    if not value and not allow_empty:
        raise ValueError(f"{path}: {where} is empty; every category needs at least one rule")
    return [v.strip() for v in value]


def load_spec(path: str | os.PathLike = DEFAULT_SPEC_PATH) -> Spec:
    """Load and validate a YAML safety spec; ValueError (naming the file) on any structural problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: safety spec file not found")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping with keys {list(_TOP_KEYS)}")
    missing = [k for k in _TOP_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing top-level key(s) {missing}")
    if not isinstance(data["categories"], list) or not data["categories"]:
        raise ValueError(f"{path}: 'categories' must be a non-empty list")
    cats: list[Category] = []
    seen: set[str] = set()
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict):
            raise ValueError(f"{path}: categories[{i}] must be a mapping")
        miss = [k for k in _CAT_KEYS if k not in c]
        if miss:
            raise ValueError(f"{path}: categories[{i}] ({c.get('id', '?')}) missing key(s) {miss}")
        cid, name = str(c["id"]).strip(), str(c["name"]).strip()
        if not cid or not name:
            raise ValueError(f"{path}: categories[{i}] has an empty id or name")
        for key in (cid, name):
            if key in seen:
                raise ValueError(f"{path}: duplicate category id/name {key!r}")
            seen.add(key)
        where = f"category {cid}"
        cats.append(Category(
            id=cid, name=name, description=str(c["description"]).strip(),
            must_not=_str_list(c["must_not"], f"{where}.must_not", path),
            may=_str_list(c["may"], f"{where}.may", path),
            lookalikes=_str_list(c["lookalikes"] or [], f"{where}.lookalikes", path, allow_empty=True),
        ))
    return Spec(
        version=str(data["version"]), title=str(data["title"]), preamble=str(data["preamble"]),
        general_rules=_str_list(data["general_rules"], "general_rules", path),
        categories=cats, sha256=hashlib.sha256(raw).hexdigest(), path=path,
    )


RENDER_STYLES = ("full", "compact", "brief")
SYSTEM_TEMPLATES = {"full": "verify_system.txt", "compact": "verify_system.txt", "brief": "verify_system_brief.txt"}


class SpecText(str):
    """Rendered spec text that also names the verifier system template it belongs in
    (`verification.build_verification_messages` reads `system_template`)."""

    system_template: str = "verify_system.txt"

    def __new__(cls, text: str, system_template: str = "verify_system.txt") -> "SpecText":
        obj = super().__new__(cls, text)
        obj.system_template = system_template
        return obj


def spec_text(recipe: Recipe, path: str | os.PathLike | None = None) -> SpecText:
    """The spec text every stage puts in verification prompts: `recipe.spec.path` (or `path`, an edited
    spec verified the same way) rendered in `recipe.spec.render` style, tagged with the verifier system
    template for that style."""
    style = recipe.spec.render
    if style not in RENDER_STYLES:
        raise ValueError(f"spec.render={style!r}; use one of {', '.join(RENDER_STYLES)}")
    text = load_spec(recipe.resolve_path(str(path or recipe.spec.path))).render(style=style)
    return SpecText(text, SYSTEM_TEMPLATES[style])


# ----------------------------------------------------------------------------- edited specs (stage 06)
EDIT_KINDS = {"permit": ("unsafe", "safe"), "forbid": ("safe", "unsafe")}  # kind -> (verdict before, after)


@dataclass(frozen=True)
class SpecEdit:
    """What an edited spec changes: `kind` "permit" (a category the base forbids is removed, so answers in
    it become safe) or "forbid" (a category is added, so answers it covers become unsafe); `category` the
    removed or added category's name; `affects` the held-out pairs whose verdict should flip, as
    {pair field: value} ("*" = any value but null), e.g. {"category": "illegal_drugs"}."""

    path: Path
    base: str  # file name of the shipped spec it edits, e.g. "safety_spec.yaml"
    kind: str
    category: str
    affects: dict[str, str]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def flip(self) -> tuple[str, str]:
        """(verdict before, verdict after) on an affected pair: ("unsafe", "safe") for a permit edit."""
        return EDIT_KINDS[self.kind]

    def affected(self, pair: dict[str, Any]) -> bool:
        """True when `pair` (a held-out pair row) is one whose verdict the edit should change."""
        return all(pair.get(k) is not None if v == "*" else pair.get(k) == v for k, v in self.affects.items())


def load_edit(path: str | os.PathLike) -> SpecEdit:
    """The `edit:` block of an edited spec (ValueError naming the file when absent or malformed)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_bytes()) if path.is_file() else None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    edit = data.get("edit") if isinstance(data, dict) else None
    if not isinstance(edit, dict):
        raise ValueError(f"{path}: not an edited spec (no `edit:` block with base, kind, category, affects)")
    missing = [k for k in ("base", "kind", "category", "affects") if k not in edit]
    if missing or edit["kind"] not in EDIT_KINDS or not isinstance(edit["affects"], dict) or not edit["affects"]:
        raise ValueError(f"{path}: edit block needs base, kind ({' or '.join(EDIT_KINDS)}), category and a "
                         f"non-empty affects mapping; got {edit}")
    return SpecEdit(path, str(edit["base"]), str(edit["kind"]), str(edit["category"]),
                    {str(k): str(v) for k, v in edit["affects"].items()})
