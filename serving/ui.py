"""The HTML page `/ui/users/{user_id}`: recent clicks and recommendations as thumbnails."""

from __future__ import annotations

from functools import cache
from html import escape
from importlib import resources
from string import Template
from urllib.parse import quote

from serving.schemas import Recommendations
from serving.state import Catalogue, ItemInfo


@cache
def _template() -> Template:
    return Template(resources.files("serving").joinpath("templates/user.html").read_text("utf-8"))


def image_src(info: ItemInfo) -> str | None:
    """Where the browser gets the item's image: the app's image route, or the item's own URL."""
    if not info.image_uri:
        return None
    if "://" in info.image_uri:
        return info.image_uri if info.image_uri.startswith(("http://", "https://")) else None
    return f"/ui/images/{quote(info.item_id)}"


def card(info: ItemInfo | None, item_id: str, score: float | None = None) -> str:
    title = escape((info.title if info else None) or item_id)
    src = image_src(info) if info else None
    picture = (f'<img src="{escape(src)}" alt="{title}" loading="eager">' if src
               else '<div class="noimg">no image</div>')
    badge = '<span class="badge">generated</span>' if info and info.image_source == "generated" else ""
    line = f'<div class="score">score {score:.3f}</div>' if score is not None else ""
    return (f'<div class="card" data-item="{escape(item_id)}">{badge}{picture}'
            f'<div class="title" title="{title}">{title}</div>{line}</div>')


def user_page(user_id: str, catalogue: Catalogue | None, recs: Recommendations) -> str:
    items = catalogue.items if catalogue is not None else {}
    recent_ids = catalogue.recent.get(user_id, ()) if catalogue is not None else ()
    recent = "".join(card(items.get(i), i) for i in recent_ids) or '<div class="meta">none yet</div>'
    shown = "".join(card(items.get(r.item_id), r.item_id, r.score) for r in recs.items)
    flags = []
    if recs.fallback:
        flags.append(f'<span class="flag">fallback: {escape(recs.fallback)}</span>')
    if recs.degraded:
        flags.append('<span class="flag">degraded</span>')
    return _template().substitute(
        user_id=escape(user_id), ranker=escape(recs.ranker_version or "none"),
        retrieval=escape(recs.retrieval_version or "none"), request_id=escape(recs.request_id),
        flags=" ".join(flags), n_recent=len(recent_ids), recent=recent, n_recs=len(recs.items),
        recs=shown or '<div class="meta">nothing to recommend</div>')
