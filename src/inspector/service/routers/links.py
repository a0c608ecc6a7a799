"""The line links' health: which PLC servers listen and how many clients they have, whether the broker and the
webhooks take results. A link that is down never fails an inspection; it shows here, in /readyz and /metrics."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from inspector.link.hub import LinkHub
from inspector.service import auth
from inspector.service.routers import LinksDep
from inspector.service.schemas import LinkHealth

router = APIRouter(prefix="/v1/links", tags=["links"], dependencies=[auth.camera], responses={**auth.RESPONSES})


@router.get("", response_model=list[LinkHealth])
def list_links(links: LinksDep) -> list[LinkHealth]:
    return link_health(links)


def link_health(links: LinkHub) -> list[LinkHealth]:
    return [LinkHealth.model_validate(asdict(h)) for h in links.health()]
