"""What every router of the server shares: one typed object on `app.state.services`.

`create_app` builds it once; a route reaches it through `Depends(services)` (or
`services(request)` where it already holds the request), never through a closure.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from whetstone.models.base import BaseModel as BaseSpec
from whetstone.models.hero import Hero
from whetstone.project import Project
from whetstone.serve.auth import KeyThrottle
from whetstone.serve.capture import CaptureQueue
from whetstone.serve.engine import Engine
from whetstone.serve.metrics import Metrics
from whetstone.serve.routes import Router
from whetstone.serve.settings import Settings

if TYPE_CHECKING:
    from whetstone.models.types import Tokenizer


@dataclass
class Services:
    project: Project
    settings: Settings
    base: BaseSpec
    tokenizer: Tokenizer  # the base model's
    engine: Engine
    capture: CaptureQueue
    router: Router
    metrics: Metrics
    # The project's hero (`hero:` in whetstone.yaml), for cascade and hero routes; None:
    # every request is answered by the workhorse, as without one.
    hero: Hero | None = None
    key_throttle: KeyThrottle = field(default_factory=KeyThrottle)
    # Signs the review page's CSRF tokens; new each start (an open page reloads after one).
    csrf_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    # Fast tokenizers are not safe to call from several threads at once.
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)


def services(request: Request) -> Services:
    """The app's shared services (a FastAPI dependency)."""
    found: Services = request.app.state.services
    return found


# A route's parameter `svc: Svc` receives the shared services.
Svc = Annotated[Services, Depends(services)]
