"""Griffe extension: the Sphinx roles of qkv's docstrings become links of the API pages.

``:func:`~qkv.masks.causal``` becomes a link labelled ``causal``. A target is looked up as
written, then next to the object (its class, its module, the package); a name shared by a
module and the function it defines (``qkv.api.attention``) means the function. A target that
is not documented on the site stays plain code (autorefs' optional references never fail
the build).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import griffe

ROLE = re.compile(r":(?:py:)?(func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


def _find(collection, path: str):
    try:
        found = collection.get_member(path)
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    try:
        target = found.final_target if found.is_alias else found
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    name = path.rsplit(".", 1)[-1]
    if target.is_module and name in target.members:  # `qkv.api.attention`: the function
        return _find(collection, f"{target.path}.{name}")
    return target


def _identifier(obj: griffe.Object, target: str) -> str | None:
    scopes = [obj if (obj.is_class or obj.is_module) else obj.parent, obj.module, obj.package]
    candidates = [target] + [f"{scope.path}.{target}" for scope in scopes if scope is not None]
    for path in candidates:
        found = _find(obj.modules_collection, path)
        if found is not None:
            return found.path
    return None


def _link(match: re.Match, obj: griffe.Object) -> str:
    tilde, target = match.group(2), match.group(3).strip().rstrip("()").lstrip(".")
    label = html.escape(target.split(".")[-1] if tilde else target)
    identifier = _identifier(obj, target)
    if identifier is None:
        return f"<code>{label}</code>"
    return f'<autoref identifier="{html.escape(identifier)}" optional><code>{label}</code></autoref>'


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None and ":`" in obj.docstring.value:
                obj.docstring.value = ROLE.sub(lambda m, o=obj: _link(m, o), obj.docstring.value)
