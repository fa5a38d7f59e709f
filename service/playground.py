"""The playground: a page per served task and model at `/` (also `/ui` and `/docs`), written here in
plain HTML, CSS and JavaScript (service/playground/, no build step, nothing from another origin).

It is an ASGI middleware because BentoML's own routes (its generic index page at `/`, which loads
Google Tag Manager and external badges) are matched before the mounted Starlette app's. It answers
GET and HEAD of the page and its files and hands every other request on unchanged. It sits in front
of the token check (service.py adds it first): the page and its files are public and hold no data;
the page sends the token the user types (Authorization: Bearer) with every API call it makes.
"""

from __future__ import annotations

from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

FILES = Path(__file__).parent / "playground"
PAGE = "index.html"
PAGE_PATHS = ("/", "/ui", "/ui/", "/docs")  # /docs: the page's API view, rendered from /docs.json
ASSET_PREFIX = "/ui/"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
# Only this origin: scripts from files (no inline script, no eval), styles from files, pictures are
# drawn on canvases from the answers' arrays or fetched from this server (with the token) and shown
# from blob: URLs the page makes of them, requests go to this server alone.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-cache"),
]


def load_files(folder: Path = FILES) -> dict[str, tuple[bytes, str]]:
    """Every file of the page by URL path: name -> (content, content type). Read once, when the
    worker builds its app; only these paths are answered, so no request names a file elsewhere."""
    files = {p.name: (p.read_bytes(), TYPES[p.suffix]) for p in sorted(folder.iterdir()) if p.suffix in TYPES}
    page = files[PAGE]
    return {**{path: page for path in PAGE_PATHS}, **{ASSET_PREFIX + name: f for name, f in files.items()}}


class Playground:
    """ASGI middleware serving the playground's page and files; everything else goes to `app`."""

    def __init__(self, app: ASGIApp, folder: Path = FILES) -> None:
        self.app = app
        self.files = load_files(folder)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.files.get(scope.get("path", "")) if scope["type"] == "http" else None
        if found is None or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        body, media_type = found
        headers = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode()), *HEADERS]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
