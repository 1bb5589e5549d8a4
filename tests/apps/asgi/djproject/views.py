"""The project's views: a sync one, async ones, JSON, a POST and a streamed answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django", content_type="text/plain; charset=utf-8")


async def hello(request: HttpRequest, name: str) -> JsonResponse:
    await asyncio.sleep(0)
    return JsonResponse({"hello": name, "q": request.GET.get("q"), "path": request.path})


@csrf_exempt
@require_http_methods(["POST"])
def submit(request: HttpRequest) -> JsonResponse:
    data = json.loads(request.body or b"{}")
    return JsonResponse({"received": data, "content_type": request.content_type}, status=201)


async def countdown(request: HttpRequest) -> StreamingHttpResponse:
    async def lines() -> AsyncIterator[str]:
        for i in range(5, 0, -1):
            yield f"{i}\n"

    return StreamingHttpResponse(lines(), content_type="text/plain")
