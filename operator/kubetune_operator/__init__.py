"""kubetune's operator: kopf handlers over pure builders (spec in, manifests out).

It depends on `kubetune.api` only (never torch, transformers or runtime internals), so its image stays slim.
The handlers and builders arrive with the operator issue; the API they serve is already fixed.
"""

from kubetune.api import API_VERSION, GROUP, VERSION

__all__ = ["API_VERSION", "GROUP", "VERSION"]
