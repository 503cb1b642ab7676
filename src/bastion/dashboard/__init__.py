"""Web pages served by the gateway at ``/``: the review queue with approve/reject buttons,
the blocked clients with their reasons and expiry (and an unblock button for admins),
recent decisions and the drift status. Self-contained (inline CSS and JS, no CDN); the page
calls the JSON API with a reviewer or admin key that the user pastes in (kept in
sessionStorage)."""

from bastion.dashboard.pages import router

__all__ = ["router"]
