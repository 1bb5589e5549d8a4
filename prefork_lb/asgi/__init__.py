"""The ASGI worker's engine on asyncio (uvloop when installed) and httptools, sharing prefork_lb.http."""
