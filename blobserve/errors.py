"""blobserve's exceptions: one root, each class mapped to one HTTP status.

Lower layers (requests, tarfile, the file system) are translated into these at the
boundary where they happen, so callers never see a library's own exception.
"""

from __future__ import annotations

from typing import Any


class BlobserveError(Exception):
    """Root of every error blobserve raises on purpose."""

    status = 500

    def __init__(
        self,
        message: str,
        *,
        reference: str | None = None,
        digest: str | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reference = reference
        self.digest = digest
        self.upstream_status = upstream_status

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        keywords = {
            "reference": self.reference,
            "digest": self.digest,
            "upstream_status": self.upstream_status,
        }
        return (_rebuild, (type(self), self.message, keywords))


def _rebuild(
    cls: type[BlobserveError], message: str, keywords: dict[str, Any]
) -> BlobserveError:
    """Recreate an error that crossed a process boundary, with all its fields."""
    return cls(message, **keywords)


class InvalidReference(BlobserveError):
    """An image reference or request path that cannot be parsed."""

    status = 400


class MissingTag(InvalidReference):
    """A reference with neither a tag nor a digest."""

    status = 404


class NotAllowed(BlobserveError):
    """A repository that this service is not configured to serve."""

    status = 403


class NotFound(BlobserveError):
    """An image, manifest, blob or file that does not exist."""

    status = 404


class Unauthorized(BlobserveError):
    """The registry refused the credentials blobserve has (or has not)."""

    status = 502


class UpstreamFailed(BlobserveError):
    """The registry answered with an error or could not be reached."""

    status = 502


class UpstreamTimeout(UpstreamFailed):
    """The registry did not answer within the configured timeouts."""

    status = 504


class InvalidContent(BlobserveError):
    """A manifest or layer that is malformed, unsupported or fails its digest."""

    status = 502


class LimitExceeded(InvalidContent):
    """An image over one of the configured size or entry caps."""

    status = 413


class PullPending(BlobserveError):
    """The image is still being pulled; the caller should retry later."""

    status = 503


class PullInterrupted(BlobserveError):
    """The pull stopped for a reason of ours (its process died); a retry may work."""

    status = 503
